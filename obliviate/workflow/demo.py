"""The whole story on the built-in world: build a target and its exact-retrain oracle, unlearn, compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from obliviate.workflow.evaluation import cached_world_eval, evaluate, world_eval_sets
from obliviate.workflow.specs import WorldRef, world_models
from obliviate.workflow.unlearning import run_unlearn


def run_demo(preset: str = "small", seed: int = 0, split: str = "forget10", method: str = "graddiff",
             out: Path = Path("runs/demo"), progress: bool = True,
             log: Callable[[str], None] | None = None, overrides: list[str] | None = None,
             force: bool = False) -> dict[str, Any]:
    """Unlearn `split` from the world's target with `method`, evaluate target, run and oracle alike.

    Returns {"run", "seconds", "models": {column: aggregates}} with the columns target, METHOD and
    "oracle (retrain)". `out` is checked first: a non-empty directory this tool did not write is refused
    unless `force`; nothing in it is deleted (a run already there is written over).
    """
    from obliviate.runs import check_run_out, load_run_model

    check_run_out(out, force)

    t0 = time.perf_counter()
    ref = WorldRef(preset, seed, split)
    if log:
        log(f"[bold]1/3[/] world '{preset}' (seed {seed}): target and exact-retrain oracle")
    models = world_models(ref, which=("target", "oracle"), progress=progress)
    sets = world_eval_sets(ref)
    oracle_eval = cached_world_eval(ref, "oracle", models.oracle, sets, progress=progress)
    oracle_tr = oracle_eval["_forget_truth_ratios"]
    target_eval = cached_world_eval(ref, "target", models.target, sets, oracle_tr, progress=progress)
    if log:
        log(f"[bold]2/3[/] unlearning {split} with {method}")
    run_unlearn(method, f"world:{preset}@{seed}", out, split=split, overrides=overrides, progress=progress,
                force=force)
    if log:
        log("[bold]3/3[/] evaluating against the oracle")
    model, tok = load_run_model(out)
    unlearned = evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, config={"target": str(out)},
                         progress=progress, name=out.name)
    columns = {"target": target_eval["aggregates"], method: unlearned["aggregates"],
               "oracle (retrain)": oracle_eval["aggregates"]}
    return {"run": str(out), "seconds": time.perf_counter() - t0, "models": columns}
