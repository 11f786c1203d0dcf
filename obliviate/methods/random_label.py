"""Random-label fine-tuning.

Graves, Nagisetty & Ganesh 2021, *Amnesiac Machine Learning* (relabelling the forget data); the
"random label" baseline of SPUL (Bhaila, Van & Wu 2024), and the fine-tuning counterpart of ICUL's
label flipping in context (Pawelczyk, Neel & Lakkaraju 2024). Each forget item's answer (its
label) is replaced once by a label drawn uniformly from the *other* labels, and the model is
fine-tuned on the relabelled forget set:

    L(θ) = E_{(x, y) ∈ D_f} ℓ(x, ỹ),   ỹ ~ U(L \\ {y})

where ℓ is the token-level cross-entropy of the answer tokens (and EOS). The label set L is
`labels`, by default the distinct answers of the forget and retain items: the classes of a
labelled task given as QA items (`obliviate.world.reviews.as_qa_items`), or, on QA data, the other
answers of the data set. No retain term, as in SPUL's baseline. (SPUL's code draws the new labels
from {"neutral", "unknown"} instead: `labels=["neutral", "unknown"]`.)

Paper defaults (SPUL's `baselines.py`, `--unlearn_method random_label`): lr 1e-4, batch 32, 1 epoch,
weight decay 0.001, sequences of up to 1024 tokens. Defaults here are the shared fine-tuning ones
(FinetuneConfig), which suit the built-in world's tiny models.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from pydantic import Field

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.train.data import UnlearnBatch, collate, encode_items
from obliviate.train.losses import ce_loss


def random_other_labels(forget: Sequence[QAItem], labels: Sequence[str], seed: int) -> list[str]:
    """For each forget item, a label drawn uniformly from `labels` without its own answer."""
    rng = random.Random(seed)
    out = []
    for i, item in enumerate(forget):
        others = [y for y in labels if y != item.answer]
        if not others:
            raise ConfigError(f"random_label: forget item {i} has no other label to take "
                              f"(labels: {list(labels)}); set labels=[...]")
        out.append(rng.choice(others))
    return out


class RandomLabelConfig(FinetuneConfig):
    labels: list[str] | None = Field(
        None, description="the label set to draw from (default: the distinct answers of the forget and retain items)")


class RandomLabel(FinetuneMethod):
    name = "random_label"
    paper = ("Graves et al. 2021, Amnesiac Machine Learning; the random-label baseline of Bhaila et al. 2024 "
             "(SPUL)")
    summary = "fine-tune on the forget set with each label replaced by a random other label"
    Config = RandomLabelConfig

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        labels = cfg.labels if cfg.labels is not None else sorted({it.answer for it in [*forget, *retain]})
        self.answers = random_other_labels(forget, labels, cfg.seed)
        self.encoded, _ = encode_items(tokenizer, forget, max_length=cfg.max_length, answers=self.answers)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def relabelled(self, batch: UnlearnBatch) -> dict[str, torch.Tensor]:
        """The forget batch's questions with their random labels, in the batch's order."""
        if batch.forget_index is None:
            raise ConfigError("random_label needs the forget-set positions of each batch (batch.forget_index)")
        out = collate([self.encoded[int(i)] for i in batch.forget_index], self.pad_id)
        device = batch.forget["input_ids"].device
        return {k: v.to(device) for k, v in out.items()}

    def compute_loss(self, model, batch) -> LossOutput:
        nll = ce_loss(model, self.relabelled(batch))
        return LossOutput(nll, {"random_label_nll": float(nll.detach())})
