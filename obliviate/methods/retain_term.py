"""The retain term shared by GradDiff, SimNPO, IdkDPO and open-unlearning's newer losses.

open-unlearning's `GradDiff.compute_retain_loss` offers two retain terms, chosen by
`retain_loss_type`; the methods built on it keep the choice, and so do they here:

- "gd": the token-level cross-entropy on the retain answers (open-unlearning's "NLL");
- "kl": KL(π_ref ‖ π_θ) over the retain answer tokens, against the starting model (as in `kl.py`;
  open-unlearning averages over every position of the padded batch instead);
- "none": no retain term.

`RetainConfig` adds the two fields to a method's config (`RetainKindConfig` only the first, for a method
whose weight has another name, such as SimNPO's `gd_coeff`); `RetainTermMethod` is the base of the
methods that carry it (it reads retain batches only when the term is on, and holds the reference model
the KL needs); `add_retain` adds the weighted term with its log entry. "gd" is the token-level
cross-entropy unless the method passes its own `nll` (GradDiff keeps its mean of per-answer means).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from obliviate.config import StrictConfig
from obliviate.methods.base import FinetuneMethod
from obliviate.methods.kl import retain_kl
from obliviate.train.losses import ce_loss
from obliviate.train.reference import Reference

RetainLoss = Literal["none", "gd", "kl"]
RETAIN_LOSS_FIELD = "retain term: none, gd (cross-entropy on retain answers) or kl (KL to the starting model)"
Nll = Callable[[object, dict[str, torch.Tensor]], torch.Tensor]


class RetainKindConfig(StrictConfig):
    """Mixin: the kind of a method's retain term (open-unlearning's `retain_loss_type`); the subclass
    names its weight (`retain_weight`)."""

    retain_loss: RetainLoss = Field("gd", description=RETAIN_LOSS_FIELD)

    def retain_weight(self) -> float:
        raise NotImplementedError

    def uses_retain(self) -> bool:
        return self.retain_loss != "none" and self.retain_weight() > 0


class RetainConfig(RetainKindConfig):
    """Mixin: the retain term of a method (open-unlearning's `retain_loss_type` and `alpha`)."""

    alpha: float = Field(1.0, ge=0, description="weight α of the retain term")

    def retain_weight(self) -> float:
        return self.alpha


def retain_value(model, batch: dict[str, torch.Tensor] | None, kind: RetainLoss,
                 reference: Reference | None, nll: Nll = ce_loss) -> tuple[torch.Tensor | None, str]:
    """The unweighted retain term on `batch` and its log key ("retain_nll" or "retain_kl")."""
    if kind == "none" or batch is None:
        return None, ""
    if kind == "gd":
        return nll(model, batch), "retain_nll"
    if reference is None:
        raise RuntimeError("the KL retain term needs a reference model; call setup first")
    return retain_kl(model, reference, batch), "retain_kl"


def add_retain(loss: torch.Tensor, logs: dict[str, float], model, batch: dict[str, torch.Tensor] | None,
               cfg: RetainKindConfig, reference: Reference | None, nll: Nll = ce_loss) -> torch.Tensor:
    """`loss` + α · retain term (when the config has one); the term is logged unweighted."""
    if not cfg.uses_retain():
        return loss
    value, key = retain_value(model, batch, cfg.retain_loss, reference, nll)
    if value is None:
        return loss
    logs[key] = float(value.detach())
    return loss + cfg.retain_weight() * value


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
