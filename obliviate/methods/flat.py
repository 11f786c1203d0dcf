"""FLAT: loss adjustment with only forget data.

Wang et al. 2025 (ICLR), *LLM Unlearning via Loss Adjustment with Only Forget Data*. No retain data
and no reference model: for each forget question, a template answer (a refusal) is the "good"
response and the forget answer the "bad" one, and the f-divergence between the two is maximised in
its variational form, which gives the loss

    L(θ) = −( g(P̄_good) − f*(g(P̄_bad)) )

where P̄ is the answer-token probability π_θ(y_t | x, y_<t), averaged over the answer tokens of each
item and then over the batch, g is the divergence's variational activation and f* its convex
conjugate (the authors' code, `get_contrastive_loss`):

    divergence        g(v)                 f*(g(v))
    kl                v                    exp(v − 1)
    pearson           v                    v²/4 + v
    total_variation   tanh(v)/2            tanh(v)/2
    jensen_shannon    log 2 − softplus(−v) softplus(v) − log 2

Minimising L raises P̄_good and lowers P̄_bad, each with a weight set by the divergence. The authors'
code averages the token probabilities over every position of the padded batch (prompt and padding
count as zeros), which makes the scale depend on padding; here the average is over answer tokens.

Defaults: KL. Paper defaults for 7B models (TOFU, Llama-2-7B, the authors' config): lr 1e-5,
5 epochs, batch 16 × 4 accumulation, weight decay 0.01 (Harry Potter: lr 2e-7); that config's
divergence is total variation.

World default: lr 2.25e-4 (5 epochs). With forget data only, nothing holds the rest of the model in
place and the step size decides between forgetting and collapse: on the small world (forget10,
seed 0) lr 2e-4 / 2.25e-4 / 2.5e-4 / 3e-4 give forget ROUGE 0.22 / 0.13 / 0.07 / 0.06 at model
utility 0.87 / 0.82 / 0.74 / 0.43, and the shared lr 5e-4 utility 0 (target: 1.00 and 0.94).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.idk_sft import RefusalBatches
from obliviate.train.losses import token_logprobs

_LOG2 = math.log(2.0)

# divergence -> (g, f* ∘ g)
DIVERGENCES = {
    "kl": (lambda v: v, lambda v: torch.exp(v - 1.0)),
    "pearson": (lambda v: v, lambda v: v * v / 4.0 + v),
    "total_variation": (lambda v: torch.tanh(v) / 2.0, lambda v: torch.tanh(v) / 2.0),
    "jensen_shannon": (lambda v: _LOG2 - F.softplus(-v), lambda v: F.softplus(v) - _LOG2),
}


def mean_answer_prob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Answer-token probability averaged over each item's answer tokens, (B,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp, mask = token_logprobs(logits, batch["labels"])  # (B, T-1)
    return (logp.exp() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class FLATConfig(FinetuneConfig):
    lr: float = Field(2.25e-4, gt=0, description="peak learning rate (AdamW); world default, the authors use "
                      "1e-5 on 7B models")
    divergence: Literal["kl", "pearson", "total_variation", "jensen_shannon"] = Field(
        "kl", description="the f-divergence whose variational form gives the loss"
    )


class FLAT(FinetuneMethod):
    paper_defaults = {**TOFU_FINETUNE, "batch_size": 16, "divergence": "total_variation"}
    name = "flat"
    paper = "Wang et al. 2025, LLM Unlearning via Loss Adjustment with Only Forget Data (FLAT)"
    summary = "maximise an f-divergence between refusal and forget answers; forget data only"
    Config = FLATConfig
    uses_retain = False

    def setup(self, model, tokenizer, forget, retain) -> None:
        self.refusals = RefusalBatches(tokenizer, forget, self.config.seed, self.config.max_length)

    def compute_loss(self, model, batch) -> LossOutput:
        g, conj = DIVERGENCES[self.config.divergence]
        p_good = mean_answer_prob(model, self.refusals(batch)).mean()
        p_bad = mean_answer_prob(model, batch.forget).mean()
        loss = -(g(p_good) - conj(p_bad))
        return LossOutput(loss, {"p_good": float(p_good.detach()), "p_bad": float(p_bad.detach())})
