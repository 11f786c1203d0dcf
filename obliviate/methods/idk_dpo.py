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

**Alternate answers** (`preferred=alternate`): the preferred answer w is a plausible wrong answer
instead of a refusal, as open-unlearning's DPO trainer on an alternate-answer data set (AltPO's data,
Mekala et al. 2025). Each forget item gets k = `n_alternates` alternates from `alternates` (pool,
perturbed or a column of the forget file, see `altpo.py`), and each use of the item draws one of
them at random, as open-unlearning's data set yields one (question, alternate) row at a time. `altpo`
instead averages the loss over all k alternates in one step. A run with alternates is reported as the
labelled variant `idk_dpo+alt` (also `--method idk_dpo+alt`).

`retain_loss` (open-unlearning's `retain_loss_type`): "gd" (the default, CE above), "kl" (α ·
KL(π_ref ‖ π_θ) over the retain answer tokens; π_ref is then a copy, or the adapter switched off) or
"none". See `retain_term.py`.

Paper defaults for 7B models (TOFU, Llama-2-7B): β = 0.1, α = 1, lr 1e-5, 5 epochs, effective batch 32.

World defaults: lr 2e-3, 10 epochs. The loss saturates once β·margin ≫ 1, and on the world's
models the margin grows mostly through the refusal's log-probability (a refusal is about 20 tokens
of the world tokenizer), so forgetting happens only while the margin is small: the shared lr 5e-4
for 5 epochs leaves forget ROUGE at 0.99 on the small world (forget10, seed 0), lr 1e-3 for 20
epochs at 0.85, lr 2e-3 for 10 epochs brings it to 0.54 at model utility 0.82 (target: 1.00 and
0.94), and lr 3e-3 to 0.24 at utility 0.42.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.data.refusals import REFUSALS
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.altpo import ALTERNATES_FIELD, AlternateBatches, AlternateSource, make_alternates
from obliviate.methods.base import FinetuneConfig, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.idk_sft import REFUSALS_FIELD, RefusalBatches, RefusalDraw
from obliviate.methods.retain_term import RetainConfig, RetainTermMethod, add_retain
from obliviate.train.data import UnlearnBatch, collate
from obliviate.train.losses import answer_nll
from obliviate.train.reference import Reference, ReferenceConfig


class AlternateDraws:
    """The forget questions paired with one of their k alternates each, drawn per row from torch's RNG on
    every call (`last`: the alternates drawn), batched like the forget batch."""

    draw = "random"

    def __init__(self, tokenizer, forget: Sequence[QAItem], alternates: list[list[str]],
                 max_length: int | None) -> None:
        self.batches = AlternateBatches(tokenizer, forget, alternates, max_length)
        self.last: list[int] = []

    def __call__(self, batch: UnlearnBatch) -> dict[str, torch.Tensor]:
        if batch.forget_index is None:
            raise ConfigError("idk_dpo needs the forget-set positions of each batch (batch.forget_index)")
        index = [int(i) for i in batch.forget_index]
        self.last = torch.randint(self.batches.k, (len(index),)).tolist()
        out = collate([self.batches.encoded[j][i] for i, j in zip(index, self.last, strict=True)],
                      self.batches.pad_id)
        return {k: v.to(batch.forget["input_ids"].device) for k, v in out.items()}


class IdkDPOConfig(FinetuneConfig, RetainConfig, ReferenceConfig):
    beta: float = Field(0.1, description="inverse temperature β of the preference loss", gt=0)
    alpha: float = Field(1.0, description="weight α of the retain term", ge=0)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW); world default, TOFU uses 1e-5 on 7B "
                      "models")
    epochs: int = Field(10, ge=1, description="passes over the forget set; world default, TOFU uses 5")
    refusals: RefusalDraw = Field("random", description=REFUSALS_FIELD)
    preferred: Literal["refusal", "alternate"] = Field(
        "refusal", description="the preferred answer: a refusal (IdkDPO) or a plausible alternate answer")
    alternates: AlternateSource = Field("pool", description=ALTERNATES_FIELD + " (preferred=alternate)")
    n_alternates: int = Field(5, ge=1, description="k, alternates per forget question, one drawn per use "
                              "(preferred=alternate; AltPO's data has 5)")
    alternate_column: str = Field("alternate", description="the forget file's column of alternates "
                                  "(alternates=column)")


class IdkDPO(RetainTermMethod):
    paper_defaults = {**TOFU_FINETUNE}
    name = "idk_dpo"
    paper = ("Rafailov et al. 2023, Direct Preference Optimization; "
             "as the TOFU IdkDPO baseline (Maini et al. 2024)")
    summary = "prefer a refusal over the true forget answer (DPO against the starting model)"
    Config = IdkDPOConfig
    variants = {"alt": {"preferred": "alternate"}}  # alternate answers instead of refusals: `idk_dpo+alt`

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        if cfg.preferred == "alternate":
            alternates = make_alternates(cfg.alternates, forget, retain, cfg.n_alternates, cfg.seed,
                                         cfg.alternate_column)
            self.alternates = AlternateDraws(tokenizer, forget, alternates, cfg.max_length)
            self.preferred, self.answer_set = self.alternates, "alt"
            extra = {f"alt{j}": answers for j, answers in enumerate(self.alternates.batches.answers)}
        else:
            self.refusals = RefusalBatches(tokenizer, forget, cfg.seed, cfg.max_length, cfg.refusals)
            self.preferred, self.answer_set = self.refusals, "refusal"
            if cfg.refusals == "random":
                extra = {f"refusal{j}": [text] * len(forget) for j, text in enumerate(REFUSALS)}
            else:
                extra = {"refusal": self.refusals.answers}
        self.reference = Reference(cfg.ref, needs_logits=cfg.retain_loss == "kl")
        self.reference.setup(model, tokenizer, forget, retain, max_length=cfg.max_length,
                             batch_size=cfg.batch_size, extra_answers=extra)

    def _reference_win(self, model, win, index) -> torch.Tensor:
        """log π_ref(w|x) of the preferred answers just drawn, (B,)."""
        if self.preferred.draw == "fixed" or self.reference.mode != "precompute":
            return self.reference.sequence_logprobs(model, win, index, self.answer_set)
        drawn = torch.tensor(self.preferred.last)
        out = torch.empty(len(drawn), device=win["input_ids"].device)
        for j in drawn.unique().tolist():
            rows = (drawn == j).nonzero().flatten()
            sub = {k: v[rows.to(v.device)] for k, v in win.items()}
            out[rows.to(out.device)] = self.reference.sequence_logprobs(model, sub, index[rows],
                                                                        f"{self.answer_set}{j}")
        return out

    def compute_loss(self, model, batch) -> LossOutput:
        beta = self.config.beta
        win = self.preferred(batch)
        win_logp = -answer_nll(model, win, reduction="sum")  # (B,) log π_θ(w|x)
        lose_logp = -answer_nll(model, batch.forget, reduction="sum")  # (B,) log π_θ(l|x)
        win_ratio = win_logp - self._reference_win(model, win, batch.forget_index)
        lose_ratio = lose_logp - self.reference.forget_logprobs(model, batch)
        margin = win_ratio - lose_ratio  # (B,)
        forget_loss = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
        logs = {"forget_loss": float(forget_loss.detach()), "margin": float(margin.detach().mean())}
        loss = add_retain(forget_loss, logs, model, batch.retain, self.config, self.reference)
        return LossOutput(loss, logs)
