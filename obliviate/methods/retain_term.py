"""The retain term shared by open-unlearning's newer losses (UNDIAL, WGA, SatImp, PDU, AltPO).

open-unlearning's `GradDiff.compute_retain_loss` offers two retain terms, chosen by
`retain_loss_type`; the methods built on it keep the choice, and so do they here:

- "gd": the token-level cross-entropy on the retain answers (open-unlearning's "NLL");
- "kl": KL(π_ref ‖ π_θ) over the retain answer tokens, against the starting model (as in `kl.py`;
  open-unlearning averages over every position of the padded batch instead);
- "none": no retain term.

`RetainConfig` adds the two fields to a method's config; `RetainTermMethod` is the base of the methods
that carry it (it reads retain batches only when the term is on, and holds the reference model the KL
needs); `add_retain` adds the weighted term with its log entry.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from obliviate.config import StrictConfig
from obliviate.methods.base import FinetuneMethod
from obliviate.methods.kl import retain_kl
from obliviate.train.losses import ce_loss
from obliviate.train.reference import Reference

RetainLoss = Literal["none", "gd", "kl"]


class RetainConfig(StrictConfig):
    """Mixin: the retain term of a method (open-unlearning's `retain_loss_type` and `alpha`)."""

    retain_loss: RetainLoss = Field(
        "gd", description="retain term: none, gd (cross-entropy on retain answers) or kl (KL to the starting model)")
    alpha: float = Field(1.0, ge=0, description="weight α of the retain term")

    def uses_retain(self) -> bool:
        return self.retain_loss != "none" and self.alpha > 0


def retain_value(model, batch: dict[str, torch.Tensor] | None, kind: RetainLoss,
                 reference: Reference | None) -> tuple[torch.Tensor | None, str]:
    """The unweighted retain term on `batch` and its log key ("retain_nll" or "retain_kl")."""
    if kind == "none" or batch is None:
        return None, ""
    if kind == "gd":
        return ce_loss(model, batch), "retain_nll"
    if reference is None:
        raise RuntimeError("the KL retain term needs a reference model; call setup first")
    return retain_kl(model, reference, batch), "retain_kl"


def add_retain(loss: torch.Tensor, logs: dict[str, float], model, batch: dict[str, torch.Tensor] | None,
               cfg: RetainConfig, reference: Reference | None) -> torch.Tensor:
    """`loss` + α · retain term (when the config has one); the term is logged unweighted."""
    if not cfg.uses_retain():
        return loss
    value, key = retain_value(model, batch, cfg.retain_loss, reference)
    if value is None:
        return loss
    logs[key] = float(value.detach())
    return loss + cfg.alpha * value


class RetainTermMethod(FinetuneMethod):
    """A fine-tuning method with `RetainConfig`'s retain term: retain batches only when the term is on, and
    the starting model as `self.reference` when the term is KL (a subclass may set one up regardless)."""

    uses_retain = True  # unless the retain term is off (set per instance)

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.uses_retain = self.config.uses_retain()
        self.reference: Reference | None = None

    def setup(self, model, tokenizer, forget, retain) -> None:
        if self.config.retain_loss == "kl":
            self.setup_reference(model, tokenizer, forget, retain)

    def setup_reference(self, model, tokenizer, forget, retain) -> None:
        """The starting model's logits on forget and retain batches (`Reference`, in the config's `ref` mode)."""
        self.reference = Reference(self.config.ref, needs_logits=True)
        self.reference.setup(model, tokenizer, forget, retain, max_length=self.config.max_length,
                             batch_size=self.config.batch_size)
