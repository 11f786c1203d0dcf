"""End to end on the smallest world: demo, unlearn, eval and compare against the oracle."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


def run_ok(args, monkeypatch, capsys) -> str:
    """Run the command line, which must succeed; its stdout."""
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    return out


@pytest.mark.slow
def test_demo_forgets_and_keeps_utility(tmp_path, monkeypatch, capsys, world_home):
    out = run_ok(["demo", "--preset", "tiny", "--out", str(tmp_path / "demo"), "--json"], monkeypatch, capsys)
    models = json.loads(out)["models"]
    target, unlearned, oracle = models["target"], models["graddiff"], models["oracle (retrain)"]
    # It forgot: forget-set probability and ROUGE fall well below the target's...
    assert unlearned["forget/probability"]["value"] < 0.6 * target["forget/probability"]["value"]
    assert unlearned["forget/rouge"]["value"] < 0.5 * target["forget/rouge"]["value"]
    # ...and it did not destroy the model: utility stays near the target's.
    assert unlearned["model_utility"]["value"] > 0.85 * target["model_utility"]["value"]
    # The oracle never saw the forget people; the target is far from it.
    assert oracle["forget/probability"]["value"] < 0.2
    assert target["forget_quality"]["value"] < 1e-3
    for name in ("config.json", "results.json", "items.jsonl", "train_log.jsonl", "model/config.json"):
        assert (tmp_path / "demo" / name).exists(), name


@pytest.mark.slow
def test_unlearn_then_eval_run_dir(tmp_path, monkeypatch, capsys, world_home):
    run = tmp_path / "ga"
    run_ok(["unlearn", "--method", "ga", "--model", "world:tiny", "--out", str(run), "--set", "epochs=2",
            "--json"], monkeypatch, capsys)
    out = run_ok(["eval", str(run), "--json"], monkeypatch, capsys)
    result = json.loads(out)
    agg = result["aggregates"]
    assert {"forget_quality", "model_utility", "forget/probability", "mia/loss_auc"} <= set(agg)
    assert agg["forget_quality"]["n"] == len([1 for _ in open(run / "items.jsonl") if '"set": "forget"' in _])
    saved = json.loads((run / "results.json").read_text())
    assert saved["aggregates"]["model_utility"]["value"] == pytest.approx(agg["model_utility"]["value"])
