"""Reading rows from files, directories and the hub: JSON Lines, JSON, CSV, Parquet, `datasets` dirs.

`read_rows(source)` returns (path, line, raw row) triples, so every later error can name the file and
the line. Bytes that are not UTF-8 and rows that are not objects are one-line `DataError`s.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from obliviate.errors import DataError

Row = tuple[str, int, dict[str, Any]]  # (path, line, raw row)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Files `save_to_disk` writes, one of which marks a directory as a saved dataset.
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")

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
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read it ({err.strerror or type(err).__name__})") from None
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
    # strict: an unterminated quote is an error, not a cell that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""), strict=True)
    rows, start = [], 1
    try:
        for record in reader:
            start = reader.line_num + 1  # the line the next record starts on
            # reader.line_num is the line the record ends on: its own line for one-line records.
            if None in record:
                raise DataError(path, "row has more cells than the header", reader.line_num)
            # An empty cell means "no value", so optional fields stay None and required ones are missing.
            row = {key: (None if value in ("", None) else value) for key, value in record.items()}
            rows.append((str(path), reader.line_num, row))
    except csv.Error as err:
        where = start if "end of data" in str(err) else reader.line_num
        hint = "; a quoted cell is never closed" if "end of data" in str(err) else ""
        raise DataError(path, f"invalid CSV ({err}{hint})", where) from None
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


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
