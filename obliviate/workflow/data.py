"""Data specs: a benchmark named by a string, from the hub or a local copy.

- `world:SPLIT`: the model's world; unlearning trains on the split's forget and retain training
  items, evaluation uses the world's evaluation sets and exact-retrain oracle.
- `tofu:forget01|05|10[@PATH]`: unlearning trains on `forgetNN` and `retainNN`; evaluation scores
  `forgetNN_perturbed`, `retain_perturbed`, real authors, world facts and `holdoutNN`.

PATH is a local directory in the benchmark's own schema (the hub repo's files); without it the hub
is read (`locuslab/TOFU`). A run records its data spec, so `obliviate eval RUN` needs nothing else.
`legacy=True` evaluates TOFU's first 300 items of every set, as TOFU's own evaluation did
(`ds_size: 300`), for parity with the published forget-quality values.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.workflow.evaluation import EvalSets

BENCHMARKS = ("world", "tofu")
LEGACY_ITEMS = 300


@dataclass(frozen=True)
class DataSpec:
    """`benchmark:name[@path]`, parsed."""

    benchmark: str
    name: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.benchmark}:{self.name}" + (f"@{self.path}" if self.path else "")


def parse_data_spec(spec: str) -> DataSpec:
    """`tofu:forget10@./TOFU` -> DataSpec("tofu", "forget10", "./TOFU"); a one-line error otherwise."""
    from obliviate.data.adapters.tofu import FORGET_SPLITS

    benchmark, sep, rest = spec.partition(":")
    name, _, path = rest.partition("@")
    if not sep or benchmark not in BENCHMARKS or not name:
        raise ConfigError(f"--data {spec!r}: expected one of world:SPLIT, tofu:forget01|05|10[@PATH]")
    if benchmark == "tofu" and name not in FORGET_SPLITS:
        raise ConfigError(f"--data {spec!r}: unknown TOFU split '{name}' (choose from {', '.join(FORGET_SPLITS)})")
    if benchmark == "world" and path:
        raise ConfigError(f"--data {spec!r}: the world's data comes with its model (world:SPLIT, no @PATH)")
    return DataSpec(benchmark, name, path or None)


def _tofu(spec: DataSpec):
    from pathlib import Path

    from obliviate.data.adapters.tofu import HUB_NAME, load_tofu

    source = str(Path(spec.path).resolve()) if spec.path else HUB_NAME
    return load_tofu(source, spec.name)


def train_sets(spec: DataSpec) -> tuple[list[QAItem], list[QAItem]]:
    """(forget, retain) items that unlearning trains on."""
    if spec.benchmark == "tofu":
        data = _tofu(spec)
        return list(data.forget), list(data.retain_train if data.retain_train is not None else data.retain)
    raise ConfigError(f"--data {spec}: the world's training sets come with world:PRESET models")


def eval_sets(spec: DataSpec, legacy: bool = False) -> EvalSets:
    """The qa suite's sets; `legacy`: the first 300 items of each, as TOFU's own evaluation."""
    if spec.benchmark != "tofu":
        raise ConfigError(f"--data {spec}: the world's evaluation sets come with world:PRESET models")
    data = _tofu(spec)
    cut = (lambda items: list(items)[:LEGACY_ITEMS]) if legacy else list
    return EvalSets(cut(data.forget), cut(data.retain), {k: cut(v) for k, v in data.utility.items()},
                    cut(data.holdout) if data.holdout else None)


def record(spec: DataSpec) -> str:
    """The spec as a run records it: a local path made absolute, so the run resolves from anywhere."""
    from pathlib import Path

    return str(DataSpec(spec.benchmark, spec.name, str(Path(spec.path).resolve()) if spec.path else None))
