"""QA items -> padded (input_ids, attention_mask, labels) batches, and the forget/retain pairing.

Labels are -100 on prompt tokens and padding, so every loss is over answer tokens (and EOS) only.
The forget set anchors an epoch; each forget batch is paired with a retain batch drawn by a seeded
random sampler (as in open-unlearning's ForgetRetainDataset), so GradDiff-style methods see both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from obliviate.data.schema import QAItem
from obliviate.models.prompts import PromptFormat, encode_qa

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_items(
    tokenizer,
    items: Sequence[QAItem],
    fmt: PromptFormat | None = None,
    max_length: int | None = None,
    answers: Sequence[str] | None = None,
) -> tuple[list[Encoded], int]:
    """Encode items (optionally with replacement answers); returns (encoded, number truncated).

    The format is the tokenizer's (`format_of`) unless given, so training sees the prompts scoring sees.
    """
    out, cut = [], 0
    texts = [answers[i] if answers is not None else item.answer for i, item in enumerate(items)]
    prompts, conts = encode_qa(tokenizer, [item.question for item in items], [[t] for t in texts], fmt)
    for prompt_ids, (answer_ids,) in zip(prompts, conts, strict=True):
        ids = prompt_ids + answer_ids
        labels = [IGNORE] * len(prompt_ids) + answer_ids
        if max_length is not None and len(ids) > max_length:
            ids, labels, cut = ids[:max_length], labels[:max_length], cut + 1
        out.append(Encoded(ids, labels))
    return out, cut


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class UnlearnBatch:
    """One step's data: a forget batch, and a retain batch when the method uses one."""

    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor] | None = None
    forget_index: torch.Tensor | None = None  # positions in the forget set, for cached references

    def to(self, device: torch.device) -> UnlearnBatch:
        """The same batch on `device` (the index stays on the CPU: it indexes CPU-side caches)."""
        move = lambda d: None if d is None else {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return UnlearnBatch(move(self.forget), move(self.retain), self.forget_index)


def forget_retain_batches(
    forget: Sequence[Encoded],
    retain: Sequence[Encoded] | None,
    batch_size: int,
    pad_id: int,
    generator: torch.Generator,
) -> Iterator[UnlearnBatch]:
    """One epoch: shuffled forget batches, each with a random retain batch of the same size."""
    order = torch.randperm(len(forget), generator=generator)
    for start in range(0, len(forget), batch_size):
        idx = order[start : start + batch_size]
        retain_batch = None
        if retain:
            ridx = torch.randint(len(retain), (len(idx),), generator=generator)
            retain_batch = collate([retain[int(i)] for i in ridx], pad_id)
        yield UnlearnBatch(collate([forget[int(i)] for i in idx], pad_id), retain_batch, idx)
