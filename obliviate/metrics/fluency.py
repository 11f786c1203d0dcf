"""Fluency of generations: does an unlearned model still write text, or gibberish?

open-unlearning scores forget-set generations with a gibberish classifier (a text classifier whose
"clean" probability is the score). That needs a model download, so here it is pluggable: any
callable texts -> P(fluent) per text (`fluency_scores`), for example a `transformers` pipeline of
that classifier. The model-free measure always reported is the repetition rate of Welleck et al.
2020, the share of a text's word n-grams that repeat an earlier one:

    rep_n(text) = 1 − |distinct n-grams| / |n-grams|,   n = 2

0 for text without repeats; collapsed generations ("the the the ...") approach 1. Texts with fewer
than n words score 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def repetition_rate(texts: Sequence[str], n: int = 2) -> np.ndarray:
    """(len(texts),): rep_n of each text (lower-cased whitespace words)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = []
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        out.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
    return np.asarray(out, dtype=float)


def fluency_scores(texts: Sequence[str], classifier: Callable[[list[str]], Sequence[float]]) -> np.ndarray:
    """(len(texts),): a fluency classifier's P(fluent) per text, checked to lie in [0, 1]."""
    scores = np.asarray(classifier(list(texts)), dtype=float).ravel()
    if scores.shape != (len(texts),) or np.any((scores < 0) | (scores > 1)):
        raise ValueError("the fluency classifier must return one probability in [0, 1] per text")
    return scores
