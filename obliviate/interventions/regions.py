"""Where a prompt ends inside a token sequence, and the question text a classifier reads.

ECO corrupts prompt tokens only and GUARD restricts only what comes after the prompt. A model is
fed the prompt alone (a prefill, later continued from its cache), prompt + answer as one sequence
(full-sequence scoring), or prompt + generated tokens (generation without a cache). To treat all of
them alike, the prompt end is read off the tokens: it is the end of the last occurrence of the
prompt format's *marker*, the token tail that every rendered prompt ends with ("\\nAnswer:" for
the default format). The last one, so that a few-shot prompt (examples, then the question) ends
after its final question; an answer that itself contained the marker would be taken for prompt.
A sequence without the marker is all prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from obliviate.models.prompts import PromptFormat, encode_prompt

# Questions whose last characters differ, so the common token tail of their prompts cannot reach
# into the question (a tokenizer may merge a question's last character with the template).
_PROBES = ("x", "Who is y?", "What was z.", "a b c!", "1", "Q:")


def prompt_marker(tokenizer, fmt: PromptFormat, questions: Sequence[str] = ()) -> list[int]:
    """The longest token tail shared by every rendered prompt (probes plus `questions`); may be []."""
    encoded = [encode_prompt(tokenizer, fmt.render(q, tokenizer), fmt) for q in (*_PROBES, *questions)]
    tail: list[int] = []
    for k in range(1, min(len(e) for e in encoded) + 1):
        token = encoded[0][-k]
        if any(e[-k] != token for e in encoded):
            break
        tail.insert(0, token)
    return tail


@dataclass(frozen=True)
class Region:
    """Token spans of one row: real tokens are [start, end), the prompt is [start, prompt_end)."""

    start: int
    prompt_end: int
    end: int
    found: bool  # whether the marker was found (else the whole row is prompt)


def _find_last(seq: list[int], marker: Sequence[int]) -> int:
    """Index just after the last occurrence of `marker` in `seq`, or -1."""
    m, pattern = len(marker), list(marker)
    for i in range(len(seq) - m, -1, -1):
        if seq[i] == pattern[0] and seq[i : i + m] == pattern:
            return i + m
    return -1


def find_regions(ids: torch.Tensor, mask: torch.Tensor, marker: Sequence[int] | None) -> list[Region]:
    """The region of every row of `ids` (B, T) with `mask` (B, T); padding on either side."""
    rows = []
    ids_list, mask_list = ids.tolist(), mask.tolist()
    for seq, m in zip(ids_list, mask_list, strict=True):
        real = [i for i, v in enumerate(m) if v]
        if not real:
            rows.append(Region(0, 0, 0, False))
            continue
        start, end = real[0], real[-1] + 1
        cut = _find_last(seq[start:end], marker) if marker else -1
        rows.append(Region(start, start + cut if cut >= 0 else end, end, cut >= 0))
    return rows


def question_text(text: str, fmt: PromptFormat, tokenizer=None) -> str:
    """The question inside a decoded prompt `text` (the format's text around the question stripped where it matches).

    For a chat format, what surrounds the question (system turn, role names, dates) is read off the
    template itself, so the classifier sees the question alone under any template.
    """
    if fmt.chat and tokenizer is None:
        return text.strip()
    if not fmt.chat and "{question}" not in fmt.question_template:
        return text.strip()
    pre, post = fmt.question_parts(tokenizer)
    out = text.strip()
    if pre and out.startswith(pre):
        out = out[len(pre) :]
    if post and out.endswith(post):
        out = out[: -len(post)]
    return out.strip()


def decoded_questions(tokenizer, ids: torch.Tensor, regions: Sequence[Region], fmt: PromptFormat) -> list[str]:
    """The question text of each row's prompt region, as a classifier sees it."""
    spans = [ids[b, r.start : r.prompt_end].tolist() for b, r in enumerate(regions)]
    texts = tokenizer.batch_decode(spans, skip_special_tokens=True)
    return [question_text(t, fmt, tokenizer) for t in texts]


def classifier_text(tokenizer, question: str, fmt: PromptFormat) -> str:
    """What the classifier sees for `question` at run time: rendered, encoded, decoded, stripped.

    Training the classifier on exactly this text keeps training and use consistent.
    """
    ids = encode_prompt(tokenizer, fmt.render(question, tokenizer), fmt)
    return question_text(tokenizer.decode(ids, skip_special_tokens=True), fmt, tokenizer)


def phrase_token_ids(tokenizer, phrases: Sequence[str]) -> list[list[int]]:
    """Token id sequences of each phrase, with and without a leading space (deduplicated).

    A tokenisation containing the unknown token is dropped: it would match unrelated text.
    """
    unk = tokenizer.unk_token_id
    out: list[list[int]] = []
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids and ids not in out and (unk is None or unk not in ids):
                out.append(ids)
    return out


def format_state(fmt: PromptFormat) -> dict:
    """A prompt format as JSON (saved with an intervention)."""
    return fmt.state()


@dataclass(frozen=True)
class PromptReader:
    """Reads the question out of token rows: the format's marker finds the prompt, its template is stripped."""

    marker: tuple[int, ...]
    fmt: PromptFormat

    @classmethod
    def for_items(cls, tokenizer, fmt: PromptFormat, questions: Sequence[str] = ()) -> PromptReader:
        return cls(tuple(prompt_marker(tokenizer, fmt, questions)), fmt)

    def read(self, tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[Region]]:
        """(question text, region) of every row of `ids` (B, T) with `mask` (B, T)."""
        regions = find_regions(ids, mask, self.marker)
        return decoded_questions(tokenizer, ids, regions, self.fmt), regions

    def state(self) -> dict:
        return {"marker": list(self.marker), "format": format_state(self.fmt)}

    @classmethod
    def from_state(cls, config: dict) -> PromptReader:
        return cls(tuple(config["marker"]), PromptFormat.from_state(config["format"]))
