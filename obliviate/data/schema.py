"""The three item kinds every suite and method consumes.

- `QAItem`: a question about a subject with its answer, a paraphrased answer, perturbed (wrong)
  answers of the same type and template, and paraphrased question forms (used as held-out forms).
- `TextPassage`: free text, optionally split into a prefix and a continuation (verbatim memorisation);
  methods that take text train on all of its tokens, or on the continuation when there is a prefix.
- `LabelledText`: text with a class label (the SPUL / ICUL setting).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class QAItem:
    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    paraphrased_questions: list[str] = field(default_factory=list)
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subject_name(item) -> str | None:
    """How an item's subject is written in text: `meta["subject_name"]` when the subject field is an id
    (the built-in world's "p012" is "Louine Kronarest"), else the subject itself."""
    return item.meta.get("subject_name") or item.subject


@dataclass
class TextPassage:
    text: str
    prefix: str | None = None
    continuation: str | None = None
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelledText:
    text: str
    label: str
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Item = QAItem | TextPassage | LabelledText
