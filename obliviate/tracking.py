"""Experiment trackers: `--report-to tensorboard|wandb|mlflow`, through accelerate's trackers.

A command opens a tracking session (`session`) around its work; anything below it (the training
loops, the evaluation) logs with `log`, which does nothing outside a session, so no signature
between the command and the training loop changes. What is logged:

- `train/loss` and the method's own logs (`train/forget_nll`, `train/retain_nll`, ...) at every
  optimiser step;
- the run's resolved config (method settings, model, data) as hyperparameters;
- the final metrics (`eval/model_utility`, `eval/forget_quality`, `unlearn/seconds`, ...).

TensorBoard writes event files under `DIR/tensorboard/NAME`; W&B and MLflow follow their own
settings (`WANDB_MODE=offline`, `MLFLOW_TRACKING_URI=file:...` for offline use).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> package it needs
PROJECT = "obliviate"


def parse_report_to(value: str | Sequence[str] | None) -> list[str]:
    """`"tensorboard,wandb"` (or a list) -> ["tensorboard", "wandb"]; "none" or nothing -> []."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [p.strip().lower() for p in parts if p.strip() and p.strip().lower() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--report-to {name}: expected one of {', '.join(TRACKERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _require(name: str) -> None:
    import importlib.util

    package = TRACKERS[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"--report-to {name}: the {package} package is not installed (pip install {package})")


def _make_tracker(name: str, run_name: str, logging_dir: Path) -> Any:
    from accelerate import tracking

    _require(name)
    if name == "tensorboard":
        return tracking.TensorBoardTracker(run_name, logging_dir / "tensorboard")
    if name == "wandb":
        return tracking.WandBTracker(PROJECT, name=run_name, dir=str(logging_dir))
    return tracking.MLflowTracker(PROJECT, run_name=run_name)


def _hparam(value: Any) -> bool | str | float | int:
    """A value a tracker takes as a hyperparameter: a number, bool or string (lists and None as text)."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "/"))
        else:
            out[name] = value
    return out


class Session:
    """The trackers of one command: hyperparameters once, then scalars by step."""

    def __init__(self, names: Sequence[str], run_name: str, logging_dir: Path, config: Mapping[str, Any]) -> None:
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs the process state
        self.trackers = [_make_tracker(name, run_name, Path(logging_dir)) for name in names]
        for tracker in self.trackers:
            if hasattr(tracker, "start"):
                tracker.start()
        hparams = {k: _hparam(v) for k, v in _flat(config).items()}
        for tracker in self.trackers:
            tracker.store_init_configuration(hparams)

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        scalars = {k: float(v) for k, v in _flat(values).items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}
        if scalars:
            for tracker in self.trackers:
                tracker.log(scalars, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


_current: list[Session] = []


@contextmanager
def session(report_to: str | Sequence[str] | None, run_name: str, logging_dir: str | Path,
            config: Mapping[str, Any] | None = None) -> Iterator[Session | None]:
    """Open the trackers named in `report_to` for the block (None when there are none)."""
    names = parse_report_to(report_to)
    if not names:
        yield None
        return
    current = Session(names, run_name, Path(logging_dir), config or {})
    _current.append(current)
    try:
        yield current
    finally:
        _current.remove(current)
        current.finish()


def active() -> bool:
    """Whether a tracking session is open."""
    return bool(_current)


def log(values: Mapping[str, Any], step: int | None = None) -> None:
    """Log scalars to the open session's trackers (nested dicts as a/b keys); nothing without a session."""
    if _current:
        _current[-1].log(values, step)


def log_metrics(aggregates: Mapping[str, Any], prefix: str = "eval", step: int | None = None) -> None:
    """Log a results.json's aggregates ({"key": {"value": ...}}) as `prefix/key` scalars."""
    log({f"{prefix}/{k}": v.get("value") for k, v in aggregates.items() if isinstance(v, Mapping)}, step)
