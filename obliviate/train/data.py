"""Items -> padded (input_ids, attention_mask, labels) batches, and the forget/retain pairing.

A QA item is its prompt and answer in the tokenizer's prompt format; labels are -100 on prompt tokens
and padding, so every loss is over answer tokens (and EOS) only. A text passage (`TextPassage`) is raw
text with the tokenizer's BOS and no prompt format, as MUSE and WMDP train on their corpora: the loss
runs on every token, or only on the continuation when the passage has a prefix. Passages longer than
`max_length` are split into consecutive chunks by `chunk_passages` (MUSE's `DefaultDataset` cuts its
forget corpus into `max_len` token windows the same way) before a method sees them.
The forget set anchors an epoch; each forget batch is paired with a retain batch drawn by a seeded
random sampler (as in open-unlearning's ForgetRetainDataset), so GradDiff-style methods see both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from obliviate.data.schema import Item, TextPassage
from obliviate.errors import ConfigError
from obliviate.models.prompts import PromptFormat, encode_qa

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_items(
    tokenizer,
    items: Sequence[Item],
    fmt: PromptFormat | None = None,
    max_length: int | None = None,
    answers: Sequence[str] | None = None,
) -> tuple[list[Encoded], int]:
    """Encode items (optionally with replacement answers); returns (encoded, number truncated).

    QA items use the tokenizer's format (`format_of`) unless one is given, so training sees the prompts
    scoring sees; text passages are raw text (`encode_passage`). Replacement `answers` need QA items.
    """
    if any(isinstance(item, TextPassage) for item in items):
        if answers is not None:
            raise ConfigError("replacement answers need QA items (question, answer), not text passages")
        out, cut = [], 0
        for item in items:
            if isinstance(item, TextPassage):
                enc, was_cut = encode_passage(tokenizer, item, max_length)
                out.append(enc)
                cut += int(was_cut)
            else:
                encoded, n = _encode_qa_items(tokenizer, [item], fmt, max_length, None)
                out += encoded
                cut += n
        return out, cut
    return _encode_qa_items(tokenizer, items, fmt, max_length, answers)


def _encode_qa_items(tokenizer, items, fmt, max_length, answers) -> tuple[list[Encoded], int]:
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


def _bos(tokenizer) -> list[int]:
    """The tokenizer's BOS as `tokenizer(text)` writes it (some tokenizers add none)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and probe and probe[0] == bos else []


def encode_passage(tokenizer, passage: TextPassage, max_length: int | None = None) -> tuple[Encoded, bool]:
    """(encoded passage, whether it was truncated): BOS + text, labels on every text token, or BOS +
    prefix + continuation with labels on the continuation only."""
    bos = _bos(tokenizer)
    if passage.prefix is not None and passage.continuation is not None:
        prefix = bos + list(tokenizer(passage.prefix, add_special_tokens=False)["input_ids"])
        cont = list(tokenizer(passage.continuation, add_special_tokens=False)["input_ids"])
        ids, labels = prefix + cont, [IGNORE] * len(prefix) + cont
    else:
        text = list(tokenizer(passage.text, add_special_tokens=False)["input_ids"])
        ids, labels = bos + text, [IGNORE] * len(bos) + text
    if max_length is not None and len(ids) > max_length:
        return Encoded(ids[:max_length], labels[:max_length]), True
    return Encoded(ids, labels), False


def chunk_passages(tokenizer, items: Sequence[Item], max_length: int) -> tuple[list[Item], dict[str, int]]:
    """Split every text passage (without a prefix) longer than `max_length` tokens into chunks that fit.

    Each chunk is a `TextPassage` of consecutive text, cut at token boundaries (character offsets with
    a fast tokenizer, else the decoded token windows), `max_length` − 1 tokens long less a margin of
    one token for re-tokenisation at the cut; the last may be shorter. Chunks keep the passage's
    subject and meta, plus `meta["chunk"] = (i, n)`. QA items and prefixed passages (whose prefix
    must stay with its continuation) pass unchanged. Returns (items, {"passages": long passages split,
    "chunks": chunks they became}).
    """
    window = max(max_length - len(_bos(tokenizer)) - 1, 1)
    out: list[Item] = []
    split = chunks = 0
    for item in items:
        if not isinstance(item, TextPassage) or item.prefix is not None:
            out.append(item)
            continue
        pieces = _split_text(tokenizer, item.text, window)
        if len(pieces) == 1:
            out.append(item)
            continue
        split, chunks = split + 1, chunks + len(pieces)
        out += [TextPassage(piece, subject=item.subject, meta={**item.meta, "chunk": [i, len(pieces)]})
                for i, piece in enumerate(pieces)]
    return out, {"passages": split, "chunks": chunks}


def _split_text(tokenizer, text: str, window: int) -> list[str]:
    """`text` in pieces of at most `window` tokens each, cut between tokens."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= window:
            return [text]
        starts = [offsets[i][0] for i in range(0, len(offsets), window)]
        bounds = [*starts[1:], len(text)]
        return [text[a:b] for a, b in zip([0, *starts[1:]], bounds, strict=True) if text[a:b].strip()]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= window:
        return [text]
    return [tokenizer.decode(ids[i:i + window]) for i in range(0, len(ids), window)]


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
