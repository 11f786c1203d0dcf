"""Cross-entropy unlearning (CE-U).

Yang 2025, *CE-U: Cross Entropy Unlearning* (arXiv 2503.01224). At each answer position the model is
trained towards its own current next-token distribution with the true token removed: the target
takes the detached logits, sets the true token's logit to −∞ and renormalises, so the mass of the
forgotten token is spread over the other tokens in proportion to what the model already believes:

    q_t = softmax(sg(z_t) with z_t,y_t = −∞)                   (V,) at answer position t
    L(θ) = mean_{t ∉ first n} [ −Σ_v q_t,v · log p_θ(v | x, y_<t) ]

z_t are the model's logits where it predicts answer token y_t; sg is stop-gradient. Gradient
ascent's loss has no minimum (its logit gradient, p − e_y, never vanishes); CE-U's logit gradient,
p − q, vanishes once p(y_t) = 0 with the other tokens in their old proportions, so on the paper's
models it needs no retain term to stay stable. The first n answer tokens of each answer are left out
of the loss (a footnote to the paper's training settings; n = 1).

Defaults of open-unlearning's `CEU.yaml` and its community run script (read at d3d7cf9), for 7B-scale
models: n = 1, no retain term, lr 1e-5, effective batch 32 (16 × 2), 10 epochs, no weight decay.

Differs from the reference: a retain term ("gd", "kl" or "none", see `retain_term.py`) is available,
and on by default for the world (retain cross-entropy, α = 1), because on the world's small models
CE-U alone does not stay on the forget set: the forget people share their question templates and
attribute vocabulary with everyone else, so suppressing their answer tokens suppresses the retain
answers as much. On the tiny world (forget10, seed 0), without a retain term, lr 1e-4 takes the
forget answer probability from 0.98 to 0.59 and the retain one from 0.98 to 0.69 (lr 5e-4: 0.00 and
0.05). Set retain_loss=none for the paper's method.

World defaults: retain cross-entropy with α = 1, lr 1e-3, 5 epochs: forget answer probability 0.03,
retain 0.94 (lr 5e-4: 0.08 and 0.90; a KL retain term does as well as the cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.methods.base import FinetuneConfig, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.retain_term import RetainConfig, RetainTermMethod, add_retain
from obliviate.train.data import IGNORE
from obliviate.train.reference import ReferenceConfig


def drop_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    """`labels` with the first `n` answer tokens of each row set to IGNORE (B, T)."""
    answer = labels != IGNORE
    first = answer & (answer.long().cumsum(dim=1) <= n)
    return labels.masked_fill(first, IGNORE)


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of the cross-entropy to the true-token-removed target (scalar).

    logits (B, T, V), labels (B, T) with IGNORE off the scored answer tokens.
    """
    mask = labels[:, 1:] != IGNORE  # (B, T-1): positions that predict a scored answer token
    z = logits[:, :-1][mask].float()  # (N, V)
    tokens = labels[:, 1:][mask]  # (N,)
    target_logits = z.detach().clone()
    target_logits[torch.arange(len(tokens), device=z.device), tokens] = float("-inf")
    target = F.softmax(target_logits, dim=-1)  # (N, V), 0 on the true token
    return -(target * F.log_softmax(z, dim=-1)).sum(-1).sum() / mask.sum().clamp(min=1)


class CEUConfig(FinetuneConfig, RetainConfig, ReferenceConfig):
    ignore_first_n: int = Field(1, ge=0, description="leave the first n answer tokens of each answer out of the "
                                "loss (the paper's n = 1)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW); world default, open-unlearning uses "
                      "1e-5 on 7B-scale models")


class CEU(RetainTermMethod):
    paper_defaults = {**TOFU_FINETUNE, "epochs": 10, "warmup_ratio": 0.1, "retain_loss": "none"}
    name = "ceu"
    paper = "Yang 2025, CE-U: Cross Entropy Unlearning"
    accepts_text = True
    summary = "cross-entropy towards the model's own distribution with the true token removed"
    Config = CEUConfig

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        forget = batch.forget
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        forget_loss = ceu_loss(logits, drop_first_answer_tokens(forget["labels"], cfg.ignore_first_n))
        logs = {"forget_loss": float(forget_loss.detach())}
        loss = add_retain(forget_loss, logs, model, batch.retain, cfg, self.reference)
        return LossOutput(loss, logs)
