"""UNDIAL: self-distillation with adjusted logits.

Dong et al. 2025, *UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
Language Models* (NAACL 2025). The student π_θ is distilled towards the frozen starting model π_ref
(the teacher), whose logits are lowered by β on the token to forget, so only that token loses mass
and the rest of the teacher's distribution is kept:

    q_t = softmax(z_ref,t − β · e_{y_t})                       (V,) at each answer position t
    L(θ) = γ · mean_t [ −Σ_v q_t,v · log π_θ(v | x, y_<t) ]  +  α · L_retain

z_ref,t are the teacher's logits where it predicts answer token y_t, e_{y_t} the one-hot of that
token; the mean runs over the answer positions of the batch. The target is a fixed function of the
teacher, so unlike gradient ascent the loss is bounded below and does not diverge. L_retain is
"gd" (retain cross-entropy), "kl" or "none" (see `retain_term.py`).

Defaults of open-unlearning's `UNDIAL.yaml` (read at d3d7cf9), for 7B-scale models: β = 10, γ = 1,
α = 0 (no retain term), lr 1e-4, 10 epochs, effective batch 32, no weight decay.

Differs from the reference: open-unlearning averages the distillation loss over every position of
the padded batch, and at prompt and padding positions its mask indexes the vocabulary with the label
-100, which lowers the logit of token V − 100 there; here the loss is over answer positions only,
because only the answer tokens are to be forgotten and the other positions would self-distil a
spurious target.

World defaults: lr 1e-3, 10 epochs, α = 1 (retain cross-entropy). On the tiny world (forget10,
seed 0) the forget answer probability falls from 0.98 to 0.16 and the retain one from 0.98 to 0.95;
lr 1e-4 stops at 0.73 forget; without the retain term (α = 0) the retain probability falls to 0.75.
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


def adjusted_targets(ref_logits: torch.Tensor, tokens: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL's soft labels: softmax of the teacher logits with β taken off each true token.

    ref_logits (N, V), tokens (N,) -> (N, V) probabilities.
    """
    adjusted = ref_logits.float().clone()
    adjusted[torch.arange(len(tokens), device=adjusted.device), tokens] -= beta
    return F.softmax(adjusted, dim=-1)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over answer positions of the cross-entropy from the adjusted teacher to the student (scalar).

    logits, ref_logits (B, T, V), labels (B, T) with IGNORE off the answer.
    """
    mask = labels[:, 1:] != IGNORE  # (B, T-1): positions that predict an answer token
    tokens = labels[:, 1:][mask]  # (N,)
    target = adjusted_targets(ref_logits[:, :-1][mask], tokens, beta)  # (N, V)
    logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)  # (N, V)
    return -(target * logp).sum(-1).sum() / mask.sum().clamp(min=1)


class UNDIALConfig(FinetuneConfig, RetainConfig, ReferenceConfig):
    beta: float = Field(10.0, gt=0, description="β: how far the teacher's logit of each forget token is lowered")
    gamma: float = Field(1.0, ge=0, description="weight γ of the forget (distillation) term")
    alpha: float = Field(1.0, ge=0, description="weight α of the retain term; world default, open-unlearning "
                         "uses 0 (no retain term)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW); world default, open-unlearning uses "
                      "1e-4 on 7B-scale models")
    epochs: int = Field(10, ge=1, description="passes over the forget set (open-unlearning also uses 10)")


class UNDIAL(RetainTermMethod):
    paper_defaults = {**TOFU_FINETUNE, "lr": 1e-4, "epochs": 10, "warmup_ratio": 0.1, "alpha": 0.0}
    name = "undial"
    paper = ("Dong et al. 2025, UNDIAL: Self-Distillation with Adjusted Logits "
             "for Robust Unlearning in Large Language Models")
    accepts_text = True
    summary = "distil from the starting model with the forget token's logit lowered by β"
    Config = UNDIALConfig

    def setup(self, model, tokenizer, forget, retain) -> None:
        self.setup_reference(model, tokenizer, forget, retain)  # the teacher: always needed

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        forget = batch.forget
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        ref_logits = self.reference.logits(model, forget).to(logits.device)
        forget_loss = undial_loss(logits, ref_logits, forget["labels"], cfg.beta)
        logs = {"forget_loss": float(forget_loss.detach())}
        loss = add_retain(cfg.gamma * forget_loss, logs, model, batch.retain, cfg, self.reference)
        return LossOutput(loss, logs)
