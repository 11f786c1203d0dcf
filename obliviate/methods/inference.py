"""The base class of inference-time methods: `unlearn` builds an intervention and saves it.

A run directory of an inference-time method holds the intervention instead of weights:

    RUN/
      artifact.json      {"kind": "intervention", "path": "intervention", "base_model": ..., ...}
      intervention/      intervention.json (+ intervention.safetensors)

`runs.load_run_model(RUN)` loads the frozen base model and wraps it. A method class says what it
produces with `produces = "intervention"`; the CLI writes artifact.json with
`runs.write_intervention_artifact` after `unlearn` returns.

This module lives in the methods package (not in `obliviate.interventions`) so that importing the
method table never meets a half-imported module: methods import it, it imports only
`methods.base` and `interventions.base`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from obliviate.data.schema import LabelledText, QAItem
from obliviate.errors import ConfigError
from obliviate.interventions.base import Intervention
from obliviate.interventions.model import InterventionModel
from obliviate.methods.base import Method

ARTIFACT_DIR = "intervention"


def item_kind(items: Sequence, method: str, allowed: tuple[type, ...] = (QAItem,)) -> type | None:
    """The one item type of `items` (None when empty); an error for mixed or unsupported types."""
    kinds = {type(it) for it in items}
    if len(kinds) > 1:
        raise ConfigError(f"{method}: items mix {sorted(k.__name__ for k in kinds)}; use one kind per set")
    kind = next(iter(kinds), None)
    if kind is not None and kind not in allowed:
        raise ConfigError(f"{method}: {kind.__name__} items are not supported "
                          f"(expected {' or '.join(a.__name__ for a in allowed)})")
    return kind


LABELLED_OR_QA = (QAItem, LabelledText)


class InterventionMethod(Method):
    """An inference-time method: `build` returns an intervention for the frozen model."""

    family = "inference-time"
    produces: ClassVar[str] = "intervention"

    intervention: Intervention | None = None

    @abstractmethod
    def build(self, model, tokenizer, forget, retain, out_dir: Path, progress: bool, resume: bool
              ) -> tuple[Intervention, dict]:
        """(intervention, summary) for `model`, which must be left unchanged."""

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        """Build the intervention, save it into `out_dir/intervention`, return a summary."""
        from accelerate import PartialState

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        t0 = time.perf_counter()
        intervention, summary = self.build(model, tokenizer, forget, retain, out_dir, progress, resume)
        model.train(was_training)
        self.intervention = intervention
        if PartialState().is_main_process:
            self.save(out_dir)
        return {"steps": 0, "train_seconds": time.perf_counter() - t0, **summary,
                "intervention": intervention.kind, "path": ARTIFACT_DIR}

    def save(self, out_dir: str | Path) -> Path:
        if self.intervention is None:
            raise ConfigError(f"{self.name}: nothing to save before unlearn()")
        return self.intervention.save(Path(out_dir) / ARTIFACT_DIR)

    @staticmethod
    def load(run_dir: str | Path, model, tokenizer=None) -> InterventionModel:
        """The frozen `model` wrapped by the intervention saved in run directory `run_dir`."""
        from obliviate.interventions import load_intervention

        return load_intervention(Path(run_dir) / ARTIFACT_DIR, model, tokenizer).wrap(model, tokenizer)
