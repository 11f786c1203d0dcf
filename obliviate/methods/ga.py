"""Gradient ascent (GA).

Jang et al. 2023, *Knowledge Unlearning for Mitigating Privacy Risks in Language Models*;
the TOFU baseline (Maini et al. 2024).

    L(θ) = −E_{(x,y)∈D_f} ℓ(x, y)

where ℓ is the mean NLL of the answer tokens. Paper defaults for 7B models: lr 1e-5, 5 epochs.

World defaults: lr 4e-4, 3 epochs. Gradient ascent has no term that holds the rest of the model in
place, so its step budget sets how far it goes: on the small world (forget10, seed 0) the shared
fine-tuning defaults (lr 5e-4, 5 epochs) drive the forget NLL to 10 and model utility to 0, while
lr 4e-4 for 3 epochs gives forget ROUGE 0.20 at model utility 0.86 (target: 1.00 and 0.94).
"""

from __future__ import annotations

from pydantic import Field

from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.train.losses import answer_nll


class GAConfig(FinetuneConfig):
    lr: float = Field(4e-4, gt=0, description="peak learning rate (AdamW); world default, the paper uses "
                      "1e-5 on 7B models")
    epochs: int = Field(3, ge=1, description="passes over the forget set; world default, the paper uses 5")


class GradientAscent(FinetuneMethod):
    name = "ga"
    paper = "Jang et al. 2023, Knowledge Unlearning for Mitigating Privacy Risks in Language Models"
    accepts_text = True
    summary = "maximise the forget-set NLL"
    Config = GAConfig

    def compute_loss(self, model, batch) -> LossOutput:
        forget_nll = answer_nll(model, batch.forget).mean()
        return LossOutput(-forget_nll, {"forget_nll": float(forget_nll.detach())})
