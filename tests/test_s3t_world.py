"""S3T on the tiny world (workflow/exact.py): trained from the world's base model on the target's data.

Deleting forget10 moves the forget answers toward the oracle's (which never saw them), and the run
directory loads as any run does. To keep it fast the ensemble trains on the forget people and as many
retain people only (their questions and biographies), 2 shards × 2 slices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from obliviate.methods.s3t import S3TConfig
from obliviate.models.loading import load_model
from obliviate.models.scoring import score_qa
from obliviate.runs import load_run_model
from obliviate.workflow import exact
from obliviate.workflow.exact import forget_ids, run_exact_world
from obliviate.workflow.specs import WorldRef
from obliviate.world import build_world_models, get_world

pytestmark = pytest.mark.slow

COVERED = {"s3t"}  # the methods this file gives a world test (tests/test_methods_world.py checks the union)
SPLIT = "forget10"
FAST = dict(shards=2, slices=2, epochs=12, batch_size=16, r=16, alpha=32)


def _fewer_people(monkeypatch, world) -> list:
    """Train on the forget people and as many retain people, without the utility facts."""
    forget = sorted({it.subject for it in world.forget_set(SPLIT)})
    pids = forget + world.retain_pids(SPLIT)[: len(forget)]

    def items(world, _pids):
        from obliviate.data.schema import TextPassage

        bios = [TextPassage(p.text, subject=p.subject) for p in world.passages(pids)]
        return [item for f in world.facts(pids) for item in f.train_items()] + bios

    monkeypatch.setattr(exact, "world_training_items", items)
    return items(world, pids)


def _forget_nll(model, tok, items) -> float:
    return float(np.mean([s["answer"].mean_nll for s in score_qa(model, tok, items, fields=("answer",))]))


def test_deleting_forget10_moves_the_forget_answers_to_the_oracle(world_home, tmp_path, monkeypatch):
    world = get_world("tiny", 0)
    items = _fewer_people(monkeypatch, world)
    models = build_world_models("tiny", 0, SPLIT, which=("oracle",), progress=False)
    forget = world.forget_set(SPLIT)
    ref = WorldRef("tiny", 0, SPLIT)
    full = run_exact_world("s3t", S3TConfig(**FAST), ref, tmp_path / "full", progress=False, delete=False)
    deleted = run_exact_world("s3t", S3TConfig(**FAST, retrain=True), ref, tmp_path / "s3t", progress=False)
    assert deleted["ensemble"] == full["ensemble"]  # one cached training serves both
    info = deleted["deletion"]
    assert info["items"] == len(forget_ids(world, SPLIT, items)) > 0 and 0 < info["cost_fraction"] <= 1
    oracle, tok = load_model(models.oracle)
    before_model, _ = load_run_model(tmp_path / "full")
    after_model, _ = load_run_model(tmp_path / "s3t")
    before, after, target = (_forget_nll(m, tok, forget) for m in (before_model, after_model, oracle))
    assert after > before + 0.5, (before, after)  # the forget answers became less likely
    assert abs(after - target) < abs(before - target), (before, after, target)
    artifact = json.loads((tmp_path / "s3t" / "artifact.json").read_text())
    assert artifact["kind"] == "intervention" and artifact["base_model"].endswith("/base")
    manifest = json.loads((tmp_path / "s3t" / "intervention" / "manifest.json").read_text())
    kept = {i for ids in manifest["slices"].values() for i in ids}
    assert not kept & set(forget_ids(world, SPLIT, items))
