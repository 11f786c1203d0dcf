"""Read forget, retain and evaluation data into the schema's items.

`load_items(source, kind)` accepts:

- a local file: JSON Lines (`.jsonl`), JSON (`.json`: a list of objects, an object holding one list
  of objects, or JSON-lines content, which is how TOFU ships its `.json` files), CSV (`.csv`) or
  Parquet (`.parquet`);
- a local directory written by `datasets.Dataset.save_to_disk`, or a directory of such files (all
  of them in name order, or only the one whose stem is `split`);
- a Hugging Face hub name, `owner/name` or `owner/name:config`, loaded with
  `datasets.load_dataset(name, config, split=split or "train")`.

Each row becomes one `QAItem`, `TextPassage` or `LabelledText`. `mapping` renames columns to schema
fields (`{"question": "prompt"}` reads `question` from the column `prompt`). Without a mapping, the
TOFU column names `perturbed_answer` and `paraphrased_question` are read as `perturbed_answers` and
`paraphrased_questions`. Columns that feed no field go into `meta`.

Every problem is a `DataError` located as `path:line: message`. The line is the JSON Lines line, the
CSV line (the header is line 1), or the row number (index + 1) for a JSON list, a Parquet file or a
`datasets` table. The returned list is an `ItemList`, which remembers each item's `path:line` so later
checks (overlap between forget and retain) can point at the same place.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from obliviate.data.schema import Item, LabelledText, QAItem, TextPassage
from obliviate.errors import ConfigError, DataError

Kind = Literal["qa", "text", "labelled"]
Row = tuple[str, int, dict[str, Any]]  # (path, line, raw row)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
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
# Files `save_to_disk` writes, one of which marks a directory as a saved dataset.
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


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
    if kind not in FIELDS:
        raise ConfigError(f"unknown data kind '{kind}' (choose from {', '.join(FIELDS)})")
    mapping = _check_mapping(mapping or {}, kind)
    items = ItemList()
    for path, line, row in read_rows(source, split):
        items.append(_to_item(kind, _Fields(row, mapping, path, line)))
        items.locations.append(f"{path}:{line}")
    if not items:
        raise DataError(source, "no items")
    return items


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
# Sources -> raw rows
# ---------------------------------------------------------------------------------------------


def read_rows(source: str | Path, split: str | None = None) -> list[Row]:
    """Raw rows of a file, a directory or a hub dataset, each with its path and 1-based line."""
    path = Path(source)
    if path.is_dir():
        return _read_dir(path, split)
    if path.is_file():
        return _read_file(path)
    if _looks_like_hub_name(str(source)):
        return _read_hub(str(source), split)
    raise DataError(source, "no such file")


def _looks_like_hub_name(source: str) -> bool:
    """`owner/name[:config]` with no data-file suffix, and `owner` not a local directory."""
    path = Path(source)
    if path.suffix.lower() in SUFFIXES or path.parent.is_dir():
        return False
    return HUB_NAME.match(source) is not None


def _read_file(path: Path) -> list[Row]:
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            path, f"unsupported file type '{path.suffix}' (use .jsonl, .json, .csv, .parquet or a directory)"
        )
    return reader(path)


def _decode(path: Path) -> str:
    """The file as text; a byte that is not UTF-8 is reported on its line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, "not valid UTF-8", line=data[: err.start].count(b"\n") + 1) from None


def _read_jsonl(path: Path) -> list[Row]:
    return _parse_json_lines(path, _decode(path))


def _parse_json_lines(path: Path, text: str) -> list[Row]:
    # Split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings.
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"invalid JSON ({err.msg} at column {err.colno})", number) from None
        rows.append((str(path), number, _expect_object(row, path, number)))
    return rows


def _read_json(path: Path) -> list[Row]:
    text = _decode(path)
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{"):
            return _parse_json_lines(path, text)  # JSON lines in a .json file, as TOFU ships them
        raise DataError(path, f"invalid JSON ({err.msg} at column {err.colno})", err.lineno) from None
    if isinstance(doc, dict):
        doc = _unwrap(doc, path)
    if not isinstance(doc, list):
        raise DataError(path, "expected a list of objects, an object holding one, or JSON lines")
    return [(str(path), i + 1, _expect_object(row, path, i + 1)) for i, row in enumerate(doc)]


def _unwrap(doc: dict[str, Any], path: Path) -> list[Any]:
    """The list of records inside `{"data": [...]}`; a lone object is a one-line JSON-lines file."""
    lists = [key for key, value in doc.items() if _is_record_list(value)]
    if len(lists) > 1:
        raise DataError(path, f"several lists of objects ({', '.join(lists)}); expected one")
    if lists:
        return doc[lists[0]]
    if len(doc) == 1 and next(iter(doc.values())) == []:
        return []
    return [doc]


def _is_record_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _expect_object(row: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {_type_name(row)}", line)
    return row


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    rows = []
    try:
        for record in reader:
            # reader.line_num is the line the record ends on: its own line for one-line records.
            if None in record:
                raise DataError(path, "row has more cells than the header", reader.line_num)
            # An empty cell means "no value", so optional fields stay None and required ones are missing.
            row = {key: (None if value in ("", None) else value) for key, value in record.items()}
            rows.append((str(path), reader.line_num, row))
    except csv.Error as err:
        raise DataError(path, f"invalid CSV ({err})", reader.line_num) from None
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable Parquet file ({err})") from None
    return [(str(path), i + 1, row) for i, row in enumerate(table.to_pylist())]


def _read_dir(path: Path, split: str | None) -> list[Row]:
    if any((path / marker).exists() for marker in SAVED_DATASET_MARKERS):
        return _read_saved_dataset(path, split)
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if split is not None:
        files = [f for f in files if f.stem == split]
        if not files:
            raise DataError(path, f"no data file named '{split}' with a suffix in {', '.join(SUFFIXES)}")
    return [row for f in files for row in _read_file(f)]


def _read_saved_dataset(path: Path, split: str | None) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(path, f"not a readable `datasets` directory ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, split, path)
    return [(str(path), i + 1, row) for i, row in enumerate(ds.to_list())]


def _pick_split(ds: Any, split: str | None, path: str | Path) -> Any:
    names = ", ".join(ds)
    if split is None:
        if len(ds) != 1:
            raise DataError(path, f"several splits ({names}); choose one")
        return next(iter(ds.values()))
    if split not in ds:
        raise DataError(path, f"no split '{split}' (has: {names})")
    return ds[split]


def _read_hub(source: str, split: str | None) -> list[Row]:
    import datasets

    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # the hub client raises many types (network, missing repo or config)
        raise DataError(
            source,
            f"not a local file or directory, and not loadable from the Hugging Face hub "
            f"({type(err).__name__}: {' '.join(str(err).split())})",
        ) from None
    return [(source, i + 1, row) for i, row in enumerate(ds.to_list())]


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
            return value
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


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
