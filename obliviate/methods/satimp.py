"""SatImp: gradient ascent reweighted by saturation and importance.

Yang et al. 2025, *Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning* (ICML 2025).
Two criteria weight each answer token's ascent: *saturation* (tokens the model still predicts well
need more push, p^β₁, as in WGA) and *importance* (tokens not yet forgotten matter, (1 − p)^β₂,
which damps the tokens that are certain, such as template words the model knows from everywhere):

    w_t = sg(p_t)^β₁ · (1 − sg(p_t))^β₂,     p_t = p_θ(y_t | x, y_<t)
    L(θ) = γ · mean_t [ w_t · log p_t ]  +  α · L_retain

The mean runs over the answer tokens of the forget batch (token level); sg is stop-gradient.
β₂ = 0 is WGA. L_retain is "gd" (retain cross-entropy), "kl" or "none" (see `retain_term.py`).

Defaults of open-unlearning's `SatImp.yaml` (read at d3d7cf9), for 7B-scale models: β₁ = 5,
β₂ = 1, γ = 0.1, α = 1 with the retain cross-entropy, lr 1e-5, 5 epochs, effective batch 32 (the
trainer class's own defaults, γ = 1 and α = 0.1, are overridden by that file).

World defaults: γ = 1, lr 2e-3, 10 epochs. With β₁ = 5 the weight p⁵(1 − p) of a memorised token
(p ≈ 0.98) is about 0.02, so the ascent starts very slowly on a model that has memorised its data,
as the world's target has. On the tiny world (forget10, seed 0) open-unlearning's γ = 0.1 at lr 1e-3
leaves the forget answer probability at 0.88 after 5 epochs and 0.68 after 10; γ = 1 at lr 2e-3 for
10 epochs takes it from 0.98 to 0.19 with the retain probability at 0.92 (target 0.98).
"""

from __future__ import annotations

import torch
from pydantic import Field

from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.wga import WGA, WGAConfig


class SatImpConfig(WGAConfig):
    beta: float = Field(5.0, ge=0, description="β₁: saturation exponent, the weight grows as p^β₁")
    beta2: float = Field(1.0, ge=0, description="β₂: importance exponent, the weight grows as (1 − p)^β₂")
    gamma: float = Field(1.0, ge=0, description="weight γ of the forget term; world default, open-unlearning "
                         "uses 0.1")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW); world default, open-unlearning uses "
                      "1e-5 on 7B-scale models")
    epochs: int = Field(10, ge=1, description="passes over the forget set; world default, open-unlearning uses 5")


class SatImp(WGA):
    paper_defaults = {**TOFU_FINETUNE, "gamma": 0.1}
    name = "satimp"
    paper = "Yang et al. 2025, Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning (SatImp)"
    summary = "gradient ascent on forget tokens weighted by p^β₁ (1 − p)^β₂ (saturation and importance)"
    Config = SatImpConfig

    def weight(self, p: torch.Tensor) -> torch.Tensor:
        return p ** self.config.beta * (1 - p) ** self.config.beta2
