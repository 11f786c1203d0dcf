"""WMDP (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
arXiv:2403.03218).

WMDP measures hazardous knowledge with four-choice questions and unlearns it from text corpora:

- the questions: hub `cais/wmdp`, configs `wmdp-bio` and `wmdp-cyber` (split `test`), columns
  `question`, `choices` (four strings) and `answer` (the index of the right one). The MMLU subsets
  the paper reports beside them (college biology, virology, college computer science, computer
  security) have the same columns in `cais/mmlu`. Evaluation runs them through lm-evaluation-harness
  (`evals/wmdp.py`): the harness's own `wmdp_bio`, `wmdp_cyber` and `mmlu_*` tasks from the hub, or
  the same prompts over a local copy.
- the corpora: `bio-forget-corpus.jsonl` (PubMed papers; gated on the hub as
  `cais/wmdp-bio-forget-corpus`, granted on request), `cyber-forget-corpus.jsonl`, and the retain
  corpora `bio-retain-corpus.jsonl`, `cyber-retain-corpus.jsonl` (`cais/wmdp-corpora`), each row with
  a `text` column; RMU's code reads them from a local `data/` folder, and so does this adapter.

A local copy is one folder holding any of `wmdp-bio.jsonl`, `wmdp-cyber.jsonl` (`.json` and
`.parquet` are read too), `mmlu/<subject>.jsonl` and the corpus files above.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.data.readers import read_rows
from obliviate.data.schema import TextPassage
from obliviate.errors import DataError

HUB_NAME = "cais/wmdp"
MC_SETS = {"wmdp_bio": "wmdp-bio", "wmdp_cyber": "wmdp-cyber"}  # lm-eval task -> file stem / hub config
MMLU_SUBSETS = ("college_biology", "virology", "college_computer_science", "computer_security")
FORGET_CORPORA = ("bio-forget-corpus", "cyber-forget-corpus")
RETAIN_CORPORA = ("bio-retain-corpus", "cyber-retain-corpus")
MC_COLUMNS = ("question", "choices", "answer")
SUFFIXES = (".jsonl", ".json", ".parquet")


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _root(path: str | Path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise DataError(path, "expected a folder holding WMDP's files (wmdp-bio.jsonl, cyber-forget-corpus.jsonl, ...)")
    return root


def load_wmdp_corpora(path: str | Path) -> tuple[list[TextPassage], list[TextPassage]]:
    """(forget passages, retain passages) from the corpus files of a local copy.

    At least one forget corpus is required; the retain corpora are optional.
    """
    root = _root(path)
    forget = [p for name in FORGET_CORPORA if (p := _find(root, name))]
    if not forget:
        raise DataError(root, "no WMDP forget corpus: unlearning needs bio-forget-corpus.jsonl (gated: "
                              "cais/wmdp-bio-forget-corpus) and/or cyber-forget-corpus.jsonl (cais/wmdp-corpora)")
    retain = [p for name in RETAIN_CORPORA if (p := _find(root, name))]
    return _corpus(forget), _corpus(retain)


def _corpus(paths: list[Path]) -> list[TextPassage]:
    out = []
    for path in paths:
        for index, (where, line, row) in enumerate(read_rows(path)):
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DataError(where, "field 'text' missing", line)
            out.append(TextPassage(text, meta={"wmdp": path.stem, "index": index}))
    return out


def wmdp_mc_files(path: str | Path) -> dict[str, Path]:
    """{lm-eval task name: local file} for the question files of a local copy, each checked for
    WMDP's columns; `wmdp-bio` and `wmdp-cyber` are required, the MMLU subsets optional."""
    root = _root(path)
    files: dict[str, Path] = {}
    for task, stem in MC_SETS.items():
        found = _find(root, stem)
        if found is None:
            raise DataError(root, f"no {stem}.jsonl (WMDP's {stem} questions: question, choices, answer)")
        files[task] = found
    for subject in MMLU_SUBSETS:
        if found := _find(root / "mmlu", subject):
            files[f"mmlu_{subject}"] = found
    for found in files.values():
        _check_columns(found)
    return files


def _check_columns(path: Path) -> None:
    rows = read_rows(path)
    if not rows:
        raise DataError(path, "no rows")
    for where, line, row in rows:
        missing = [c for c in MC_COLUMNS if not isinstance(row, dict) or row.get(c) is None]
        if missing:
            raise DataError(where, f"field '{missing[0]}' missing", line)
        if not isinstance(row["choices"], list) or not isinstance(row["answer"], int):
            raise DataError(where, "expected 'choices' a list of strings and 'answer' the index of the right one", line)
