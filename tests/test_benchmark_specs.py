"""Benchmarks by name: `--data tofu:…|muse:…|rwku|wmdp[@PATH]` through `unlearn`, `eval` and `bench`.

Each benchmark has a small local fixture in its own schema (tests/fixtures/tofu, muse, rwku, wmdp);
nothing is downloaded. A malformed copy (a missing file, a missing column) stops with one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from obliviate.errors import ConfigError
from obliviate.workflow.data import DataSpec, parse_data_spec, train_sets
from tests.conftest import make_tiny_llama
from tests.helpers import assert_one_line_error, run_cli

FIXTURES = Path(__file__).parent / "fixtures"
SPECS = {
    "tofu": f"tofu:forget01@{FIXTURES / 'tofu'}",
    "muse": f"muse:news@{FIXTURES / 'muse'}",
    "rwku": f"rwku@{FIXTURES / 'rwku' / 'Target'}",
    "wmdp": f"wmdp@{FIXTURES / 'wmdp'}",
}
FAST = ["--set", "max_steps=1", "--set", "max_length=48", "--set", "batch_size=2"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any attempt to reach the hub fails at once instead of going to the network."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer

    return save_model(make_tiny_llama(), build_tiny_tokenizer(), tmp_path_factory.mktemp("bench") / "model")


def test_every_benchmark_spec_parses_and_bad_ones_are_one_line():
    assert parse_data_spec("muse:books") == DataSpec("muse", "books", None)
    assert parse_data_spec("rwku@/x") == DataSpec("rwku", "", "/x") and str(parse_data_spec("rwku@/x")) == "rwku@/x"
    assert parse_data_spec("wmdp").suite == "lm_eval" and parse_data_spec("muse:news").suite == "text"
    assert parse_data_spec("rwku").suite == parse_data_spec("tofu:forget05").suite == "qa"
    for bad, fragment in (("muse:poems", "unknown MUSE corpus"), ("rwku:x", "takes no split name"),
                          ("squad:x", "rwku[@PATH]"), ("wmdp@", "wmdp[@PATH]")):
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
            parse_data_spec(bad)


def test_the_fixtures_load_in_their_benchmarks_schema():
    from obliviate.data.adapters.rwku import load_rwku
    from obliviate.data.schema import TextPassage

    rwku = load_rwku(FIXTURES / "rwku" / "Target")
    assert rwku.targets == ["Maren Solvik", "Orrin Vale"]
    assert {it.meta["level"] for it in rwku.forget} == {"1", "2", "3"} and len(rwku.neighbours) == 4
    assert load_rwku(FIXTURES / "rwku" / "Target" / "2_Orrin_Vale").targets == ["Orrin Vale"]
    for name in ("muse", "rwku", "wmdp"):
        forget, _ = train_sets(parse_data_spec(SPECS[name]))
        assert forget and all(isinstance(it, TextPassage) for it in forget), name
    assert train_sets(parse_data_spec(SPECS["wmdp"]))[1]  # the cyber retain corpus


def test_unlearn_wmdp_without_a_local_copy_says_which_corpora_it_needs(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["unlearn", "--method", "rmu", "--model", "none", "--data", "wmdp",
                            "--out", str(tmp_path / "r")], monkeypatch, capsys)
    assert_one_line_error(code, err, "wmdp@DIR", "bio-forget-corpus.jsonl", "cyber-forget-corpus.jsonl")


@pytest.mark.parametrize("name", ["tofu", "muse", "rwku", "wmdp"])
def test_unlearn_and_eval_load_each_benchmark_fixture(name, model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["unlearn", "--method", "ga", "--model", str(model_dir), "--data", SPECS[name],
                              "--out", str(run), *FAST], monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(parse_data_spec(SPECS[name])) and config["unlearn"]["steps"] == 1
    code, out, err = run_cli(["eval", str(run), "--json", "--max-new-tokens", "4"], monkeypatch, capsys)  # its spec
    assert code == 0, err
    payload = json.loads(out)
    if name == "wmdp":
        assert set(payload) == {"obliviate_wmdp_bio", "obliviate_wmdp_cyber", "obliviate_mmlu_college_biology"}
        assert 0.0 <= payload["obliviate_wmdp_bio"]["acc"] <= 1.0 and payload["obliviate_wmdp_bio"]["samples"] == 3
    elif name == "muse":
        assert payload["suite"] == "text" and (run / "text_results.json").is_file()
        assert "knowmem_forget/rouge" in payload["aggregates"] or payload["aggregates"]
    else:
        assert payload["suite"] == "qa" and payload["data"] == config["data"]
    if name == "rwku":
        assert set(payload["rwku"]) == {f"forget_level{i}_rouge_l_r" for i in (1, 2, 3)} | {
            f"neighbor_level{i}_rouge_l_r" for i in (1, 2)}


def test_eval_data_on_a_model_directory(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["eval", str(model_dir), "--data", SPECS["rwku"], "--out", str(tmp_path / "e"),
                              "--max-new-tokens", "4"], monkeypatch, capsys)
    assert code == 0, err
    assert "RWKU's table" in out and "forget_level3_rouge_l_r" in out


@pytest.mark.parametrize("name", ["tofu", "muse", "rwku", "wmdp"])
def test_bench_data_loads_each_benchmark_fixture(name, model_dir, tmp_path, monkeypatch, capsys):
    generate = [] if name == "muse" else ["--no-generate"]  # MUSE's text suite scores generations
    code, out, err = run_cli(["bench", "--methods", "ga", "--model", str(model_dir), "--data", SPECS[name],
                              "--seeds", "1", "--out", str(tmp_path / "b"), *generate, "--no-report",
                              "--set", "max_steps=1", "--set", "max_length=48", "--json"], monkeypatch, capsys)
    assert code == 0, (out, err)
    summary = json.loads(out)
    assert summary["failed"] == {} and summary["cells"] == 2
    board = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    assert {row["model"] for row in board["rows"]} >= {"target", "ga"}
    expected = {"tofu": "forget_probability", "rwku": "forget_probability", "muse": "verbmem_forget",
                "wmdp": "wmdp_bio"}
    assert expected[name] in board["columns"], board["columns"]


def _broken(tmp_path: Path, name: str, kind: str) -> str:
    """A copy of the fixture of `name` with one file deleted (`kind` "file") or one column dropped ("column")."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    target = {"tofu": root / "forget01.json", "muse": root / "raw" / "forget.txt",
              "rwku": root / "Target" / "2_Orrin_Vale" / "forget_level2.json",
              "wmdp": root / "wmdp-cyber.jsonl"}[name]
    if kind == "file":  # a file every command needs (unlearning and evaluation read different files)
        target.unlink()
        also = {"tofu": root / "forget01_perturbed.json", "muse": root / "verbmem" / "forget.json",
                "wmdp": root / "cyber-forget-corpus.jsonl"}
        if name in also:
            also[name].unlink()
    else:
        if name == "wmdp":  # the corpus too: unlearning reads the corpora, evaluation the questions
            corpus = root / "cyber-forget-corpus.jsonl"
            rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
            rows[1].pop("text")
            corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        column = {"tofu": "answer", "muse": "gt", "rwku": "query", "wmdp": "choices"}[name]
        if name == "muse":
            target = root / "verbmem" / "forget.json"
            rows = json.loads(target.read_text())
            rows[1].pop(column)
            target.write_text(json.dumps(rows))
        elif name == "rwku":
            rows = json.loads(target.read_text())
            rows[0].pop(column)
            target.write_text(json.dumps(rows))
        else:
            lines = [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
            if name == "tofu":
                target = root / "forget01_perturbed.json"
                lines = [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
            lines[0].pop(column)
            target.write_text("".join(json.dumps(r) + "\n" for r in lines))
    spec = SPECS[name].replace(str(FIXTURES / name), str(root))
    return spec


@pytest.mark.parametrize("kind", ["file", "column"])
@pytest.mark.parametrize("name", ["tofu", "muse", "rwku", "wmdp"])
def test_a_malformed_fixture_is_a_one_line_error(name, kind, model_dir, tmp_path, monkeypatch, capsys):
    spec = _broken(tmp_path, name, kind)
    commands = {
        "unlearn": ["unlearn", "--method", "ga", "--model", str(model_dir), "--data", spec, "--out",
                    str(tmp_path / "run")],
        "eval": ["eval", str(model_dir), "--data", spec, "--out", str(tmp_path / "eval")],
        "bench": ["bench", "--methods", "ga", "--model", str(model_dir), "--data", spec, "--seeds", "1",
                  "--out", str(tmp_path / "bench")],
    }
    if name == "muse" and kind == "column":
        del commands["unlearn"]  # the verbmem set is the text suite's; unlearning reads the corpus only
    for command, args in commands.items():
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert_one_line_error(code, err, str(tmp_path / name))
        assert ("missing" in err or "no " in err), (command, err)


def test_the_python_api_evaluates_a_benchmark_with_its_own_suite(model_dir, tmp_path):
    import obliviate as ob

    text = ob.evaluate(model_dir, data=SPECS["muse"], out=tmp_path / "muse", generate=False)
    assert text.payload["suite"] == "text" and len(text.items) > 0
    wmdp = ob.evaluate(model_dir, data=SPECS["wmdp"], out=tmp_path / "wmdp")
    assert 0.0 <= wmdp["obliviate_wmdp_cyber/acc"] <= 1.0


def test_suite_text_takes_the_muse_spec_too(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["eval", str(model_dir), "--suite", "text", "--data", SPECS["muse"], "--no-generate",
                              "--out", str(tmp_path / "e"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["data"] == str((FIXTURES / "muse").resolve())
    code, _, err = run_cli(["eval", str(model_dir), "--suite", "text", "--data", SPECS["rwku"], "--out",
                            str(tmp_path / "e")], monkeypatch, capsys)
    assert_one_line_error(code, err, "not scored by the text suite")


def test_a_run_unlearned_from_a_text_corpus_can_be_attacked(model_dir, tmp_path):
    import obliviate as ob

    ob.unlearn("ga", model_dir, data=SPECS["rwku"], out=tmp_path / "run", overrides={"max_steps": 1}, progress=False)
    report = ob.attack(tmp_path / "run", ["relearn"], overrides={"relearn.steps": 1}, progress=False)
    assert report.written is not None and report.written.is_file() and "relearn" in report.reports  # on the probes
