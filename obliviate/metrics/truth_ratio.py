"""Truth ratio (TOFU, Maini et al. 2024): does the model prefer the correct answer over wrong ones?

Direction used everywhere in this package: R is PERTURBED over PARAPHRASED,

    R < 1  the model prefers the (paraphrased) correct answer,
    R = 1  it cannot tell correct from perturbed,
    R > 1  it prefers the wrong answers.

Per item, with P = exp(-mean answer-token NLL) and k perturbed answers, two forms are in circulation:

    arithmetic  R = (1/k) sum_j P(pert_j) / P(para)             the formula in the TOFU paper
    geometric   R = (prod_j P(pert_j))^(1/k) / P(para)          open-unlearning, and TOFU's logs
                  = exp(-(1/k) sum_j nll_pert_j) / exp(-nll_para)

TOFU's own aggregation script (`aggregate_eval_stat.py`), which produced the published numbers,
computes R_script = exp(mean_j nll_pert_j - nll_para) = 1 / R_geometric: the geometric form written
upside down. Its per-set scores are therefore, in our direction,

    forget set           mean(min(R, 1/R))     symmetric, so the direction does not matter
    retain, real authors,
    world facts          mean(max(0, 1 - R))   = the script's mean(max(0, 1 - 1/R_script))

and forget quality runs a KS test on the per-item forget-set R, which is invariant under R -> 1/R.
Parity with the TOFU logs needs the geometric form. By AM-GM, R_arithmetic >= R_geometric.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp

from obliviate.metrics.probability import _check_pair


def truth_ratio_geometric(para_mean_nll: ArrayLike, pert_mean_nll: ArrayLike) -> np.ndarray:
    """Per-item R = geomean_j P(pert_j) / P(para); shapes (n,) and (n, k) -> (n,)."""
    para = np.asarray(para_mean_nll, dtype=np.float64)
    pert = np.asarray(pert_mean_nll, dtype=np.float64)
    _check_pair(para, pert)
    return np.exp(para - pert.mean(axis=1))


def truth_ratio_arithmetic(para_mean_nll: ArrayLike, pert_mean_nll: ArrayLike) -> np.ndarray:
    """Per-item R = mean_j P(pert_j) / P(para); shapes (n,) and (n, k) -> (n,)."""
    para = np.asarray(para_mean_nll, dtype=np.float64)
    pert = np.asarray(pert_mean_nll, dtype=np.float64)
    _check_pair(para, pert)
    # log mean_j exp(nll_para - nll_pert_j), in log space so tiny probabilities do not underflow.
    log_ratio = logsumexp(para[:, None] - pert, axis=1) - np.log(pert.shape[1])
    return np.exp(log_ratio)


def forget_truth_values(ratio: ArrayLike) -> np.ndarray:
    """Per-item min(R, 1/R): 1 when correct and perturbed answers are equally likely."""
    r = np.asarray(ratio, dtype=np.float64)
    return np.minimum(r, 1.0 / r)


def retain_truth_values(ratio: ArrayLike) -> np.ndarray:
    """Per-item max(0, 1 - R), R perturbed over paraphrased: 1 when the correct answer dominates."""
    return np.maximum(0.0, 1.0 - np.asarray(ratio, dtype=np.float64))


def forget_truth_score(ratio: ArrayLike) -> float:
    """mean(min(R, 1/R)), TOFU's forget-set truth ratio."""
    return float(np.mean(forget_truth_values(ratio)))


def retain_truth_score(ratio: ArrayLike) -> float:
    """mean(max(0, 1 - R)), TOFU's truth ratio on retain, real-author and world-fact sets."""
    return float(np.mean(retain_truth_values(ratio)))
