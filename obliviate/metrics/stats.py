"""Bootstrap confidence intervals and the per-metric summary every suite reports.

`bootstrap_ci` is the percentile bootstrap (Efron 1979) that MUSE applies to its ROUGE means:
resample the n per-item values with replacement n_boot times, compute the statistic on each resample,
and take the alpha/2 and 1 - alpha/2 percentiles. NaNs are dropped first, so one failed item does
not poison an interval; the summary's `n` counts the non-NaN values actually used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

# Resample in blocks of at most this many values, so a large n does not need n_boot * n memory at once.
_BLOCK_VALUES = 1 << 22


def _drop_nan(values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


def _stat_rows(samples: np.ndarray, stat: Callable) -> np.ndarray:
    """Apply `stat` to each row of (B, n) `samples`; vectorised when `stat` takes an axis."""
    try:
        return np.asarray(stat(samples, axis=1), dtype=np.float64)
    except TypeError:
        return np.array([stat(row) for row in samples], dtype=np.float64)


def bootstrap_ci(
    values: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable = np.mean,
) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) interval of `stat` over the non-NaN values.

    Returns (nan, nan) when no value is left, and (v, v) for a single value.
    """
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    data = _drop_nan(values)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BLOCK_VALUES // data.size)
    boot = []
    for start in range(0, n_boot, rows_per_block):
        rows = min(rows_per_block, n_boot - start)
        idx = rng.integers(0, data.size, size=(rows, data.size))  # (B, n)
        boot.append(_stat_rows(data[idx], stat))
    low, high = np.percentile(np.concatenate(boot), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def summarize(values: ArrayLike, higher_is_better: bool | None, **bootstrap_kwargs) -> dict:
    """{"mean", "ci_low", "ci_high", "n", "higher_is_better"} over the non-NaN values."""
    data = _drop_nan(values)
    ci_low, ci_high = bootstrap_ci(data, **bootstrap_kwargs)
    return {
        "mean": float(data.mean()) if data.size else float("nan"),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "n": int(data.size),
        "higher_is_better": higher_is_better,
    }
