"""Bad input that is not a single refusal: a warning then --strict, and --ref. The table of one-line refusals
is tests/test_hostile_inputs.py."""

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
