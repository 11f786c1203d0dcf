"""Gradient difference (GradDiff).

Liu et al. 2022, *Continual Learning and Private Unlearning*; the TOFU baseline "grad_diff".

    L(θ) = −E_{D_f} ℓ(x, y) + α · E_{D_r} ℓ(x, y)

Gradient ascent on the forget set, gradient descent on the retain set. Default α = 1.

Paper defaults (TOFU's `grad_diff` baseline on Llama-2-7B; open-unlearning's `GradDiff` with
γ = α = 1): lr 1e-5, 5 epochs, batch 4 × 4 accumulation steps per device, weight decay 0.01, one
epoch of linear warm-up (`warmup_epochs=1`), then linear decay. The defaults here are the shared
world ones (`FinetuneConfig`).
"""

from __future__ import annotations

from pydantic import Field

from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.train.losses import answer_nll


class GradDiffConfig(FinetuneConfig):
    alpha: float = Field(1.0, description="weight α of the retain NLL term", ge=0)


class GradDiff(FinetuneMethod):
    name = "graddiff"
    paper = "Liu et al. 2022, Continual Learning and Private Unlearning"
    accepts_text = True
    summary = "ascend the forget NLL, descend the retain NLL"
    Config = GradDiffConfig
    uses_retain = True

    def compute_loss(self, model, batch) -> LossOutput:
        forget_nll = answer_nll(model, batch.forget).mean()
        retain_nll = answer_nll(model, batch.retain).mean()
        loss = -forget_nll + self.config.alpha * retain_nll
        return LossOutput(loss, {"forget_nll": float(forget_nll.detach()), "retain_nll": float(retain_nll.detach())})
