"""Sanity checks on a forget request before any training starts, and the data hash for run configs.

Overlap between the forget set and the retain set makes the two objectives fight: a method is asked
to forget and to keep the same fact. `find_overlap` applies two rules, in this order:

1. **Same content.** The normalised texts are equal: question and answer for a `QAItem`, the text
   for a `TextPassage` or `LabelledText`. Normalising casefolds, drops punctuation and collapses
   whitespace, so "Who wrote X?" and "who wrote x" match.
2. **Same subject.** Both items name a `subject` and the normalised subjects are equal (retaining
   other facts about a person the forget set is about).

Each retain item is reported once, against the first forget item it overlaps (content before subject).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from obliviate.data.schema import Item, QAItem
from obliviate.errors import DataError
from obliviate.io import stable_hash

_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")


def check_forget_set(items: Sequence[Item], path: str | Path) -> None:
    """Refuse an empty forget set: every method would silently do nothing."""
    if len(items) == 0:
        raise DataError(path, "forget set is empty")


def check_duplicates(items: Sequence[Item], path: str | Path, strict: bool = False) -> list[str]:
    """One warning line per item repeating an earlier one (same content); with `strict`, a `DataError`."""
    seen: dict[tuple[str, ...], int] = {}
    lines = []
    for j, item in enumerate(items):
        i = seen.setdefault(_content_key(item), j)
        if i == j:
            continue
        where, first = _location(items, j, path), _location(items, i, path)
        if strict:
            at, _, line = where.rpartition(":")
            raise DataError(at, f"duplicate of {first}", int(line) if line.isdigit() else None)
        lines.append(f"{where}: duplicate of {first}")
    return lines


def normalise(text: str) -> str:
    """Casefold, drop punctuation, collapse whitespace (NFKC first, so look-alike characters match)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


def _content_key(item: Item) -> tuple[str, ...]:
    if isinstance(item, QAItem):
        return (normalise(item.question), normalise(item.answer))
    return (normalise(item.text),)


def _overlaps(forget: Sequence[Item], retain: Sequence[Item]) -> list[tuple[int, int, str]]:
    """(forget index, retain index, reason) for every overlapping retain item."""
    by_content: dict[tuple[str, ...], int] = {}
    by_subject: dict[str, int] = {}
    for i, item in enumerate(forget):
        by_content.setdefault(_content_key(item), i)
        if item.subject:
            by_subject.setdefault(normalise(item.subject), i)
    found = []
    for j, item in enumerate(retain):
        i = by_content.get(_content_key(item))
        if i is not None:
            reason = "same question and answer" if isinstance(item, QAItem) else "same text"
            found.append((i, j, reason))
        elif item.subject and normalise(item.subject) in by_subject:
            found.append((by_subject[normalise(item.subject)], j, f"same subject '{item.subject}'"))
    return found


def find_overlap(forget: Sequence[Item], retain: Sequence[Item]) -> list[tuple[int, int]]:
    """Pairs (forget index, retain index), 0-based, one per overlapping retain item."""
    return [(i, j) for i, j, _ in _overlaps(forget, retain)]


def _location(items: Sequence[Item], index: int, path: str | Path) -> str:
    """`path:line` where the item was read (`ItemList.locations`), else `path:item number`."""
    locations = getattr(items, "locations", None)
    if locations is not None and len(locations) == len(items):
        return locations[index]
    return f"{path}:{index + 1}"


def check_overlap(
    forget: Sequence[Item],
    retain: Sequence[Item],
    forget_path: str | Path,
    retain_path: str | Path,
    strict: bool = False,
) -> list[str]:
    """One warning line per overlapping retain item; with `strict`, a `DataError` for the first."""
    lines = []
    for i, j, reason in _overlaps(forget, retain):
        where = _location(retain, j, retain_path)
        message = f"item overlaps {_location(forget, i, forget_path)} ({reason})"
        if strict:
            path, _, line = where.rpartition(":")
            raise DataError(path, message, int(line))
        lines.append(f"{where}: {message}")
    return lines


def data_hash(items: Sequence[Item]) -> str:
    """A short stable hash of the items (kind and every field), recorded in run configs."""
    return stable_hash([[type(item).__name__, item.to_dict()] for item in items])
