"""TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121).

Reads `locuslab/TOFU` from the Hugging Face hub (`datasets.load_dataset("locuslab/TOFU", name)`,
split `train`) or from a local directory holding the hub repo's files (`forget10_perturbed.json`, ...;
TOFU's `.json` files are JSON lines, and `.jsonl` / `.parquet` copies are read too).

The files and their columns:

- `forget01`, `forget05`, `forget10`, `retain90`, `retain95`, `retain99`, `full`: `question`, `answer`.
- `forget01_perturbed`, `forget05_perturbed`, `forget10_perturbed`, `retain_perturbed`: those plus
  `paraphrased_answer`, `paraphrased_question` (one string) and `perturbed_answer` (a list of 5).
- `real_authors_perturbed`, `world_facts_perturbed`: `question`, `answer`, `perturbed_answer`
  (a list of 3).

`forgetNN_perturbed` holds the same items as `forgetNN` with the evaluation fields filled in.
`retain_perturbed` (400 items) is the retain set TOFU *evaluates* on; `retainNN`, the complement of
`forgetNN`, is the retain set methods *train* on. The utility sets have no paraphrased answer: TOFU
scores their truth ratio against the answer itself (`base_answer_key: answer`), so their
`paraphrased_answer` is left `None` and the evaluation suite decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from obliviate.data.readers import ItemList, load_items
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError, DataError

HUB_NAME = "locuslab/TOFU"
FORGET_SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
UTILITY_SETS = {"real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}
MAPPING = {"perturbed_answers": "perturbed_answer", "paraphrased_questions": "paraphrased_question"}
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class TofuData:
    """One TOFU forget split with the sets its evaluation needs."""

    forget: list[QAItem]  # forgetNN_perturbed (or forgetNN): the items to forget
    retain: list[QAItem]  # retain_perturbed: the retain set TOFU evaluates on
    utility: dict[str, list[QAItem]] = field(default_factory=dict)  # real_authors, world_facts
    retain_train: list[QAItem] | None = None  # retainNN, the complement of the forget split
    forget_split: str = "forget10"
    source: str = HUB_NAME
    holdout: list[QAItem] | None = None  # holdoutNN: never-trained items (membership non-members), where present


def load_tofu(source: str | Path = HUB_NAME, forget_split: str = "forget10") -> TofuData:
    """Load `forget_split` (forget01/05/10), the evaluation retain set and the two utility sets.

    From a local directory, the forget file is required; `retain_perturbed` falls back to the
    `retainNN` training set when absent, and a missing utility file leaves its key out.
    """
    forget_split = forget_split.removesuffix("_perturbed")
    if forget_split not in FORGET_SPLITS:
        raise ConfigError(f"unknown TOFU forget split '{forget_split}' (choose from {', '.join(FORGET_SPLITS)})")
    retain_name = FORGET_SPLITS[forget_split]
    local = Path(source)
    if local.exists():
        if not local.is_dir():
            raise DataError(source, "expected a directory holding TOFU's files (forget10_perturbed.json, ...)")
        return _load_local(local, forget_split, retain_name)
    hub = str(source)
    return TofuData(
        forget=load_tofu_set(hub, f"{forget_split}_perturbed"),
        retain=load_tofu_set(hub, "retain_perturbed"),
        utility={key: load_tofu_set(hub, name) for key, name in UTILITY_SETS.items()},
        retain_train=load_tofu_set(hub, retain_name),
        forget_split=forget_split,
        source=hub,
        holdout=_hub_holdout(hub, forget_split),
    )


def _hub_holdout(hub: str, forget_split: str) -> ItemList | None:
    """holdoutNN from the hub, or None where the dataset has no such config."""
    try:
        return load_tofu_set(hub, f"holdout{forget_split.removeprefix('forget')}")
    except DataError:
        return None


def _load_local(root: Path, forget_split: str, retain_name: str) -> TofuData:
    forget = _first_present(root, [f"{forget_split}_perturbed", forget_split])
    if forget is None:
        raise DataError(root, f"no {forget_split}_perturbed.json or {forget_split}.json")
    retain_train = _first_present(root, [retain_name])
    retain = _first_present(root, ["retain_perturbed"]) or retain_train
    if retain is None:
        raise DataError(root, f"no retain_perturbed.json or {retain_name}.json")
    utility = {key: items for key, name in UTILITY_SETS.items() if (items := _first_present(root, [name]))}
    holdout = _first_present(root, [f"holdout{forget_split.removeprefix('forget')}"])
    return TofuData(forget, retain, utility, retain_train, forget_split, str(root), holdout)


def _first_present(root: Path, names: list[str]) -> ItemList | None:
    """Items of the first `name.suffix` file found under `root`, or None."""
    for name in names:
        for suffix in LOCAL_SUFFIXES:
            path = root / f"{name}{suffix}"
            if path.is_file():
                return load_tofu_set(path, name)
    return None


def load_tofu_set(source: str | Path, name: str) -> ItemList:
    """One TOFU file as QA items: a local file path, or the hub dataset `source` with config `name`.

    Each item's `meta` records `tofu_set` (the file's name) and `index` (its row, 0-based), so
    results can be joined with TOFU's own per-item logs, which are keyed by row index.
    """
    if Path(source).is_file():
        items = load_items(source, "qa", mapping=MAPPING)
    else:  # the hub dataset `source` with config `name`
        items = load_items(f"{source}:{name}", "qa", mapping=MAPPING, split="train")
    for index, item in enumerate(items):
        item.meta = {**item.meta, "tofu_set": name, "index": index}
    return items
