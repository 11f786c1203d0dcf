"""Membership-inference scores and their summaries.

Every per-item score here is oriented so that HIGHER means "more likely a training member". Inputs
are lists of per-token log-prob arrays (ragged: one array per text, log p(x_t | x_<t)).

    loss       mean_t log p(x_t)                                  (Yeom et al. 2018)
    zlib       mean_t log p(x_t) / zlib_bytes(text)               (Carlini et al. 2021: log-perplexity
                                                                   over zlib entropy, negated)
    min_k      mean of the lowest k-fraction of log p(x_t)         (Shi et al. 2024, Min-K%)
    min_k++    mean of the lowest k-fraction of z_t,               (Zhang et al. 2024, Min-K%++)
               z_t = (log p(x_t) - mu_t) / sqrt(max(var_t, 1e-6)), mu_t = E_v[log p_v],
               var_t = E_v[(log p_v)^2] - mu_t^2 under the model's next-token distribution
    reference  mean_t log p(x_t) - mean_t log p_ref(x_t)          (Carlini et al. 2021)

The lowest-k selection keeps int(k * T) tokens, as the Min-K% and MUSE code do, but at least one.

Summaries: `mia_auc` (members labelled 1, so 0.5 means indistinguishable) and, for MUSE (Shi et al.
2024), `muse_auc` and `muse_privleak`. MUSE labels forget 0 and holdout 1 and feeds roc_curve
-Min-40%, where its Min-40% is minus the mean of the lowest 40% log-probs; -Min-40% is exactly our
`min_k_score(k=0.4)`. A model that memorised the forget set gets a MUSE AUC near 0, a retrained model
one near 0.5, and PrivLeak = (AUC_unlearned - AUC_retrained) / AUC_retrained * 100 is best near 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

Ragged = Sequence[ArrayLike]


def _tokens(values: ArrayLike, i: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"item {i} has no tokens")
    return arr


def _check_lengths(*lists: Sequence) -> None:
    lengths = {len(x) for x in lists}
    if len(lengths) != 1:
        raise ValueError(f"inputs have different numbers of items: {sorted(lengths)}")


def _lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest int(k * T) values (at least one)."""
    n_keep = max(1, int(values.size * k))
    return float(np.sort(values)[:n_keep].mean())


def _check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")


def loss_score(logprobs: Ragged) -> np.ndarray:
    """Mean token log-prob per item (minus the loss), shape (n,)."""
    return np.array([_tokens(lp, i).mean() for i, lp in enumerate(logprobs)], dtype=np.float64)


def zlib_score(logprobs: Ragged, texts: Sequence[str]) -> np.ndarray:
    """Mean token log-prob divided by the zlib-compressed size of the text in bytes, shape (n,).

    The standard zlib ratio is log-perplexity / zlib entropy (lower = member); this is its negation.
    """
    _check_lengths(logprobs, texts)
    sizes = np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=np.float64)
    return loss_score(logprobs) / sizes


def min_k_score(logprobs: Ragged, k: float = 0.4) -> np.ndarray:
    """Min-K%: mean of the lowest k fraction of token log-probs per item, shape (n,)."""
    _check_k(k)
    return np.array([_lowest_mean(_tokens(lp, i), k) for i, lp in enumerate(logprobs)], dtype=np.float64)


def min_k_plus_plus_score(logprobs: Ragged, mu: Ragged, var: Ragged, k: float = 0.4) -> np.ndarray:
    """Min-K%++: mean of the lowest k fraction of standardised token log-probs per item, shape (n,).

    `mu` and `var` are the per-token mean and variance of log p under the model's next-token
    distribution, aligned with `logprobs`.
    """
    _check_k(k)
    _check_lengths(logprobs, mu, var)
    out = np.empty(len(logprobs), dtype=np.float64)
    for i, (lp, m, v) in enumerate(zip(logprobs, mu, var, strict=True)):
        lp, m, v = _tokens(lp, i), _tokens(m, i), _tokens(v, i)
        if not lp.shape == m.shape == v.shape:
            raise ValueError(f"item {i}: logprobs, mu, var lengths differ ({lp.size}, {m.size}, {v.size})")
        z = (lp - m) / np.sqrt(np.maximum(v, 1e-6))
        out[i] = _lowest_mean(z, k)
    return out


def reference_score(logprobs: Ragged, ref_logprobs: Ragged) -> np.ndarray:
    """Mean log-prob under the target minus mean log-prob under a reference model, shape (n,)."""
    _check_lengths(logprobs, ref_logprobs)
    return loss_score(logprobs) - loss_score(ref_logprobs)


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of scoring `labels` (1 positive, 0 negative) by `scores`, from (0, 0) to (1, 1).

    The points of `sklearn.metrics.roc_curve(labels, scores)` (one per distinct score, collinear ones
    dropped), which tests/test_metrics.py checks; computed here so that evaluation does not import
    scikit-learn (about half a second of every `obliviate eval`).
    """
    y, s = np.asarray(labels, dtype=np.float64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(s, kind="mergesort")[::-1]
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    if fps.size > 2:
        corners = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[corners], tps[corners]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1]


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under `roc_curve(labels, scores)` by the trapezoidal rule (ties count one half)."""
    fpr, tpr = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def mia_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> dict[str, float]:
    """{"auc", "tpr_at_1pct_fpr"} of separating members (label 1) from non-members by score."""
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("need at least one member and one non-member score")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    fpr, tpr = roc_curve(labels, np.concatenate([members, nonmembers]))
    # roc_curve starts at (0, 0), so some FPR <= 1% always exists.
    return {"auc": float(np.trapezoid(tpr, fpr)), "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max())}


def muse_auc(forget_scores: ArrayLike, holdout_scores: ArrayLike) -> float:
    """MUSE's AUC: forget labelled 0, holdout 1, member-oriented scores (e.g. `min_k_score(k=0.4)`).

    Near 0 for a model that memorised the forget set, near 0.5 for one that never saw it.
    """
    forget = np.asarray(forget_scores, dtype=np.float64).ravel()
    holdout = np.asarray(holdout_scores, dtype=np.float64).ravel()
    if forget.size == 0 or holdout.size == 0:
        raise ValueError("need at least one forget and one holdout score")
    labels = np.concatenate([np.zeros(forget.size), np.ones(holdout.size)])
    return roc_auc(labels, np.concatenate([forget, holdout]))


def muse_privleak(auc_unlearned: float, auc_retrained: float) -> float:
    """MUSE PrivLeak in percent: (AUC_u - AUC_r) / AUC_r * 100; best near 0."""
    if auc_retrained <= 0:
        raise ValueError(f"auc_retrained must be > 0, got {auc_retrained}")
    return (auc_unlearned - auc_retrained) / auc_retrained * 100.0
