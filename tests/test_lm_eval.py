"""`obliviate eval --lm-eval`: general-utility benchmarks through lm-evaluation-harness.

The tasks in tests/fixtures/lm_eval/ are six questions in the tiny tokenizer's vocabulary over a
local JSONL file, once as a multiple-choice task and once as a generation task; nothing is
downloaded. The harness scores the model obliviate loaded: a plain one, or one under an
intervention (whose wrapper is what must be called).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from obliviate.errors import ConfigError, ObliviateError
from obliviate.evals.lm_eval import RESULTS_FILE, evaluate_with_harness, run_lm_eval
from obliviate.interventions.prefix_kinds import InContextPrefix
from obliviate.io import read_json
from tests.conftest import build_tiny_tokenizer, make_tiny_llama
from tests.helpers import Identity, assert_one_line_error, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
DATA = FIXTURES / "tiny_qa.jsonl"
MC, GEN = "obliviate_tiny_mc", "obliviate_tiny_gen"
N_DOCS = sum(1 for line in DATA.read_text().splitlines() if line.strip())
CONTEXT = "The quick brown fox jumps over the lazy dog."


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
def tasks_dir(tmp_path_factory):
    """The fixture task YAMLs with the data file's absolute path (datasets resolves relative ones
    from the working directory) and a datasets cache of their own."""
    root = tmp_path_factory.mktemp("lm_eval")
    tasks = root / "tasks"
    tasks.mkdir()
    for path in FIXTURES.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        config["dataset_kwargs"] = {"data_files": {"test": str(DATA)}, "cache_dir": str(root / "cache")}
        (tasks / path.name).write_text(yaml.safe_dump(config))
    return tasks


@pytest.fixture(scope="module")
def model_tok():
    return make_tiny_llama(), build_tiny_tokenizer()


def _samples(raw, task):
    return sorted(raw["samples"][task], key=lambda s: s["doc_id"])


def _loglikelihoods(raw) -> np.ndarray:
    """Every choice's log p(choice | question), document by document."""
    return np.array([ll for s in _samples(raw, MC) for ll, _ in s["filtered_resps"]], dtype=float)


def _generations(raw) -> list[str]:
    return [s["filtered_resps"][0] for s in _samples(raw, GEN)]


def test_a_local_task_is_scored_and_written(model_tok, tasks_dir, tmp_path):
    model, tok = model_tok
    metrics = run_lm_eval(model, tok, [MC], tmp_path, include_path=tasks_dir)
    row = metrics[MC]
    assert row["samples"] == N_DOCS
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= row[metric] <= 1.0
        # the standard error of a mean of 0/1 scores: sqrt(p (1 - p) / (n - 1))
        assert row[f"{metric}_stderr"] == pytest.approx(math.sqrt(row[metric] * (1 - row[metric]) / (N_DOCS - 1)))
    assert read_json(tmp_path / RESULTS_FILE) == metrics
    limited = run_lm_eval(model, tok, [MC], None, limit=2, include_path=tasks_dir)
    assert limited[MC]["samples"] == 2


def test_the_harness_scores_the_intervention_wrapped_model(model_tok, tasks_dir):
    model, tok = model_tok
    run = lambda m: evaluate_with_harness(m, tok, [MC, GEN], include_path=tasks_dir, log_samples=True)  # noqa: E731
    bare = run(model)
    identity = run(Identity().wrap(model, tok))
    prefixed = run(InContextPrefix.from_text(tok, CONTEXT).wrap(model, tok))
    assert len(_loglikelihoods(bare)) == sum(len(json.loads(line)["choices"]) for line in DATA.read_text().splitlines())
    # the wrapper's plumbing changes nothing, in scoring or in greedy generation ...
    np.testing.assert_allclose(_loglikelihoods(identity), _loglikelihoods(bare), atol=1e-5)
    assert _generations(identity) == _generations(bare)
    # ... and a prefix the model now reads moves every log-likelihood: the wrapped model was called
    assert np.abs(_loglikelihoods(prefixed) - _loglikelihoods(bare)).min() > 1e-4
    assert len(_generations(prefixed)) == N_DOCS and all(isinstance(g, str) for g in _generations(prefixed))


def test_cli_eval_lm_eval_on_a_model_dir_and_an_intervention_run(model_tok, tasks_dir, tmp_path, monkeypatch, capsys):
    from obliviate.models.loading import save_model
    from obliviate.runs import write_intervention_artifact

    model, tok = model_tok
    base = save_model(model, tok, tmp_path / "base")
    code, out, err = run_cli(["eval", str(base), "--lm-eval", MC, "--lm-eval-include", str(tasks_dir),
                              "--out", str(tmp_path / "bare"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload == read_json(tmp_path / "bare" / RESULTS_FILE)
    assert payload[MC]["samples"] == N_DOCS and 0.0 <= payload[MC]["acc"] <= 1.0

    run = tmp_path / "run"  # an inference-time run: the saved prefix over the untouched base model
    prefix = InContextPrefix.from_text(tok, CONTEXT)
    prefix.save(run / "intervention")
    write_intervention_artifact(run, str(base), "prompt", prefix.kind)
    code, out, err = run_cli(["eval", str(run), "--lm-eval", f"{MC},{GEN}", "--lm-eval-include", str(tasks_dir),
                              "--lm-eval-limit", "3"], monkeypatch, capsys)
    assert code == 0, err
    assert "lm-evaluation-harness" in out and MC in out and GEN in out
    written = read_json(run / RESULTS_FILE)  # --out defaults to the run directory
    assert {task: row["samples"] for task, row in written.items()} == {MC: 3, GEN: 3}
    assert 0.0 <= written[GEN]["exact_match"] <= 1.0


def test_unknown_task_is_one_line_naming_the_close_ones(tasks_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["eval", str(tmp_path), "--lm-eval", "obliviate_tiny_mx", "--lm-eval-include",
                            str(tasks_dir), "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert_one_line_error(code, err, "unknown lm-eval task(s): obliviate_tiny_mx", MC, "lm-eval ls tasks")
    assert not (tmp_path / "out").exists()


def test_a_task_that_runs_generated_code_is_refused(model_tok, tmp_path):
    config = yaml.safe_load((FIXTURES / "tiny_qa_mc.yaml").read_text())
    config.update(task="obliviate_tiny_unsafe", unsafe_code=True,
                  dataset_kwargs={"data_files": {"test": str(DATA)}, "cache_dir": str(tmp_path / "cache")})
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "unsafe.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ObliviateError, match="obliviate_tiny_unsafe.*code the model wrote are not allowed"):
        run_lm_eval(*model_tok, ["obliviate_tiny_unsafe"], tmp_path / "out", include_path=tmp_path / "tasks")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--lm-eval-limit", "3"], "--lm-eval-limit needs --lm-eval TASKS"),
    (["--lm-eval", MC, "--forget", "forget.jsonl"], "--forget is not used with --lm-eval"),
    (["--lm-eval", " , "], "give at least one task name"),
])
def test_bad_lm_eval_options_are_one_line(args, fragment, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["eval", str(tmp_path), "--out", str(tmp_path / "out"), *args], monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)


def test_missing_lm_eval_package_names_the_extra(model_tok, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install 'obliviate[lm-eval]'")):
        run_lm_eval(*model_tok, [MC], tmp_path)
    code, _, err = run_cli(["eval", str(tmp_path), "--lm-eval", MC, "--out", str(tmp_path / "out")],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, "pip install 'obliviate[lm-eval]'")
