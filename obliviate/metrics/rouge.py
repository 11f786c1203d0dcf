"""ROUGE-L between references and generations, per item.

Uses Google's `rouge_score` package exactly as TOFU and MUSE do:
`RougeScorer(['rougeL'], use_stemmer=...).score(reference, prediction)`, with the reference first
(the order decides which side is "recall"). TOFU reports recall with `use_stemmer=True`; MUSE reports
F1 with `use_stemmer=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    # Building a scorer loads the Porter stemmer; do it once per setting.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(
    references: Sequence[str], predictions: Sequence[str], use_stemmer: bool = True
) -> dict[str, np.ndarray]:
    """Per-item ROUGE-L {"recall", "f1"}, each of shape (n,)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    scorer = _scorer(use_stemmer)
    scores = [scorer.score(ref, pred)["rougeL"] for ref, pred in zip(references, predictions, strict=True)]
    return {
        "recall": np.array([s.recall for s in scores], dtype=np.float64),
        "f1": np.array([s.fmeasure for s in scores], dtype=np.float64),
    }
