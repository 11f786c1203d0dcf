"""Bad input gets one line on stderr naming file, line and field, exit code 2, and no traceback."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_one_line_error, run_cli


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def good_rows():
    return [{"question": "Where was Ann born?", "answer": "Oslo"}, {"question": "Who is Bo?", "answer": "A cook"}]


def test_missing_field(tmp_path, monkeypatch, capsys, good_rows):
    bad = _write_jsonl(tmp_path / "forget.jsonl", [good_rows[0], {"question": "Who?"}])
    code, _, err = run_cli(["unlearn", "--method", "ga", "--model", "none", "--forget", str(bad),
                            "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{bad}:2: field 'answer' missing")


def test_non_utf8_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "forget.jsonl"
    bad.write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\xff\xfe", "answer": "b"}\n')
    code, _, err = run_cli(["unlearn", "--method", "ga", "--model", "none", "--forget", str(bad),
                            "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{bad}:2: not valid UTF-8")


def test_empty_forget_set(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "forget.jsonl"
    empty.write_text("", encoding="utf-8")
    code, _, err = run_cli(["unlearn", "--method", "ga", "--model", "none", "--forget", str(empty),
                            "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert_one_line_error(code, err, str(empty))


def test_overlap_warns_then_strict_fails(tmp_path, monkeypatch, capsys, good_rows):
    forget = _write_jsonl(tmp_path / "forget.jsonl", good_rows[:1])
    retain = _write_jsonl(tmp_path / "retain.jsonl", [good_rows[1], good_rows[0]])
    base = ["unlearn", "--method", "graddiff", "--model", str(tmp_path / "no-model"), "--forget", str(forget),
            "--retain", str(retain), "--out", str(tmp_path / "run")]
    code, out, err = run_cli(base, monkeypatch, capsys)
    assert "warning" in out and f"{retain}:2" in out  # warned, then went on (and failed on the model)
    assert code == 2 and "no-model" in err
    code, _, err = run_cli([*base, "--strict"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{retain}:2", "overlaps")


def test_unknown_method_key_and_type(tmp_path, monkeypatch, capsys, good_rows):
    forget = _write_jsonl(tmp_path / "forget.jsonl", good_rows)
    base = ["unlearn", "--model", "none", "--forget", str(forget), "--out", str(tmp_path / "run")]
    code, _, err = run_cli([*base, "--method", "gradient-ascent"], monkeypatch, capsys)
    assert_one_line_error(code, err, "unknown method")
    code, _, err = run_cli([*base, "--method", "graddiff", "--set", "alhpa=2"], monkeypatch, capsys)
    assert_one_line_error(code, err, "unknown key 'alhpa'", "did you mean 'alpha'")
    code, _, err = run_cli([*base, "--method", "ga", "--set", "epochs=many"], monkeypatch, capsys)
    assert_one_line_error(code, err, "field 'epochs'")


def test_bad_tofu_log(tmp_path, monkeypatch, capsys):
    log = tmp_path / "log.json"
    log.write_text("{not json", encoding="utf-8")
    code, _, err = run_cli(["compat", "tofu-legacy", str(log), str(log)], monkeypatch, capsys)
    assert_one_line_error(code, err, str(log))


def test_missing_model_path(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["eval", str(tmp_path / "nothing"), "--forget", "x", "--retain", "y", "--out",
                            str(tmp_path / "o")], monkeypatch, capsys)
    assert_one_line_error(code, err, "nothing")


def test_ref_flag_sets_the_reference_model_or_explains(tmp_path, monkeypatch, capsys, good_rows):
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    save_model(make_tiny_llama(), build_tiny_tokenizer(), tmp_path / "base")
    capsys.readouterr()  # the save's progress bar
    forget = _write_jsonl(tmp_path / "forget.jsonl", good_rows[:1])
    retain = _write_jsonl(tmp_path / "retain.jsonl", good_rows[1:])
    base = ["unlearn", "--model", str(tmp_path / "base"), "--forget", str(forget), "--retain", str(retain),
            "--out", str(tmp_path / "run"), "--set", "max_steps=1"]
    code, _, err = run_cli([*base, "--method", "ga", "--ref", "copy"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--ref", "'ga' uses no reference model")
    code, _, err = run_cli([*base, "--method", "npo", "--ref", "cpy"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--ref cpy", "precompute")
    code, _, err = run_cli([*base, "--method", "npo", "--ref", "precompute", "--json"], monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert config["method_config"]["ref"] == "precompute", config.keys()
