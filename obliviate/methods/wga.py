"""Weighted gradient ascent (WGA).

Wang et al. 2025, *Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond*
(ICLR 2025). Gradient ascent spends most of its push on tokens the model already finds unlikely;
WGA weights each answer token's ascent by the model's own (detached) probability of it, so the
push goes to the tokens that are still remembered and fades once a token is forgotten:

    w_t = sg(p_θ(y_t | x, y_<t))^β
    L(θ) = γ · mean_t [ w_t · log p_θ(y_t | x, y_<t) ]  +  α · L_retain

The mean runs over the answer tokens of the forget batch (token level, as open-unlearning does);
sg is stop-gradient. β = 0 is plain (token-level) gradient ascent. L_retain is "gd" (retain
cross-entropy), "kl" or "none" (see `retain_term.py`).

Defaults of open-unlearning's `WGA.yaml` (read at d3d7cf9), for 7B-scale models: β = 1, γ = 1,
α = 1 with the retain cross-entropy, lr 1e-5, 5 epochs, effective batch 32, no weight decay.

World defaults: the shared lr 5e-4 and 5 epochs. On the tiny world (forget10, seed 0) they take the
forget answer probability from 0.98 to 0.15 with the retain probability at 0.95 (target 0.98);
lr 1e-3 reaches 0.03 forget at 0.91 retain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from obliviate.methods.base import FinetuneConfig, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.retain_term import RetainConfig, RetainTermMethod, add_retain
from obliviate.train.losses import token_logprobs
from obliviate.train.reference import ReferenceConfig


def weighted_ascent(model, batch: dict[str, torch.Tensor],
                    weight: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_t weight(sg p_t) · log p_t over the batch's answer tokens, and the mean weight (both scalars).

    `weight` maps the detached token probabilities (N,) to their weights (N,).
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp, mask = token_logprobs(out.logits, batch["labels"])  # (B, T-1) each
    logp = logp[mask]  # (N,) log p_t of the answer tokens
    w = weight(logp.detach().exp())
    return (w * logp).mean(), w.mean()


class WGAConfig(FinetuneConfig, RetainConfig, ReferenceConfig):
    beta: float = Field(1.0, ge=0, description="β: each forget token's ascent is weighted by p^β (0: plain ascent)")
    gamma: float = Field(1.0, ge=0, description="weight γ of the forget term")


class WGA(RetainTermMethod):
    paper_defaults = {**TOFU_FINETUNE}
    name = "wga"
    paper = ("Wang et al. 2025, Rethinking LLM Unlearning Objectives: "
             "A Gradient Perspective and Go Beyond (weighted gradient ascent)")
    accepts_text = True
    summary = "gradient ascent on forget tokens weighted by their own probability p^β"
    Config = WGAConfig

    def weight(self, p: torch.Tensor) -> torch.Tensor:
        """The weight of each forget token, from its detached probability p (N,)."""
        return p ** self.config.beta

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        forget_loss, mean_weight = weighted_ascent(model, batch.forget, self.weight)
        logs = {"forget_loss": float(forget_loss.detach()), "weight": float(mean_weight)}
        loss = add_retain(cfg.gamma * forget_loss, logs, model, batch.retain, cfg, self.reference)
        return LossOutput(loss, logs)
