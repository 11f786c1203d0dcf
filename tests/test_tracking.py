"""`--report-to`: experiment trackers through accelerate's. TensorBoard is checked offline: the event
files a run writes are read back with TensorBoard's own reader. W&B and MLflow run in their offline
modes when installed."""

from __future__ import annotations

import json

import pytest

from obliviate.errors import ConfigError
from obliviate.models.loading import save_model
from obliviate.tracking import TRACKERS, parse_report_to
from tests.helpers import run_cli


def test_parse_report_to():
    assert parse_report_to("tensorboard, wandb,tensorboard") == ["tensorboard", "wandb"]
    assert parse_report_to("none") == [] and parse_report_to(None) == []
    with pytest.raises(ConfigError, match="expected one of tensorboard, wandb, mlflow"):
        parse_report_to("tensorbored")


@pytest.fixture
def model_and_data(tmp_path, tiny_llama, tiny_tokenizer):
    model = save_model(tiny_llama, tiny_tokenizer, tmp_path / "base")
    rows = [{"question": "Where was the author born?", "answer": "She was born in Oslo, Norway.",
             "paraphrased_answer": "She was born in Oslo.", "perturbed_answers": ["She was born in Rome."]},
            {"question": "What genre does the author write?", "answer": "He writes science fiction and poetry.",
             "paraphrased_answer": "He writes poetry.", "perturbed_answers": ["He writes music."]}]
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows))
    retain.write_text(json.dumps({"question": "What is the capital of France?", "answer": "The capital of France "
                                  "is Paris.", "paraphrased_answer": "Paris.",
                                  "perturbed_answers": ["The capital of France is Rome."]}) + "\n")
    return model, str(forget), str(retain)


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_are_written_and_readable(model_and_data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    model, forget, retain = model_and_data
    run = tmp_path / "gd"
    code, _, err = run_cli(["unlearn", "--method", "graddiff", "--model", str(model), "--forget", forget,
                            "--retain", retain, "--out", str(run), "--set", "max_steps=3", "--set", "lr=1e-3",
                            "--report-to", "tensorboard", "--json"], monkeypatch, capsys)
    assert code == 0, err
    log_dir = run / "tensorboard" / "gd"
    assert list(log_dir.glob("events.out.tfevents.*"))
    scalars = _scalars(log_dir)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    assert "train/forget_nll" in scalars or any(k.startswith("train/") and k != "train/loss" for k in scalars)
    assert scalars["unlearn/steps"][0][1] == 3

    code, _, err = run_cli(["eval", str(run), "--forget", forget, "--retain", retain, "--no-generate",
                            "--report-to", "tensorboard", "--json"], monkeypatch, capsys)
    assert code == 0, err
    evals = _scalars(run / "tensorboard" / "gd-eval")
    # Without generations there is no ROUGE: utility is reported under its own name, never as model utility.
    assert "eval/forget/probability" in evals and "eval/model_utility_without_rouge" in evals
    assert "eval/model_utility" not in evals


@pytest.mark.parametrize("name", [n for n in TRACKERS if n != "tensorboard"])
def test_a_tracker_that_is_not_installed_is_one_line(name, model_and_data, tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed")
    model, forget, retain = model_and_data
    code, _, err = run_cli(["unlearn", "--method", "ga", "--model", str(model), "--forget", forget,
                            "--retain", retain, "--out", str(tmp_path / "r"), "--set", "max_steps=1",
                            "--report-to", name], monkeypatch, capsys)
    assert code == 2 and f"pip install {name}" in err


def test_wandb_offline(model_and_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import obliviate as ob

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model, forget, retain = model_and_data
    ob.unlearn("ga", str(model), forget=forget, retain=retain, out=tmp_path / "r", overrides={"max_steps": 1},
               progress=False, report_to="wandb")
    [run_file] = list(tmp_path.rglob("*.wandb"))
    # the offline run's record log (protobuf, keys stored as plain strings) holds what the run logged
    records = run_file.read_bytes()
    assert b"train/loss" in records and b"unlearn/steps" in records


def test_mlflow_offline(model_and_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    import obliviate as ob

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's local store (its file store is deprecated)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model, forget, retain = model_and_data
    ob.unlearn("ga", str(model), forget=forget, retain=retain, out=tmp_path / "r", overrides={"max_steps": 1},
               progress=False, report_to="mlflow")
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert client.get_metric_history(run.info.run_id, "train/loss")
    assert run.data.metrics["unlearn/steps"] == 1
