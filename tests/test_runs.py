"""Runs that can be re-run: `obliviate rerun RUN` and `unlearn --config RUN/config.json` repeat a run;
config.json records the versions (and the git commit from a checkout); files follow the umask while
staying atomic; an adapter records its base model by hub name when it came from the hub."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from obliviate.config import read_config_file
from obliviate.errors import ConfigError
from obliviate.io import atomic_open, current_umask, write_json
from obliviate.models.loading import hub_name, load_model, save_model
from obliviate.runs import versions
from tests.helpers import assert_same_parameters, run_cli


@pytest.fixture
def model_dir(tmp_path, tiny_llama, tiny_tokenizer):
    return save_model(tiny_llama, tiny_tokenizer, tmp_path / "base")


@pytest.fixture
def qa_files(tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Where was the author born?", "answer": "She was born in Oslo, Norway."},
        {"question": "What genre does the author write?", "answer": "He writes science fiction and poetry."},
    ]))
    retain = tmp_path / "retain.jsonl"
    retain.write_text(json.dumps({"question": "What is the capital of France?",
                                  "answer": "The capital of France is Paris."}) + "\n")
    return str(forget), str(retain)


def _unlearn(model_dir, qa_files, out, monkeypatch, capsys, *extra: str) -> None:
    code, _, err = run_cli(["unlearn", "--method", "graddiff", "--model", str(model_dir), "--forget", qa_files[0],
                            "--retain", qa_files[1], "--out", str(out), "--set", "lr=1e-2", "--set", "max_steps=2",
                            "--set", "seed=3", *extra, "--json"], monkeypatch, capsys)
    assert code == 0, err


def test_rerun_repeats_a_run(model_dir, qa_files, tmp_path, monkeypatch, capsys):
    first = tmp_path / "first"
    _unlearn(model_dir, qa_files, first, monkeypatch, capsys)
    config = json.loads((first / "config.json").read_text())
    assert config["method_config"]["seed"] == 3 and config["split"] == "forget10"
    assert config["versions"]["packages"]["torch"] == torch.__version__

    code, out, err = run_cli(["rerun", str(first), "--out", str(tmp_path / "again"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["method_config"] == config["method_config"] and again["data_hashes"] == config["data_hashes"]
    assert_same_parameters(load_model(first / "model")[0], load_model(tmp_path / "again" / "model")[0])

    # the same through `unlearn --config RUN/config.json`, which reads the run's method settings
    _unlearn(model_dir, qa_files, tmp_path / "third", monkeypatch, capsys, "--config", str(first / "config.json"))
    assert json.loads((tmp_path / "third" / "config.json").read_text())["method_config"] == config["method_config"]


def test_a_run_config_of_another_method_is_refused(tmp_path):
    write_json(tmp_path / "config.json", {"command": ["obliviate"], "method": "npo", "method_config": {"lr": 1.0}})
    assert read_config_file(tmp_path / "config.json") == {"lr": 1.0}
    with pytest.raises(ConfigError, match="made with method 'npo'"):
        read_config_file(tmp_path / "config.json", "graddiff")


def test_rerun_of_a_directory_that_is_no_run(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["rerun", str(tmp_path), "--out", str(tmp_path / "x")], monkeypatch, capsys)
    assert code == 2 and "no config.json" in err


def test_versions_name_the_packages_and_the_checkout():
    info = versions()
    assert info["packages"]["transformers"] and info["packages"]["peft"]
    git = info["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_atomic_writes_follow_the_umask(tmp_path, tiny_llama, tiny_tokenizer):
    previous = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_open(tmp_path / "b.txt") as handle:
            handle.write("b")
        saved = save_model(tiny_llama, tiny_tokenizer, tmp_path / "model")
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"x": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(saved.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))  # still written through a temporary file


def test_hub_models_are_recorded_by_hub_name(tmp_path):
    snapshot = "/home/u/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/607a30d7"
    assert hub_name("gpt2", snapshot) == "openai-community/gpt2"
    assert hub_name("EleutherAI/pythia-70m", "/somewhere/else") == "EleutherAI/pythia-70m"
    local = tmp_path / "my-model"
    local.mkdir()
    assert hub_name(str(local), str(local.resolve())) == str(local.resolve())
    assert hub_name("world:tiny", "/cache/worlds/tiny/target") == "/cache/worlds/tiny/target"


def test_adapter_config_names_the_hub_model(model_dir, qa_files, tmp_path, monkeypatch):
    """A LoRA run from a hub model: adapter_config.json and artifact.json name the hub model, not a path."""
    import obliviate.models.loading as loading
    from obliviate.workflow import run_unlearn

    real = loading.load_model
    monkeypatch.setattr(loading, "load_model",
                        lambda name, *a, **k: real(model_dir if name == "org/tiny" else name, *a, **k))
    monkeypatch.setattr(loading, "_looks_local", lambda name: False)
    out = tmp_path / "run"
    run_unlearn("graddiff", "org/tiny", out, *qa_files, overrides=["max_steps=1"], progress=False, lora="r=2,alpha=4")
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"
    assert json.loads((out / "artifact.json").read_text())["base_model"] == "org/tiny"
