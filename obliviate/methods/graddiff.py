"""Gradient difference (GradDiff).

Liu et al. 2022, *Continual Learning and Private Unlearning*; the TOFU baseline "grad_diff".

    L(θ) = −E_{D_f} ℓ(x, y) + α · E_{D_r} ℓ(x, y)

Gradient ascent on the forget set, gradient descent on the retain set. Default α = 1. ℓ is the
mean answer NLL of an item (a mean of per-answer means, for both terms).

`retain_loss` (open-unlearning's `retain_loss_type`): "gd" (the default, the formula above), "kl"
(α · KL(π_ref ‖ π_θ) over the retain answer tokens, against the starting model, as `kl.py`; this is the
TOFU KL baseline) or "none" (gradient ascent alone). See `retain_term.py`.

Paper defaults (TOFU's `grad_diff` baseline on Llama-2-7B; open-unlearning's `GradDiff` with
γ = α = 1): lr 1e-5, 5 epochs, batch 4 × 4 accumulation steps per device, weight decay 0.01, one
epoch of linear warm-up (`warmup_epochs=1`), then linear decay. The defaults here are the shared
world ones (`FinetuneConfig`).
"""

from __future__ import annotations

import torch
from pydantic import Field

from obliviate.methods.base import FinetuneConfig, LossOutput
from obliviate.methods.retain_term import RetainConfig, RetainTermMethod, add_retain
from obliviate.train.losses import answer_nll
from obliviate.train.reference import ReferenceConfig


def mean_answer_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean over the batch of each item's mean answer NLL (scalar)."""
    return answer_nll(model, batch).mean()


class GradDiffConfig(FinetuneConfig, RetainConfig, ReferenceConfig):
    alpha: float = Field(1.0, description="weight α of the retain term", ge=0)


class GradDiff(RetainTermMethod):
    name = "graddiff"
    paper = "Liu et al. 2022, Continual Learning and Private Unlearning"
    accepts_text = True
    summary = "ascend the forget NLL, descend the retain NLL"
    Config = GradDiffConfig

    def compute_loss(self, model, batch) -> LossOutput:
        forget_nll = mean_answer_nll(model, batch.forget)
        logs = {"forget_nll": float(forget_nll.detach())}
        loss = add_retain(-forget_nll, logs, model, batch.retain, self.config, self.reference, nll=mean_answer_nll)
        return LossOutput(loss, logs)
