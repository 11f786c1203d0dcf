"""SNAP: negative instructions, hard positives and a Wasserstein weight regulariser.

Choi et al. 2024, *SNAP: Unlearning Selective Knowledge in Large Language Models with Negative
Instructions* (code shared with Opt-Out, `brightjade/Opt-Out`: trainer.py, model.py).

1. Negative instructions: the forget questions are paired with obliterated responses, fluent
   refusals (`obliviate.data.refusals`), and the model is fine-tuned to give them.
2. Hard positives: questions about neighbouring entities keep their true answers. With
   `hard_positives=neighbours` (default) they are the retain items about *neighbours* of the forget
   subjects: subjects that share an answer with one (`neighbour_items`; on the built-in world exactly
   `World.neighbours`: siblings share a mother, co-authors a first book, or both a birth city). Each
   step adds the cross-entropy of a batch of them (one random hard positive per forget item, drawn
   from torch's RNG, which the loop checkpoints) to the retain term. When no retain item qualifies
   (items without subjects, say), or with `hard_positives=retain`, the retain set as passed in is
   the hard-positive set, as in the paper, whose retaining set is generated hard positives.
3. Sliced-Wasserstein regularisation of every trained weight matrix towards its initial value
   (`obliviate.train.swd`: K = 100 fresh unit Gaussian directions per call, p = 2, no root,
   1-D parameters as 1 × d, stacked expert tensors (E, n, d) as E matrices):

       L = CE(refusal | x_f) + CE(D_r) + CE(D_hp) + λ · Σ_W SWD(W₀, W),   λ = 0.1

Paper defaults (7B): lr 1e-5, 3 epochs. Cross-entropies are token-level means over answer tokens.
World default: 30 epochs at the shared lr 5e-4, as for IdkSFT (the world's models need many passes
to learn the refusals; see `idk_sft`). On the small world (forget10, seed 0): refusal rate 0.94 on
forget questions, forget ROUGE 0.01, model utility 0.66 (target 0.94).

Alternate updates (`alternate_updates=true`), as the reference: every batch takes two optimiser
steps, first on CE(refusal) alone, then on CE(D_r) + CE(D_hp) + λ·SWD (the loop's `pre_step_loss`
hook; the first step is not clipped and does not advance the schedule, as in the reference).
Differs from the reference: with gradient accumulation, the gradients accumulated for the second
step are set aside during the first, because the reference's inner step would apply and then
discard them.

The success measures of the paper's evaluation are here too: `refusal_rate(generations)` and
`ngram_entropy(texts, n)` (fluency: repetitive or collapsed generations have low n-gram entropy).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch
from pydantic import Field

from obliviate.data.refusals import REFUSALS
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.idk_sft import RefusalBatches
from obliviate.train.data import collate, encode_items
from obliviate.train.losses import ce_loss
from obliviate.train.swd import swd_penalty


class SNAPConfig(FinetuneConfig):
    epochs: int = Field(30, ge=1, description="passes over the forget set; world default, the paper uses 3")
    reg_lambda: float = Field(0.1, description="λ, weight of the sliced-Wasserstein regulariser", ge=0)
    n_projections: int = Field(100, description="K, random directions per weight matrix and call", ge=1)
    alternate_updates: bool = Field(False, description="alternate optimiser steps: refusal CE, then "
                                    "retain CE + regulariser")
    hard_positives: Literal["neighbours", "retain"] = Field(
        "neighbours", description="'neighbours': also train on the retain items about subjects sharing an "
        "answer with a forget subject; 'retain': the retain set alone is the hard-positive set")


class SNAP(FinetuneMethod):
    paper_defaults = {**TOFU_FINETUNE, "epochs": 3}
    name = "snap"
    paper = "Choi et al. 2024, SNAP: Unlearning Selective Knowledge in Large Language Models with Negative Instructions"
    summary = "refuse forget questions, keep neighbours' answers, stay Wasserstein-close to the initial weights"
    Config = SNAPConfig
    uses_retain = True

    def setup(self, model, tokenizer, forget, retain) -> None:
        if self.config.alternate_updates and not retain and self.config.reg_lambda == 0:
            raise ConfigError("snap: alternate_updates needs a retain set or reg_lambda > 0 for its second step")
        self.refusals = RefusalBatches(tokenizer, forget, self.config.seed, self.config.max_length)
        # (initial value, parameter): `swd_penalty` takes (W₀, W) pairs and differentiates only in W,
        # so the live parameter (the tensor the optimiser updates) must come second.
        self.initial = [(p.detach().clone(), p) for p in model.parameters() if p.requires_grad]
        hard = neighbour_items(forget, retain) if self.config.hard_positives == "neighbours" else []
        self.hard_positives, _ = encode_items(tokenizer, hard, max_length=self.config.max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _hard_positive_batch(self, batch) -> dict[str, torch.Tensor]:
        """One random hard positive per forget item (torch's global RNG: restored on resume)."""
        pick = torch.randint(len(self.hard_positives), (len(batch.forget["input_ids"]),))
        out = collate([self.hard_positives[int(i)] for i in pick], self.pad_id)
        device = batch.forget["input_ids"].device
        return {k: v.to(device) for k, v in out.items()}

    def pre_step_loss(self, model, batch) -> LossOutput | None:
        """With alternate updates: the first of the batch's two steps, CE(refusal) alone."""
        if not self.config.alternate_updates:
            return None
        refusal_ce = ce_loss(model, self.refusals(batch))
        return LossOutput(refusal_ce, {"refusal_nll": float(refusal_ce.detach())})

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        logs: dict[str, float] = {}
        loss = torch.zeros((), device=batch.forget["input_ids"].device)
        if not cfg.alternate_updates:
            refusal_ce = ce_loss(model, self.refusals(batch))
            loss = loss + refusal_ce
            logs["refusal_nll"] = float(refusal_ce.detach())
        if batch.retain is not None:
            retain_ce = ce_loss(model, batch.retain)
            loss = loss + retain_ce
            logs["retain_nll"] = float(retain_ce.detach())
        if self.hard_positives:
            hard_ce = ce_loss(model, self._hard_positive_batch(batch))
            loss = loss + hard_ce
            logs["hard_positive_nll"] = float(hard_ce.detach())
        if cfg.reg_lambda > 0:
            swd = swd_penalty(weight_matrices(self.initial), cfg.n_projections)
            loss = loss + cfg.reg_lambda * swd
            logs["swd"] = float(swd.detach())
        return LossOutput(loss, logs)


def neighbour_items(forget: Sequence[QAItem], retain: Sequence[QAItem]) -> list[QAItem]:
    """Retain items about the forget subjects' neighbours: subjects (not themselves forgotten) that share
    an answer with a forget subject, case aside. Items without a subject never count."""
    forget_subjects = {it.subject for it in forget if it.subject}
    forget_answers = {it.answer.strip().lower() for it in forget if it.subject}
    neighbours = {it.subject for it in retain
                  if it.subject and it.subject not in forget_subjects and it.answer.strip().lower() in forget_answers}
    return [it for it in retain if it.subject in neighbours]


def weight_matrices(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(W₀, W) per weight matrix: a stacked (E, n, d) tensor of MoE experts counts as E matrices."""
    for w0, w in pairs:
        if w.dim() > 2:
            yield from zip(w0.flatten(0, -3), w.flatten(0, -3), strict=True)
        else:
            yield w0, w


# -- success measures ------------------------------------------------------------------------------

def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def is_refusal(generation: str, refusals: Sequence[str] = REFUSALS, min_words: int = 3) -> bool:
    """Whether a generation gives one of `refusals` (case, punctuation and spacing ignored).

    It counts if it contains a whole refusal, or if it opens with the first `min_words` words of one
    (all of it for a shorter refusal): a refusal cut off by the generation length, or one whose later
    words a small model blends with another refusal ("I'm not able to answer that.").
    """
    gen = _normalise(generation)
    if not gen:
        return False
    words = gen.split()
    for refusal in refusals:
        ref = _normalise(refusal)
        opening = ref.split()[:min_words]
        if ref in gen or words[: len(opening)] == opening:
            return True
    return False


def refusal_rate(generations: Sequence[str], refusals: Sequence[str] = REFUSALS) -> float:
    """Fraction of generations that are refusals (see `is_refusal`); higher is better on forget questions."""
    if not generations:
        return float("nan")
    return sum(is_refusal(g, refusals) for g in generations) / len(generations)


def ngram_entropy(texts: Sequence[str], n: int = 2) -> float:
    """Mean over texts of the Shannon entropy (bits) of each text's word n-gram frequencies.

    Words are lower-cased whitespace tokens; a text with fewer than n words scores 0. Degenerate,
    repetitive generations ("the the the ...") score low; as in ROME's generation-entropy fluency
    measure, report n = 2 and n = 3.
    """
    if not texts:
        return float("nan")
    scores = []
    for text in texts:
        words = text.lower().split()
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        scores.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(scores) / len(scores)
