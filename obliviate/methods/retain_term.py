"""The retain term shared by open-unlearning's newer losses (UNDIAL, WGA, SatImp, PDU, AltPO).

open-unlearning's `GradDiff.compute_retain_loss` offers two retain terms, chosen by
`retain_loss_type`; the methods built on it keep the choice, and so do they here:

- "gd": the token-level cross-entropy on the retain answers (open-unlearning's "NLL");
- "kl": KL(π_ref ‖ π_θ) over the retain answer tokens, against the starting model (as in `kl.py`;
  open-unlearning averages over every position of the padded batch instead);
- "none": no retain term.

`RetainConfig` adds the two fields to a method's config; `RetainTerm` holds the reference model the
KL needs and computes the weighted term with its log entry.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from obliviate.config import StrictConfig
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
