"""ROUGE-L between references and generations, per item.

Uses Google's `rouge_score` package exactly as TOFU and MUSE do:
`RougeScorer(['rougeL'], use_stemmer=...).score(reference, prediction)`, with the reference first
(the order decides which side is "recall"). TOFU reports recall with `use_stemmer=True`; MUSE reports
F1 with `use_stemmer=False`.

The scorer tokenizes with `rouge_score`'s own tokenizer and stemmer, and remembers what it did: each
text's tokens and each word's stem are computed once per process (a suite scores the same answer and
the same generation against several texts, and the same words recur across items).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer, tokenize, tokenizers

_REMEMBERED = 1 << 16  # texts (and words) whose tokens (stems) each tokenizer keeps


class _RememberingTokenizer(tokenizers.Tokenizer):
    """`rouge_score`'s default tokenizer (lower-case, alphanumeric words, Porter stems of words longer
    than three letters), with each text's tokens and each word's stem remembered."""

    def __init__(self, use_stemmer: bool) -> None:
        from nltk.stem import porter  # as rouge_score's default tokenizer stems

        self._stemmer = _Stems(porter.PorterStemmer()) if use_stemmer else None
        self._remembered = lru_cache(maxsize=_REMEMBERED)(self._tokenize)

    def _tokenize(self, text: str) -> list[str]:
        return tokenize.tokenize(text, self._stemmer)

    def tokenize(self, text: str) -> list[str]:
        return self._remembered(text)


class _Stems:
    """A stemmer that remembers each word's stem."""

    def __init__(self, stemmer) -> None:
        self.stem = lru_cache(maxsize=_REMEMBERED)(stemmer.stem)


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    # Building a scorer loads the Porter stemmer; do it once per setting.
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RememberingTokenizer(use_stemmer))


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
