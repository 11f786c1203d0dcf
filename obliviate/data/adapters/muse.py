"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models",
arXiv:2407.06460).

Reads the evaluation subsets of `muse-bench/MUSE-News` and `muse-bench/MUSE-Books` from the Hugging
Face hub (`datasets.load_dataset(name, config, split=split)`) or from a local copy. The subsets
(hub configs), their splits and columns:

- `verbmem`: split `forget`; columns `prompt` (the opening of a forget passage) and `gt` (its true
  continuation). Scored by VerbMem.
- `knowmem`: splits `forget_qa`, `retain_qa`, `forget_qa_icl`, `retain_qa_icl`; columns `question`,
  `answer`. The `*_icl` splits are the in-context examples put before every question of their set.
  Older hub revisions and MUSE's GitHub data folder call the retain splits `retain2_qa` and
  `retain2_qa_icl`; both names are read.
- `privleak`: splits `forget`, `retain`, `holdout`; column `text` (older name of `retain`: `retain2`).
  Scored by PrivLeak (forget vs holdout; retain is reported alongside).

A local copy is a directory with one folder per subset, each holding one file per split, in either
layout MUSE publishes:

- the hub repository's files: `verbmem/forget-00000-of-00001.parquet`,
  `knowmem/forget_qa-00000-of-00001.parquet`, ...
- MUSE's GitHub `data/<corpus>/` folder: `verbmem/forget.json`, `knowmem/forget_qa.json`,
  `privleak/forget.json`, ... (JSON lists; the privleak files there are lists of plain strings).

The training corpora are the `raw` subset: splits `forget`, `retain1` (the retain set MUSE's
baselines train on), `retain2` and `holdout`, column `text` on the hub (one article or book chunk a
row); MUSE's GitHub folder holds them as plain text, `raw/forget.txt`, `raw/retain1.txt`, ..., each
read as one passage (the training step cuts long passages into `max_length` chunks, as MUSE's
`DefaultDataset` does). `load_muse_corpus` reads them.

JSON Lines (`.jsonl`) copies of either are read too. Locally, a missing subset folder leaves that
subset empty (MUSE-Books on GitHub has no knowmem), and so do the optional splits (`*_icl`, privleak
`retain`); a subset folder without a required split is an error. Every bad row is a `DataError`
naming `path:line` and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.data.readers import read_rows
from obliviate.data.schema import QAItem, TextPassage
from obliviate.errors import DataError

HUB_NAMES = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
# Min-40% forget-vs-holdout AUC of MUSE's retrained Llama-2-7B models (AUC_RETRAIN in
# swj0419/muse_bench constants.py, key "forget_holdout_Min-40%"): the oracle AUC for PrivLeak when
# evaluating unlearned versions of MUSE's own target models (`--oracle auc=0.4772`). MUSE's eval.py
# indexes this table without the corpus key; here it is per corpus.
PUBLISHED_RETRAIN_AUC = {"news": 0.4772, "books": 0.5393}

# (subset, attribute, split names in order of preference, required when the subset is present)
SPLITS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("verbmem", "verbmem", ("forget",), True),
    ("knowmem", "knowmem_forget", ("forget_qa",), True),
    ("knowmem", "knowmem_retain", ("retain_qa", "retain2_qa"), True),
    ("knowmem", "knowmem_forget_icl", ("forget_qa_icl",), False),
    ("knowmem", "knowmem_retain_icl", ("retain_qa_icl", "retain2_qa_icl"), False),
    ("privleak", "privleak_forget", ("forget",), True),
    ("privleak", "privleak_holdout", ("holdout",), True),
    ("privleak", "privleak_retain", ("retain", "retain2"), False),
)
SUBSETS = ("verbmem", "knowmem", "privleak")
SUFFIXES = (".parquet", ".jsonl", ".json")
CORPUS_SPLITS = ("forget", "retain1", "retain2", "holdout")

Row = tuple[str, int, Any]  # (path, line, raw row)


@dataclass
class MuseData:
    """The text suite's input: MUSE's evaluation sets (any may be empty: its metric is then skipped)."""

    verbmem: list[TextPassage] = field(default_factory=list)  # prefix = prompt, continuation = gt
    knowmem_forget: list[QAItem] = field(default_factory=list)
    knowmem_retain: list[QAItem] = field(default_factory=list)
    knowmem_forget_icl: list[QAItem] = field(default_factory=list)  # in-context examples for forget QA
    knowmem_retain_icl: list[QAItem] = field(default_factory=list)  # in-context examples for retain QA
    privleak_forget: list[TextPassage] = field(default_factory=list)  # members (trained, to be forgotten)
    privleak_holdout: list[TextPassage] = field(default_factory=list)  # never trained
    privleak_retain: list[TextPassage] = field(default_factory=list)  # trained and kept
    source: str = ""

    def sets(self) -> dict[str, list]:
        """Every set by attribute name, in the order of `SPLITS`."""
        return {attr: getattr(self, attr) for _, attr, _, _ in SPLITS}


def load_muse(source: str | Path) -> MuseData:
    """Load MUSE's verbmem, knowmem and privleak sets from a local copy or the hub.

    `source`: a local directory (see the module docstring), a hub name such as
    `muse-bench/MUSE-News`, or the shorthand `news` / `books`.
    """
    local = Path(source)
    if local.exists():
        if not local.is_dir():
            raise DataError(source, "expected a directory with MUSE's verbmem/, knowmem/, privleak/ folders")
        return _load_local(local)
    hub = HUB_NAMES.get(str(source), str(source))
    data = MuseData(source=hub)
    for subset, attr, names, required in SPLITS:
        setattr(data, attr, _hub_split(hub, subset, attr, names, required))
    return data


def _load_local(root: Path) -> MuseData:
    present = [s for s in SUBSETS if (root / s).is_dir()]
    if not present:
        raise DataError(root, f"no MUSE subset folder ({', '.join(f'{s}/' for s in SUBSETS)})")
    data = MuseData(source=str(root))
    for subset, attr, names, required in SPLITS:
        if subset not in present:
            continue
        path = _split_file(root / subset, names)
        if path is None:
            if required:
                raise DataError(root / subset, f"no file for split '{names[0]}' ({names[0]}.json, "
                                               f"{names[0]}.jsonl or {names[0]}-00000-of-00001.parquet)")
            continue
        setattr(data, attr, _to_items(_file_rows(path), attr, str(path)))
    return data


def _split_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first file of `names` (in preference order) in either local layout, or None."""
    for name in names:
        for suffix in SUFFIXES:
            exact = folder / f"{name}{suffix}"
            if exact.is_file():
                return exact
        shards = sorted(folder.glob(f"{name}-*-of-*.parquet"))
        if len(shards) > 1:
            raise DataError(folder, f"split '{name}' has {len(shards)} parquet shards; expected one")
        if shards:
            return shards[0]
    return None


def _file_rows(path: Path) -> list[Row]:
    """Raw rows of a file; a JSON list of plain strings (MUSE's GitHub privleak files) gives strings."""
    if path.suffix == ".json":
        strings = _string_list(path)
        if strings is not None:
            return [(str(path), i + 1, s) for i, s in enumerate(strings)]
    return read_rows(path)


def _string_list(path: Path) -> list[str] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # read_rows reports the problem with its line
    if isinstance(doc, list) and doc and all(isinstance(v, str) for v in doc):
        return doc
    return None


def _hub_split(hub: str, subset: str, attr: str, names: tuple[str, ...], required: bool) -> list:
    """One split from the hub, trying the older split name when the current one fails."""
    first: DataError | None = None
    for name in names:
        try:
            return _to_items(read_rows(f"{hub}:{subset}", split=name), attr, f"{hub}:{subset}/{name}")
        except DataError as err:
            first = first or err
    if required:
        raise first
    return []


def _to_items(rows: list[Row], attr: str, where: str) -> list:
    if not rows:
        raise DataError(where, "no rows")
    subset = attr.split("_")[0]
    items = []
    for index, (path, line, row) in enumerate(rows):
        meta = {"muse": where, "index": index}
        if subset == "verbmem":
            prompt, gt = _string(row, "prompt", path, line), _string(row, "gt", path, line)
            items.append(TextPassage(prompt + gt, prompt, gt, meta=meta))
        elif subset == "knowmem":
            question, answer = _string(row, "question", path, line), _string(row, "answer", path, line)
            items.append(QAItem(question, answer, meta=meta))
        else:
            text = row if isinstance(row, str) else _string(row, "text", path, line)
            items.append(TextPassage(text, meta=meta))
    return items


def _string(row: Any, name: str, path: str, line: int) -> str:
    if not isinstance(row, dict):
        raise DataError(path, f"expected an object with field '{name}', got {type(row).__name__}", line)
    value = row.get(name)
    if value is None:
        raise DataError(path, f"field '{name}' missing", line)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(path, f"field '{name}' must be a string", line)
    return str(value)  # a number (a year as an answer) reads as its text


def load_muse_corpus(source: str | Path, split: str = "forget") -> list[TextPassage]:
    """A split of MUSE's `raw` training corpus as text passages (see the module docstring).

    `source`: a local copy (a directory with `raw/`), a hub name, or `news` / `books`.
    """
    if split not in CORPUS_SPLITS:
        raise DataError(source, f"unknown MUSE corpus split '{split}' (choose from {', '.join(CORPUS_SPLITS)})")
    local = Path(source)
    if not local.exists():
        hub = HUB_NAMES.get(str(source), str(source))
        rows = read_rows(f"{hub}:raw", split=split)
        return _corpus_items(rows, f"{hub}:raw/{split}")
    folder = local / "raw"
    text_file = folder / f"{split}.txt"
    if text_file.is_file():
        text = text_file.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise DataError(text_file, "empty corpus file")
        return [TextPassage(text, meta={"muse": str(text_file), "index": 0})]
    path = _split_file(folder, (split,)) if folder.is_dir() else None
    if path is None:
        raise DataError(folder, f"no MUSE corpus file for split '{split}' ({split}.txt, {split}.json, "
                                f"{split}.jsonl or {split}-00000-of-00001.parquet)")
    return _corpus_items(_file_rows(path), str(path))


def _corpus_items(rows: list[Row], where: str) -> list[TextPassage]:
    if not rows:
        raise DataError(where, "no rows")
    return [TextPassage(row if isinstance(row, str) else _string(row, "text", path, line),
                        meta={"muse": where, "index": index})
            for index, (path, line, row) in enumerate(rows)]
