"""Per-item answer probabilities from answer-token negative log-likelihoods.

TOFU (Maini et al. 2024) and open-unlearning score an answer a to question q by its length-normalised
probability

    P(a | q) = exp(-(1/|a|) sum_t NLL_t),

where only the answer tokens are labelled. On the real-author and world-fact sets, TOFU normalises it
over the answer options:

    P_norm(a) = P(a) / (P(a) + sum_j P(perturbed_j)).

Inputs are per-item mean NLLs (what TOFU's logs call `avg_gt_loss`); `mean_nll` turns ragged per-token
log-probs into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp


def mean_nll(logprobs_list: Sequence[ArrayLike]) -> np.ndarray:
    """Per-item mean negative log-likelihood from a list of per-token log-prob arrays (ragged)."""
    out = np.empty(len(logprobs_list), dtype=np.float64)
    for i, logprobs in enumerate(logprobs_list):
        values = np.asarray(logprobs, dtype=np.float64).ravel()
        if values.size == 0:
            raise ValueError(f"item {i} has no answer tokens")
        out[i] = -values.mean()
    return out


def answer_probability(mean_nll: ArrayLike) -> np.ndarray:
    """exp(-mean NLL) per item, shape (n,)."""
    return np.exp(-np.asarray(mean_nll, dtype=np.float64))


def option_normalised_probability(true_mean_nll: ArrayLike, perturbed_mean_nll: ArrayLike) -> np.ndarray:
    """P(a) / (P(a) + sum_j P(perturbed_j)) per item, with P = exp(-mean NLL).

    `true_mean_nll` has shape (n,), `perturbed_mean_nll` shape (n, k). Computed as a softmax over
    the k + 1 options in log space, so large losses do not underflow to 0/0.
    """
    true_nll = np.asarray(true_mean_nll, dtype=np.float64)
    pert_nll = np.asarray(perturbed_mean_nll, dtype=np.float64)
    _check_pair(true_nll, pert_nll)
    log_p = -np.concatenate([true_nll[:, None], pert_nll], axis=1)  # (n, k + 1)
    return np.exp(log_p[:, 0] - logsumexp(log_p, axis=1))


def _check_pair(single: np.ndarray, options: np.ndarray) -> None:
    """Shapes: `single` (n,) and `options` (n, k) with k >= 1."""
    if single.ndim != 1 or options.ndim != 2 or options.shape[0] != single.shape[0] or options.shape[1] == 0:
        raise ValueError(f"expected shapes (n,) and (n, k>=1), got {single.shape} and {options.shape}")
