"""QA tasks shipped with the project, for unlearning real knowledge in pretrained models.

`real_facts` (in the spirit of RWKU, Jin et al. 2024, "Real-World Knowledge Unlearning"): facts about
famous real people that SmolLM2-135M-Instruct (`gguf:smollm2`, see `obliviate.models.gguf`) answers
correctly, one JSON Lines file per set in `real_facts/`:

- `forget.jsonl`: the targets to unlearn (Albert Einstein, William Shakespeare, Leonardo da Vinci);
- `neighbours.jsonl`: related people (other scientists, writers and painters), which an unlearned model
  should still know (RWKU's neighbour set);
- `general.jsonl`: general knowledge (capitals, numbers, science), the utility set.

Each line is a `QAItem`: a full-sentence `answer` in the style the model answers in, a reworded
`paraphrased_answer`, three `perturbed_answers` (the same sentence with a wrong value), a reworded
question in `paraphrased_questions`, the person or topic as `subject`, and in `meta` the bare value
(`short_answer`) and the spellings accepted as correct (`aliases`). An item was kept only if the model's
greedy answer under its chat template states an alias in its first sentence (`answer_matches`,
`first_sentence`); `scripts/real_facts.py`
re-checks the sets against a model and regenerates them from the candidate pool.

The directory works wherever the CLI takes data: `--forget obliviate/data/tasks/real_facts/forget.jsonl`,
or `load_items(task_dir("real_facts"), split="forget")`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from obliviate.data.readers import ItemList, load_items
from obliviate.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent
TASK_SPLITS: dict[str, tuple[str, ...]] = {"real_facts": ("forget", "neighbours", "general")}

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def task_dir(name: str) -> Path:
    """The directory of the shipped task `name` (one `<split>.jsonl` per set)."""
    if name not in TASK_SPLITS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(sorted(TASK_SPLITS))})")
    return TASKS_DIR / name


def load_task(name: str, split: str) -> ItemList:
    """The QA items of one set of a shipped task, e.g. `load_task("real_facts", "forget")`."""
    if split not in TASK_SPLITS.get(name, (split,)):
        raise ConfigError(f"task '{name}' has no split '{split}' (splits: {', '.join(TASK_SPLITS[name])})")
    return load_items(task_dir(name) / f"{split}.jsonl", kind="qa")


def normalise_answer(text: str) -> str:
    """Lower case, Unicode-compatible forms ("²" -> "2"), punctuation as spaces, number words as digits.

    Numbers stay whole ("18.0" is one word, "1,000" is "1000"), so "0" does not match "-18.0°C".
    """
    text = unicodedata.normalize("NFKC", text).lower()
    words = [w.replace(",", "") for w in re.findall(r"\d+(?:[.,]\d+)+|\w+", text)]
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def first_sentence(text: str) -> str:
    """`text` up to its first line break or sentence end (".", "!" or "?" followed by a space and a
    capital, a digit or a quote).

    Small models often state an answer and then contradict it; only the first sentence is judged.
    """
    line = text.strip().split("\n", 1)[0]
    return re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])", line, maxsplit=1)[0]


def answer_matches(generation: str, aliases: Sequence[str]) -> bool:
    """Whether `generation` states any of `aliases`, compared as normalised whole words.

    An alias written with symbols or digits inside a word ("E=mc^2", "H2O") is also matched with all
    spaces removed, so "E = mc²" counts for "E=mc^2".
    """
    said = f" {normalise_answer(generation)} "
    compact = said.replace(" ", "")
    for alias in aliases:
        norm = normalise_answer(alias)
        if norm and f" {norm} " in said:
            return True
        symbolic = re.search(r"[^\w\s]|\d[a-z]|[a-z]\d", alias.lower()) is not None
        if symbolic and norm and norm.replace(" ", "") in compact:
            return True
    return False


def item_aliases(item) -> list[str]:
    """The accepted spellings of an item's answer: `meta["aliases"]`, else the answer itself."""
    return list(item.meta.get("aliases") or [item.answer])
