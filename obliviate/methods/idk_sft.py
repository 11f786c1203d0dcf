"""Refusal fine-tuning ("I don't know", the TOFU "idk" baseline).

Maini et al. 2024, *TOFU: A Task of Fictitious Unlearning for LLMs*: replace each forget answer by a
refusal and fine-tune on it, with plain fine-tuning on the retain set:

    L(θ) = CE(x_f, refusal) + α · CE(D_r)

Both terms are token-level cross-entropies over answer tokens. TOFU's code takes one cross-entropy
over the forget and retain batches concatenated (so the longer answers weigh more); two separate
means keep α meaningful. The refusal is drawn at random from `REFUSALS` each time a forget item is
used (`refusals=random`, the default), as TOFU's and open-unlearning's data sets draw one on every
access; `refusals=fixed` gives forget item i the one refusal `refusal_for(i, seed)`. The random
draws come from torch's RNG, which the loop checkpoints, so a resumed run draws the same ones.

Paper defaults for 7B models (TOFU, Llama-2-7B): lr 1e-5, 5 epochs, effective batch 32, α = 1.

World default: 30 epochs (at the shared lr 5e-4). A refusal is about 20 tokens of the world's
tokenizer and each forget question has its own, so the world's small models need many passes to
learn them: after the shared 5 epochs the refusal NLL is still 2.8 and greedy answers are broken
words, not refusals. On the small world (forget10, seed 0) 30 epochs give a refusal rate of 0.93 on
forget questions and forget ROUGE 0.01, at model utility 0.70 (target 0.94): the refusals spread
to the utility questions about places and things, which the retain set does not cover (lr 1e-3 for
20 epochs: utility 0.62).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from obliviate.data.refusals import REFUSALS, refusals_for
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.train.data import UnlearnBatch, collate, encode_items
from obliviate.train.losses import ce_loss

RefusalDraw = Literal["random", "fixed"]
REFUSALS_FIELD = ("'random': a refusal drawn at random on every use of a forget item, as TOFU and "
                  "open-unlearning; 'fixed': one refusal per forget item")


class RefusalBatches:
    """The forget questions paired with refusals, batched like the forget batch.

    The loop hands a method the forget batch with its positions in the forget set
    (`batch.forget_index`); the refusal batch holds the same questions, in the same order. With
    `draw="fixed"` item i always gets `refusal_for(i, seed)` (`answers`); with `draw="random"` each
    call draws one of `REFUSALS` per row from torch's RNG (`last`: the indices drawn). Encoded
    (item, refusal) pairs are cached.
    """

    def __init__(self, tokenizer, forget: Sequence[QAItem], seed: int, max_length: int | None,
                 draw: RefusalDraw = "fixed") -> None:
        self.draw = draw
        self.answers = refusals_for(len(forget), seed)
        self.forget, self.tokenizer, self.max_length = list(forget), tokenizer, max_length
        self.encoded, _ = encode_items(tokenizer, forget, max_length=max_length, answers=self.answers)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pairs: dict[tuple[int, int], object] = {}
        self.last: list[int] = []

    def _pair(self, i: int, j: int):
        if (i, j) not in self._pairs:
            self._pairs[(i, j)] = encode_items(self.tokenizer, [self.forget[i]], max_length=self.max_length,
                                               answers=[REFUSALS[j]])[0][0]
        return self._pairs[(i, j)]

    def __call__(self, batch: UnlearnBatch) -> dict[str, torch.Tensor]:
        if batch.forget_index is None:
            raise ConfigError("refusal methods need the forget-set positions of each batch "
                              "(batch.forget_index)")
        index = [int(i) for i in batch.forget_index]
        if self.draw == "random":
            self.last = torch.randint(len(REFUSALS), (len(index),)).tolist()
            out = collate([self._pair(i, j) for i, j in zip(index, self.last, strict=True)], self.pad_id)
        else:
            out = collate([self.encoded[i] for i in index], self.pad_id)
        device = batch.forget["input_ids"].device
        return {k: v.to(device) for k, v in out.items()}


class IdkSFTConfig(FinetuneConfig):
    alpha: float = Field(1.0, description="weight α of the retain cross-entropy", ge=0)
    epochs: int = Field(30, ge=1, description="passes over the forget set; world default, TOFU uses 5")
    refusals: RefusalDraw = Field("random", description=REFUSALS_FIELD)


class IdkSFT(FinetuneMethod):
    name = "idk_sft"
    paper = "Maini et al. 2024, TOFU: A Task of Fictitious Unlearning for LLMs (IdkSFT baseline)"
    summary = "fine-tune on refusals to the forget questions, and on the retain set"
    Config = IdkSFTConfig
    uses_retain = True

    def setup(self, model, tokenizer, forget, retain) -> None:
        self.refusals = RefusalBatches(tokenizer, forget, self.config.seed, self.config.max_length,
                                       self.config.refusals)

    def compute_loss(self, model, batch) -> LossOutput:
        refusal_nll = ce_loss(model, self.refusals(batch))
        retain_nll = ce_loss(model, batch.retain)
        loss = refusal_nll + self.config.alpha * retain_nll
        logs = {"refusal_nll": float(refusal_nll.detach()), "retain_nll": float(retain_nll.detach())}
        return LossOutput(loss, logs)
