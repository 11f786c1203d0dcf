"""Exact unlearning in Python: S3T's sharded ensemble trained, then deleted from, as runs.

    base = ob.finetune_sharded("world:tiny", out="runs/s3t-full")
    gone = ob.delete(base, subjects=["p003"], out="runs/s3t-deleted", retrain=True)
    ob.evaluate(gone)

`ob.unlearn("s3t", model="world:tiny", out=...)` does both at once (the forget split is deleted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from obliviate.api.types import Run


def _pairs(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return list(overrides)


def finetune_sharded(model: str | Path, *, out: str | Path, data: str | Path | None = None,
                     overrides: Mapping[str, Any] | Sequence[str] | None = None, progress: bool = True,
                     force: bool = False) -> Run:
    """Train an S3T ensemble (`world:PRESET`, or a base model with `data`) into run directory `out`."""
    from obliviate.workflow.exact import finetune_sharded as train

    train(str(model), Path(out), None if data is None else str(data), _pairs(overrides), progress=progress,
          force=force)
    return Run.load(out)


def delete(run: str | Path | Run, *, out: str | Path, ids: Sequence[str] | None = None,
           subjects: Sequence[str] | None = None, retrain: bool = False, progress: bool = True,
           force: bool = False) -> Run:
    """Delete items (by id, or every item of `subjects`) from an S3T run into a new run `out`."""
    from obliviate.workflow.exact import delete_from_run

    path = run.path if isinstance(run, Run) else Path(run)
    delete_from_run(path, Path(out), list(ids) if ids else None, list(subjects) if subjects else None, retrain,
                    progress=progress, force=force)
    return Run.load(out)
