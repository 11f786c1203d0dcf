"""The method interface.

Two kinds of method, one result (see the architecture guide):
- a weight-editing method returns new weights (`unlearn` saves a model directory);
- an inference-time method returns an intervention that wraps the frozen model.

A fine-tuning method is one small class: a `Config` (pydantic, help text on every field, paper
defaults) and one hook, `compute_loss(model, batch)`. Everything else (optimiser, schedule,
accumulation, checkpoints, resume, progress, divergence guard) lives in `obliviate.train.loop`.

**Labelled variants.** A method's name stands for the paper's behaviour, and its defaults are the
paper's. A departure that changes the numbers is declared in `variants` (suffix -> the config
values that make it) and is reported under its own name, the method's name plus `+suffix`
(`spul+gate`): `get_method("spul+gate")` is the method with those values as defaults, and
`label(config)` names any config, however it was set (`--set gate=classifier` on `spul` is
reported as `spul+gate`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from obliviate.config import StrictConfig
from obliviate.data.schema import QAItem
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.train.data import UnlearnBatch


class MethodConfig(StrictConfig):
    """Fields every method has."""

    seed: int = Field(0, description="random seed for data order and initialisation")


class FinetuneConfig(MethodConfig):
    """The shared fine-tuning hyperparameters. Defaults suit the built-in world's tiny models;
    the docstring of each method gives the paper's defaults for 7B-scale models."""

    lr: float = Field(5e-4, description="peak learning rate (AdamW)", gt=0)
    schedule: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="learning-rate schedule after the warm-up: linear decay to 0, constant, or cosine")
    warmup_epochs: float | None = Field(
        None, ge=0, description="epochs of linear warm-up (overrides warmup_ratio; TOFU and NPO warm up for one)")
    epochs: int = Field(5, description="passes over the forget set", ge=1)
    batch_size: int = Field(16, description="forget examples per micro-batch (retain batches match it)", ge=1)
    grad_accum: int = Field(1, description="micro-batches per optimiser step", ge=1)
    max_steps: int | None = Field(None, description="stop after this many optimiser steps (overrides epochs)", ge=1)
    warmup_ratio: float = Field(0.0, description="fraction of steps with linear warm-up", ge=0, le=1)
    weight_decay: float = Field(0.0, description="AdamW weight decay (not on biases and norm weights)", ge=0)
    max_grad_norm: float = Field(1.0, description="gradient clipping norm (0 disables)", ge=0)
    max_length: int = Field(512, description="truncate sequences to this many tokens", ge=8)
    save_every: int = Field(0, description="checkpoint every N optimiser steps (0: only at the end)", ge=0)
    retain_rise_limit: float = Field(
        0.0, ge=0, description="stop if the method's retain term (retain NLL, KL, ...) exceeds this factor × its "
        "first value (0: off)")


@dataclass
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method(ABC):
    """A registered unlearning method."""

    name: ClassVar[str]
    family: ClassVar[str]  # "fine-tuning", "weight surgery" or "inference-time"
    paper: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_retain: ClassVar[bool] = False
    needs_moe: ClassVar[bool] = False  # runs only on mixture-of-experts models
    needs_chat: ClassVar[bool] = False  # runs only on instruction models with a chat template (not the world's)
    # takes text passages (`TextPassage`: MUSE's and WMDP's corpora) as well as QA items; the loss then
    # runs on every token of a passage, or on its continuation when it has a prefix (train/data.py)
    accepts_text: ClassVar[bool] = False
    # the paper's defaults for 7B-scale models; the config's own defaults are the world's (methods/defaults.py)
    paper_defaults: ClassVar[dict[str, Any]] = {}
    # Labelled departures from the paper: suffix -> {config field: value} (module docstring).
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    variant_of: ClassVar[str | None] = None  # the paper's method name, on a variant class

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def label(cls, config: MethodConfig | Mapping[str, Any]) -> str:
        """The name a run with `config` is reported under: the method's, plus `+suffix` for each
        labelled variant whose values the config holds."""
        get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
        missing = object()
        suffixes = [suffix for suffix, values in cls.variants.items()
                    if all(get(k, missing) == v for k, v in values.items())]
        return VARIANT_SEP.join([cls.variant_of or cls.name, *suffixes])

    @classmethod
    def variant(cls, suffixes: list[str]) -> type[Method]:
        """This method with the config values of the labelled variants `suffixes` as its defaults."""
        if cls.variant_of is not None:
            raise ValueError(f"{cls.name} is already a variant")
        unknown = [s for s in suffixes if s not in cls.variants]
        if unknown or not suffixes or len(set(suffixes)) != len(suffixes):
            raise KeyError(unknown or suffixes)
        ordered = [s for s in cls.variants if s in suffixes]
        values = {k: v for s in ordered for k, v in cls.variants[s].items()}
        name = VARIANT_SEP.join([cls.name, *ordered])
        summary = f"{cls.summary} (variant: {', '.join(f'{k}={v}' for k, v in values.items())})"
        return type(cls.__name__, (cls,), {"name": name, "variant_of": cls.name, "summary": summary,
                                           "Config": config_with_defaults(cls.Config, values),
                                           "__module__": cls.__module__, "__doc__": cls.__doc__})


VARIANT_SEP = "+"


def config_with_defaults(config: type[MethodConfig], values: dict[str, Any]) -> type[MethodConfig]:
    """A subclass of `config` whose fields in `values` default to those values (help text kept)."""
    from pydantic import create_model

    fields = {}
    for key, value in values.items():
        info = copy.copy(config.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    return create_model(config.__name__, __base__=config, __module__=config.__module__, **fields)

    @abstractmethod
    def unlearn(
        self,
        model,
        tokenizer,
        forget: list[QAItem],
        retain: list[QAItem],
        out_dir: Path,
        progress: bool = True,
        resume: bool = False,
    ) -> dict:
        """Unlearn in place / into `out_dir`; return a summary (steps, losses, timing)."""


class FinetuneMethod(Method):
    """A method defined by its loss; the shared loop does the rest."""

    family = "fine-tuning"
    Config = FinetuneConfig
    paper_defaults: ClassVar[dict[str, Any]] = TOFU_FINETUNE
    # Set by the caller (the `unlearn` workflow), read by the loop (train/loop.py):
    keep_checkpoint: bool = False  # keep the last step's checkpoint; the caller drops it once the weights are saved
    force_resume: bool = False  # resume a checkpoint written with another config

    def setup(self, model, tokenizer, forget: list[QAItem], retain: list[QAItem]) -> None:
        """Optional hook run once before training (e.g. to cache reference log-probs)."""

    def pre_step_loss(self, model, batch: UnlearnBatch) -> LossOutput | None:
        """Optional: a loss the loop takes an optimiser step on by itself before `compute_loss`'s
        (two steps per batch, as Opt-Out's alternate updates); None for one step per batch."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The method's own training state (JSON) a checkpoint keeps for an exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    @abstractmethod
    def compute_loss(self, model, batch: UnlearnBatch) -> LossOutput:
        """The method's loss on one forget (and retain) batch."""

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        from obliviate.train.loop import finetune

        return finetune(self, model, tokenizer, forget, retain, Path(out_dir), progress=progress, resume=resume)
