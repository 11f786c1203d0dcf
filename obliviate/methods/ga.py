"""Gradient ascent (GA).

Jang et al. 2023, *Knowledge Unlearning for Mitigating Privacy Risks in Language Models*;
the TOFU baseline (Maini et al. 2024).

    L(θ) = −E_{(x,y)∈D_f} ℓ(x, y)

where ℓ is the mean NLL of the answer tokens. Paper defaults for 7B models: lr 1e-5, 5 epochs.
On the built-in world's tiny models a larger step is needed (FinetuneConfig defaults).
"""

from __future__ import annotations

from obliviate.methods.base import FinetuneMethod, LossOutput
from obliviate.train.losses import answer_nll


class GradientAscent(FinetuneMethod):
    name = "ga"
    paper = "Jang et al. 2023, Knowledge Unlearning for Mitigating Privacy Risks in Language Models"
    summary = "maximise the forget-set NLL"

    def compute_loss(self, model, batch) -> LossOutput:
        forget_nll = answer_nll(model, batch.forget).mean()
        return LossOutput(-forget_nll, {"forget_nll": float(forget_nll.detach())})
