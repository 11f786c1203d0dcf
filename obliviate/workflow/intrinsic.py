"""The intrinsic suite as a workflow: which model is measured against which reference, and the oracle beside it.

    obliviate eval RUN --suite intrinsic                       # a run: against the model it started from
    obliviate eval ORACLE_DIR --suite intrinsic --world tiny@0 --out DIR   # any model, on a world's sets

- the model: any model spec (a run, an intervention run, a local directory, `world:...`);
- the reference R (traces are located in R, and every number compares with R): `--reference-model`,
  else the model a run started from (its config's `model`), else the world's target;
- the oracle, measured against R the same way and reported beside the model: `--oracle`, else the
  world's oracle for a world run or `--world`; without one the oracle's column is left out, and said so;
- the sets: `--forget`/`--retain` files, else the world's forget and retain sets.

Results go to `intrinsic.json` in the run directory (or `--out`), written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obliviate.errors import ObliviateError
from obliviate.io import check_out_dir, read_json, write_json
from obliviate.workflow.specs import load_model_spec, parse_world_spec, world_models

RESULTS = "intrinsic.json"


def _reference_spec(target: str, reference: str | None, ref) -> str:
    from obliviate.runs import is_run_dir

    if reference is not None:
        return reference
    config = Path(target) / "config.json"
    if is_run_dir(target) and config.is_file() and read_json(config).get("model"):
        return str(read_json(config)["model"])
    if ref is not None:
        return str(world_models(ref, which=("target",), progress=False).target)
    raise ObliviateError("the intrinsic suite needs the model unlearning started from: --reference-model SPEC "
                         "(a run or a world model find it themselves)")


def _oracle_spec(oracle: str | None, ref) -> str | None:
    if oracle is not None:
        return oracle
    if ref is not None:
        return str(world_models(ref, which=("oracle",), progress=False).oracle)
    return None


def evaluate_intrinsic_target(target: str, forget: str | None = None, retain: str | None = None,
                              oracle: str | None = None, reference: str | None = None, split: str = "forget10",
                              world: str | None = None, out: Path | None = None, progress: bool = True,
                              unused: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure `target` (and the oracle) against the reference with the intrinsic suite; write intrinsic.json."""
    from obliviate.evals.intrinsic import Intrinsic
    from obliviate.models.prompts import format_of
    from obliviate.runs import is_run_dir
    from obliviate.workflow.evaluation import load_eval_sets

    for flag, value in (unused or {}).items():
        if value:
            raise ObliviateError(f"{flag} is not used by the intrinsic suite")
    if out is None and not is_run_dir(target):
        raise ObliviateError("--out is required when the target is not a run directory")
    out = Path(target) if out is None else check_out_dir(out, force=True)
    model, tok, ref = load_model_spec(target, split, progress=progress)
    if world is not None:
        ref = parse_world_spec(f"world:{world}", split)
    sets = load_eval_sets(ref, forget, retain)
    fmt = format_of(tok)
    reference_spec = _reference_spec(target, reference, ref)
    reference_model, _, _ = load_model_spec(reference_spec, split, progress=False, fmt=fmt)
    suite = Intrinsic(reference_model, tok, sets.forget, sets.retain)
    if not suite.traces["forget"] and suite.trace_note is None:
        raise ObliviateError("the intrinsic suite needs forget items with a subject (the concept to trace)")
    results = {"model": suite.measure(model)}
    oracle_spec = _oracle_spec(oracle, ref)
    if oracle_spec is not None:
        oracle_model, _, _ = load_model_spec(oracle_spec, split, progress=False, fmt=fmt)
        results["oracle"] = suite.measure(oracle_model)
    payload = {"suite": "intrinsic", "target": target, "reference": reference_spec, "oracle": oracle_spec,
               "aggregates": {k: r.aggregates for k, r in results.items()},
               "per_layer": {k: r.per_layer for k, r in results.items()},
               "notes": {k: r.notes for k, r in results.items()}
               | ({} if oracle_spec else {"oracle": ["no oracle: give --oracle, or evaluate a world model"]}),
               "traced": suite.summary(), "n": {"forget": len(suite.forget), "retain": len(suite.retain)}}
    write_json(out / RESULTS, payload)
    return payload
