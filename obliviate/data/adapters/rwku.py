"""RWKU (Jin et al. 2024, "RWKU: Benchmarking Real-World Knowledge Unlearning for Large Language
Models", arXiv:2406.10890).

RWKU names 200 real people as unlearning targets and probes what a model still knows about each
with questions at three levels, plus questions about their neighbours (related people and things
the model must keep knowing). Read from the hub, `datasets.load_dataset("jinzhuoran/RWKU", CONFIG)`,
or from a local copy in the layout of RWKU's own `process/data_process.py`.

Hub configs (split) and columns, as RWKU's loaders read them:

- `forget_target` (train): `target` (the person's name), `intro` (a one-line description);
- `forget_level1` (test): fill-in-the-blank probes of knowledge memorisation: `query` (with a ___
  blank), `answer`, `subject` (the target), `level` ("1");
- `forget_level2` (test): question-answer probes of knowledge manipulation, the same columns, level "2";
- `forget_level3` (test): adversarial probes (prefix injection, affirmative suffix, role play, reverse
  query, in-context learning, ...): the same columns plus `type`, level "3";
- `neighbor_level1`, `neighbor_level2` (test): the same two kinds of probe about the target's
  neighbours, `subject` naming the target they belong to;
- `train_positive_llama3` (train): the forget corpus RWKU's GA and NPO baselines train on, text the
  target model wrote about each target: `text`, `subject`, `intro`, `id`.

A local copy is one target's folder (`Target/1_Stephen_King/` with `intro.json`, `forget_level1.json`,
`forget_level2.json`, `forget_level3.json`, `neighbor_level1.json`, `neighbor_level2.json` and
`positive.json`, JSON lists of the rows above), or a folder of such folders (RWKU's `Target/`: the
batch setting, every target at once). The probe files are required; `positive.json` only to unlearn.

RWKU's own evaluation generates up to 30 new tokens after an instruction ("Please complete the blank
in the following question." for level 1, "Please briefly answer the following question." otherwise)
and reports ROUGE-L recall against the answer per level: forget levels 1-3 (lower is better) and
neighbour levels 1-2 (higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.data.readers import read_rows
from obliviate.data.schema import QAItem, TextPassage
from obliviate.errors import DataError

HUB_NAME = "jinzhuoran/RWKU"
PROBES = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2")
TARGETS, PASSAGES = "forget_target", "train_positive_llama3"
LOCAL_FILES = {TARGETS: "intro", PASSAGES: "positive"} | {name: name for name in PROBES}
SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class RwkuData:
    """RWKU's targets, probes and forget corpus (`passages` empty when not loaded)."""

    targets: list[str]
    probes: dict[str, list[QAItem]] = field(default_factory=dict)  # PROBES name -> items
    passages: list[TextPassage] = field(default_factory=list)
    source: str = HUB_NAME

    @property
    def forget(self) -> list[QAItem]:
        """Every forget probe, level 1 then 2 then 3 (`meta["level"]` tells them apart)."""
        return [it for name in PROBES[:3] for it in self.probes.get(name, [])]

    @property
    def neighbours(self) -> list[QAItem]:
        return [it for name in PROBES[3:] for it in self.probes.get(name, [])]


def load_rwku(source: str | Path = HUB_NAME, passages: bool = False) -> RwkuData:
    """Load RWKU's targets and probes (and with `passages`, its forget corpus); see the module docstring."""
    local = Path(source)
    if local.exists():
        if not local.is_dir():
            raise DataError(source, "expected RWKU's Target/ folder or one target's folder (forget_level1.json, ...)")
        folders = [local] if _file(local, "forget_level1") else sorted(
            (d for d in local.iterdir() if d.is_dir() and _file(d, "forget_level1")), key=_target_order)
        if not folders:
            raise DataError(local, "no RWKU target folder (a folder holding forget_level1.json, ...)")
        data = RwkuData([], {name: [] for name in PROBES}, source=str(local))
        for folder in folders:
            _load_folder(folder, data, passages)
        return data
    hub = str(source)
    targets = [_string(row, "target", path, line) for path, line, row in read_rows(f"{hub}:{TARGETS}", "train")]
    data = RwkuData(targets, source=hub)
    for name in PROBES:
        data.probes[name] = _probes(read_rows(f"{hub}:{name}", "test"), name)
    if passages:
        data.passages = _passages(read_rows(f"{hub}:{PASSAGES}", "train"))
    return data


def _target_order(folder: Path) -> tuple[int, str]:
    """RWKU numbers its target folders (`12_Genghis_Khan`): in that order, then by name."""
    head = folder.name.partition("_")[0]
    return (int(head) if head.isdigit() else 10**9, folder.name)


def _file(folder: Path, name: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def _load_folder(folder: Path, data: RwkuData, passages: bool) -> None:
    intro = _file(folder, LOCAL_FILES[TARGETS])
    if intro is not None:
        data.targets += [_string(row, "target", path, line) for path, line, row in read_rows(intro)]
    else:  # RWKU's folder names are "<n>_<target with underscores>"
        data.targets.append(folder.name.partition("_")[2].replace("_", " ") or folder.name)
    for name in PROBES:
        path = _file(folder, name)
        if path is None:
            raise DataError(folder, f"no {name}.json (RWKU's {name} probes for this target)")
        data.probes[name] += _probes(read_rows(path), name)
    if passages:
        path = _file(folder, LOCAL_FILES[PASSAGES])
        if path is None:
            raise DataError(folder, "no positive.json: RWKU's forget corpus (train_positive_llama3), which "
                                    "unlearning trains on")
        data.passages += _passages(read_rows(path))


def _probes(rows: list, name: str) -> list[QAItem]:
    items = []
    for index, (path, line, row) in enumerate(rows):
        subject = _string(row, "subject", path, line)
        meta: dict[str, Any] = {"rwku": name, "level": str(row.get("level") or name[-1]), "index": index}
        if row.get("type"):
            meta["type"] = row["type"]
        items.append(QAItem(_string(row, "query", path, line), _string(row, "answer", path, line),
                            subject=subject, meta=meta))
    return items


def _passages(rows: list) -> list[TextPassage]:
    return [TextPassage(_string(row, "text", path, line), subject=row.get("subject"),
                        meta={"rwku": PASSAGES, "index": index})
            for index, (path, line, row) in enumerate(rows)]


def _string(row: Any, name: str, path: str, line: int) -> str:
    if not isinstance(row, dict):
        raise DataError(path, f"expected an object with field '{name}', got {type(row).__name__}", line)
    value = row.get(name)
    if value is None:
        raise DataError(path, f"field '{name}' missing", line)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(path, f"field '{name}' must be a string", line)
    return str(value)
