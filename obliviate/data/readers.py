"""Read forget, retain and evaluation data into the schema's items.

`load_items(source, kind)` accepts:

- a local file: JSON Lines (`.jsonl`), JSON (`.json`: a list of objects, an object holding one list
  of objects, or JSON-lines content, which is how TOFU ships its `.json` files), CSV (`.csv`) or
  Parquet (`.parquet`);
- a local directory written by `datasets.Dataset.save_to_disk`, or a directory of such files (all
  of them in name order, or only the one whose stem is `split`);
- a Hugging Face hub name, `owner/name` or `owner/name:config`, loaded with
  `datasets.load_dataset(name, config, split=split or "train")`.

Each row becomes one `QAItem`, `TextPassage` or `LabelledText`; kind `auto` reads a file of text
passages (a `text` column, or `prefix` and `continuation`, and no `question`) as text, anything else
as QA. `mapping` renames columns to schema
fields (`{"question": "prompt"}` reads `question` from the column `prompt`). Without a mapping, the
TOFU column names `perturbed_answer` and `paraphrased_question` are read as `perturbed_answers` and
`paraphrased_questions`. Columns that feed no field go into `meta`.

Every problem is a `DataError` located as `path:line: message`. The line is the JSON Lines line, the
CSV line (the header is line 1), or the row number (index + 1) for a JSON list, a Parquet file or a
`datasets` table. The returned list is an `ItemList`, which remembers each item's `path:line` so later
checks (overlap between forget and retain) can point at the same place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from obliviate.data.formats import Row, _type_name, read_rows  # noqa: F401  (read_rows: re-exported)
from obliviate.data.schema import Item, LabelledText, QAItem, TextPassage
from obliviate.errors import ConfigError, DataError

Kind = Literal["qa", "text", "labelled", "auto"]

FIELDS: dict[str, tuple[str, ...]] = {
    "qa": (
        "question",
        "answer",
        "paraphrased_answer",
        "perturbed_answers",
        "paraphrased_questions",
        "subject",
        "meta",
    ),
    "text": ("text", "prefix", "continuation", "subject", "meta"),
    "labelled": ("text", "label", "subject", "meta"),
}
# Column names other datasets use for a field; read when the field's own column is absent.
ALIASES = {"perturbed_answers": "perturbed_answer", "paraphrased_questions": "paraphrased_question"}


class ItemList(list):
    """A list of items that also holds `locations[i]`, the `path:line` item i was read from."""

    def __init__(self, items: Iterable[Item] = (), locations: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.locations: list[str] = list(locations)


def load_items(
    source: str | Path,
    kind: Kind = "qa",
    mapping: dict[str, str] | None = None,
    split: str | None = None,
) -> ItemList:
    """Read every row of `source` as an item of `kind`; see the module docstring for sources."""
    if kind not in (*FIELDS, "auto"):
        raise ConfigError(f"unknown data kind '{kind}' (choose from {', '.join(FIELDS)}, auto)")
    rows = read_rows(source, split)
    if kind == "auto":
        kind = detect_kind(rows, mapping or {})
    mapping = _check_mapping(mapping or {}, kind)
    items = ItemList()
    for path, line, row in rows:
        items.append(_to_item(kind, _Fields(row, mapping, path, line)))
        items.locations.append(f"{path}:{line}")
    if not items:
        raise DataError(source, "no items")
    return items


def detect_kind(rows: list[Row], mapping: dict[str, str]) -> Kind:
    """"text" when the first row has a text column (`text`, or `prefix` and `continuation`, as mapped)
    and no question column; else "qa"."""
    if not rows or not isinstance(rows[0][2], dict):
        return "qa"
    row = rows[0][2]
    has = lambda field: mapping.get(field, field) in row  # noqa: E731
    if has("question"):
        return "qa"
    return "text" if has("text") or (has("prefix") and has("continuation")) else "qa"


def parse_mapping(entries: str | Iterable[str]) -> dict[str, str]:
    """Parse CLI `--map` entries, `field=column` each (commas also separate pairs)."""
    if isinstance(entries, str):
        entries = [entries]
    mapping: dict[str, str] = {}
    for entry in entries:
        for pair in entry.split(","):
            field, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not field or not column:
                raise ConfigError(f"--map: expected field=column, got '{pair.strip()}'")
            if mapping.get(field, column) != column:
                raise ConfigError(f"--map: field '{field}' is mapped twice ('{mapping[field]}', '{column}')")
            mapping[field] = column
    return mapping


def _check_mapping(mapping: dict[str, str], kind: str) -> dict[str, str]:
    for field, column in mapping.items():
        if field not in FIELDS[kind]:
            raise ConfigError(
                f"column mapping: unknown field '{field}' for kind '{kind}' (fields: {', '.join(FIELDS[kind])})"
            )
        if not isinstance(column, str) or not column:
            raise ConfigError(f"column mapping: field '{field}' needs a column name")
    return dict(mapping)


# ---------------------------------------------------------------------------------------------
# Raw rows -> items
# ---------------------------------------------------------------------------------------------


class _Fields:
    """Typed access to one row's schema fields, remembering which columns were read."""

    def __init__(self, row: dict[str, Any], mapping: dict[str, str], path: str, line: int) -> None:
        self.row, self.mapping, self.path, self.line = row, mapping, path, line
        self.used: set[str] = set()

    def _column(self, field: str) -> str:
        if field in self.mapping:
            return self.mapping[field]
        alias = ALIASES.get(field)
        if field not in self.row and alias in self.row:
            return alias
        return field

    def _get(self, field: str) -> tuple[str, Any]:
        column = self._column(field)
        self.used.add(column)
        return column, self.row.get(column)

    def error(self, field: str, column: str, problem: str) -> DataError:
        name = f"'{field}'" if column == field else f"'{field}' (column '{column}')"
        return DataError(self.path, f"field {name} {problem}", self.line)

    def string(self, field: str, required: bool = False) -> str | None:
        column, value = self._get(field)
        if value is None:
            if required:
                raise self.error(field, column, "missing")
            return None
        if isinstance(value, str):
            if required and not value.strip():
                raise self.error(field, column, "is empty")
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(field, column, "is NaN or infinite, not text")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. a year stored as a number
        raise self.error(field, column, "must be a string")

    def strings(self, field: str) -> list[str]:
        """A list of strings; a single string is a one-element list (or a JSON list, as CSV cells hold)."""
        column, value = self._get(field)
        if value is None:
            return []
        if isinstance(value, str):
            return _json_list_of_strings(value) or [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise self.error(field, column, "must be a list of strings")

    def label(self, field: str) -> str:
        column, value = self._get(field)
        if value is None:
            raise self.error(field, column, "missing")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        raise self.error(field, column, "must be a string or a number")

    def meta(self) -> dict[str, Any]:
        """The row's `meta` object, plus every column no field read."""
        column, value = self._get("meta")
        if value is not None and not isinstance(value, dict):
            raise self.error("meta", column, "must be an object")
        extra = {k: v for k, v in self.row.items() if k not in self.used and v is not None}
        return {**extra, **(value or {})}


def _json_list_of_strings(text: str) -> list[str] | None:
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _to_item(kind: str, f: _Fields) -> Item:
    if kind == "qa":
        return QAItem(
            question=f.string("question", required=True),
            answer=f.string("answer", required=True),
            paraphrased_answer=f.string("paraphrased_answer"),
            perturbed_answers=f.strings("perturbed_answers"),
            paraphrased_questions=f.strings("paraphrased_questions"),
            subject=f.string("subject"),
            meta=f.meta(),
        )
    if kind == "text":
        text, prefix, continuation = f.string("text"), f.string("prefix"), f.string("continuation")
        if text is None:
            if prefix is None or continuation is None:
                raise f.error("text", f._column("text"), "missing")
            text = prefix + continuation
        return TextPassage(text, prefix, continuation, subject=f.string("subject"), meta=f.meta())
    return LabelledText(
        text=f.string("text", required=True), label=f.label("label"), subject=f.string("subject"), meta=f.meta()
    )
