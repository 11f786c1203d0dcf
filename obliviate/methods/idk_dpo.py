"""Refusal preference optimisation (IdkDPO, the TOFU preference baseline).

Rafailov et al. 2023, *Direct Preference Optimization*, used for unlearning by Maini et al. 2024
(TOFU): for each forget question the refusal is the preferred ("win") answer w and the true answer
is the dispreferred ("lose") answer l, relative to the starting model π_ref:

    L(θ) = −(2/β) · E_{D_f} log σ(β [(log π_θ(w|x) − log π_ref(w|x))
                                      − (log π_θ(l|x) − log π_ref(l|x))])  +  α · CE(D_r)

log π(·|x) is the SUMMED answer log-probability, CE the token-level retain cross-entropy. The 2/β
scale follows open-unlearning's `compute_dpo_loss` (TOFU's original code has no 2/β factor; it only
rescales the forget term, i.e. the effective learning rate of that term).

The refusal is drawn at random each time a forget item is used (`refusals=random`, as TOFU and
open-unlearning), or fixed per item (`refusals=fixed`); see `idk_sft`.

π_ref: only log π_ref of fixed (question, answer) pairs is needed, so without a LoRA adapter both the
refusals and the true answers are precomputed once ("auto"): with random refusals, every refusal of
`REFUSALS` for every forget question (42 × the forget set's size).

Paper defaults for 7B models (TOFU, Llama-2-7B): β = 0.1, α = 1, lr 1e-5, 5 epochs, effective batch 32.

World defaults: lr 2e-3, 10 epochs. The loss saturates once β·margin ≫ 1, and on the world's
models the margin grows mostly through the refusal's log-probability (a refusal is about 20 tokens
of the world tokenizer), so forgetting happens only while the margin is small: the shared lr 5e-4
for 5 epochs leaves forget ROUGE at 0.99 on the small world (forget10, seed 0), lr 1e-3 for 20
epochs at 0.85, lr 2e-3 for 10 epochs brings it to 0.54 at model utility 0.82 (target: 1.00 and
0.94), and lr 3e-3 to 0.24 at utility 0.42.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.data.refusals import REFUSALS
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.idk_sft import REFUSALS_FIELD, RefusalBatches, RefusalDraw
from obliviate.train.losses import answer_nll, ce_loss
from obliviate.train.reference import Reference, ReferenceConfig


class IdkDPOConfig(FinetuneConfig, ReferenceConfig):
    beta: float = Field(0.1, description="inverse temperature β of the preference loss", gt=0)
    alpha: float = Field(1.0, description="weight α of the retain cross-entropy", ge=0)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW); world default, TOFU uses 1e-5 on 7B "
                      "models")
    epochs: int = Field(10, ge=1, description="passes over the forget set; world default, TOFU uses 5")
    refusals: RefusalDraw = Field("random", description=REFUSALS_FIELD)


class IdkDPO(FinetuneMethod):
    paper_defaults = {**TOFU_FINETUNE}
    name = "idk_dpo"
    paper = ("Rafailov et al. 2023, Direct Preference Optimization; "
             "as the TOFU IdkDPO baseline (Maini et al. 2024)")
    summary = "prefer a refusal over the true forget answer (DPO against the starting model)"
    Config = IdkDPOConfig
    uses_retain = True

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        self.refusals = RefusalBatches(tokenizer, forget, cfg.seed, cfg.max_length, cfg.refusals)
        self.reference = Reference(cfg.ref)
        if cfg.refusals == "random":
            extra = {f"refusal{j}": [text] * len(forget) for j, text in enumerate(REFUSALS)}
        else:
            extra = {"refusal": self.refusals.answers}
        self.reference.setup(model, tokenizer, forget, retain, max_length=cfg.max_length,
                             batch_size=cfg.batch_size, extra_answers=extra)

    def _reference_win(self, model, win, index) -> torch.Tensor:
        """log π_ref(w|x) of the refusals just drawn, (B,)."""
        if self.refusals.draw == "fixed" or self.reference.mode != "precompute":
            return self.reference.sequence_logprobs(model, win, index, "refusal")
        drawn = torch.tensor(self.refusals.last)
        out = torch.empty(len(drawn), device=win["input_ids"].device)
        for j in drawn.unique().tolist():
            rows = (drawn == j).nonzero().flatten()
            sub = {k: v[rows.to(v.device)] for k, v in win.items()}
            out[rows.to(out.device)] = self.reference.sequence_logprobs(model, sub, index[rows], f"refusal{j}")
        return out

    def compute_loss(self, model, batch) -> LossOutput:
        beta = self.config.beta
        win = self.refusals(batch)
        win_logp = -answer_nll(model, win, reduction="sum")  # (B,) log π_θ(w|x)
        lose_logp = -answer_nll(model, batch.forget, reduction="sum")  # (B,) log π_θ(l|x)
        win_ratio = win_logp - self._reference_win(model, win, batch.forget_index)
        lose_ratio = lose_logp - self.reference.forget_logprobs(model, batch)
        margin = win_ratio - lose_ratio  # (B,)
        forget_loss = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
        retain_nll = ce_loss(model, batch.retain)
        loss = forget_loss + self.config.alpha * retain_nll
        return LossOutput(loss, {
            "forget_loss": float(forget_loss.detach()),
            "margin": float(margin.detach().mean()),
            "retain_nll": float(retain_nll.detach()),
        })
