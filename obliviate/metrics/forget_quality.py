"""Forget quality (TOFU, Maini et al. 2024): is the unlearned model indistinguishable from the oracle?

    forget_quality = p-value of the two-sample Kolmogorov-Smirnov test between the per-item
                     forget-set truth ratios of the model under test and of the oracle
                     (a model trained without the forget set).

Higher is better. The p-value depends on the sample sizes, so it cannot be compared across forget
sizes; the KS statistic and both n are returned beside it. KS only uses the ranks of the values, so
passing R or 1/R (TOFU's script uses the latter) gives the same result.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp


def forget_quality(tr_model: ArrayLike, tr_oracle: ArrayLike) -> dict:
    """{"forget_quality", "ks_statistic", "n_model", "n_oracle"} from per-item truth ratios."""
    model = np.asarray(tr_model, dtype=np.float64).ravel()
    oracle = np.asarray(tr_oracle, dtype=np.float64).ravel()
    for name, values in (("tr_model", model), ("tr_oracle", oracle)):
        if values.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} has non-finite values")
    # Same call as TOFU's aggregate_eval_stat.py (default method="auto").
    result = ks_2samp(model, oracle)
    return {
        "forget_quality": float(result.pvalue),
        "ks_statistic": float(result.statistic),
        "n_model": int(model.size),
        "n_oracle": int(oracle.size),
    }
