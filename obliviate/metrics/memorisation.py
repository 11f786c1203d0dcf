"""Token-level memorisation of an answer under teacher forcing.

Input per item: a boolean array m of length N (the answer tokens), m_t = [argmax_v p(v | x, y_<t) == y_t].

Exact memorisation (Tirumala et al. 2022; open-unlearning "exact_memorization"):

    EM = (1/N) sum_t m_t.

Extraction strength (Carlini et al. 2021, as used by open-unlearning):

    ES = 1 - k*/N,  k* = the smallest k such that m_t holds for every t in [k, N),

i.e. how short a prefix of the answer the model needs before it can complete the rest greedily.
Equivalently ES = (length of the longest all-matching suffix) / N. When even the last token is
wrong, no suffix matches; we take k* = N (only the empty suffix matches) and so ES = 0.
(open-unlearning returns 1/N in that case.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _as_match(match: ArrayLike, i: int) -> np.ndarray:
    values = np.asarray(match, dtype=bool).ravel()
    if values.size == 0:
        raise ValueError(f"item {i} has no answer tokens")
    return values


def exact_memorisation(argmax_match: Sequence[ArrayLike]) -> np.ndarray:
    """Per-item fraction of answer tokens whose teacher-forced argmax equals the label, shape (n,)."""
    return np.array([_as_match(m, i).mean() for i, m in enumerate(argmax_match)], dtype=np.float64)


def extraction_strength(argmax_match: Sequence[ArrayLike]) -> np.ndarray:
    """Per-item ES = 1 - k*/N, with ES = 0 when the last token does not match; shape (n,)."""
    out = np.empty(len(argmax_match), dtype=np.float64)
    for i, match in enumerate(argmax_match):
        m = _as_match(match, i)
        wrong = np.flatnonzero(~m)
        # k* is one past the last mismatch (0 if every token matches).
        k_star = wrong[-1] + 1 if wrong.size else 0
        out[i] = 1.0 - k_star / m.size
    return out
