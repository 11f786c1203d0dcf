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


# -- intervals over seeds ---------------------------------------------------------------------------------------
#
# Each seed of the built-in world is an independent replicate (a new world, target, oracle and run),
# so the spread over seeds gets a Student-t interval. A t-interval on the metric's own scale can leave
# the metric's range (a utility of 1.16, a negative time, a p-value of 37), so it is computed on a scale
# where the range is the whole real line and mapped back:
#
#   "unit"      metrics in [0, 1] (probabilities, ROUGE, utility, AUC, KS D): logit
#   "pvalue"    forget quality, a p-value in (0, 1]: log10, the upper end capped at 1; centre: geometric mean
#   "positive"  seconds, megabytes: log; centre: geometric mean
#   "privleak"  MUSE PrivLeak in [-100, inf): log(x + 100)
#   "real"      anything else (attack recovery): the plain t-interval
#
# The centre is the arithmetic mean, except on the log scales (p-values, times, memory), where it is
# the geometric mean, the centre of the log-scale interval. The interval need not be symmetric about it.
# A value at 0 or 1 has no logit: it is moved in by eps = min(UNIT_EPS, half the smallest distance of
# another value to that bound) first, and an interval that reaches the moved-in bound reaches the bound.

SEED_SCALES = ("unit", "pvalue", "positive", "privleak", "real")
SEED_CONFIDENCE = 0.95
SEED_CI_METHOD = ("95% Student-t interval over seeds on a scale that keeps it in range, mapped back: logit for "
                  "[0, 1] metrics (centre: mean), log10 for forget quality and log for times and memory (centre: "
                  "geometric mean), log(x + 100) for PrivLeak; no interval from a single seed")
UNIT_EPS = 1e-2  # the most a value at 0 or 1 is moved in before the logit
_TINY = float(np.finfo(float).tiny)  # a p-value of exactly 0 still has a logarithm
_KEY_SCALES = {"forget_quality": "pvalue", "privleak": "privleak", "unlearn_seconds": "positive",
               "peak_memory_mb": "positive", "seconds": "positive", "eval_seconds": "positive"}


def seed_scale(key: str, values: ArrayLike | None = None) -> str:
    """The scale of an aggregate named `key` (a results.json or leaderboard key).

    Known keys have their own; any other key is "unit" when every value lies in [0, 1] (every per-set
    aggregate of the suites does), else "real".
    """
    name = key.rsplit("/", 1)[-1]
    if key in _KEY_SCALES or name in _KEY_SCALES:
        return _KEY_SCALES.get(key, _KEY_SCALES.get(name, "real"))
    if values is None:
        return "unit"
    data = _drop_nan(values)
    return "unit" if data.size == 0 or (data.min() >= 0 and data.max() <= 1) else "real"


def _unit_eps(x: np.ndarray) -> float:
    """Half the smallest distance of an inner value to 0 or 1, at most UNIT_EPS: values at a bound move in by it."""
    inner = np.minimum(x, 1 - x)
    inner = inner[inner > 0]
    return float(min(UNIT_EPS, inner.min() / 2)) if inner.size else UNIT_EPS


def _t_half(z: np.ndarray, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, z.size - 1)) * float(z.std(ddof=1)) / np.sqrt(z.size)


def seed_interval(values: ArrayLike, scale: str = "real", confidence: float = SEED_CONFIDENCE) -> dict:
    """{"mean", "ci_low", "ci_high", "sd", "n", "scale"} over the finite values (None counts as missing).

    The interval is the t-interval on the scale's transform, mapped back (see SEED_SCALES above); it
    always lies within the metric's range. One value: no interval (nan). "sd" is the sample sd on
    the metric's own scale; for p-values "sd_log10" is added.
    """
    if scale not in SEED_SCALES:
        raise ValueError(f"unknown scale {scale!r}; one of {', '.join(SEED_SCALES)}")
    x = np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "sd": float("nan"), "n": n,
           "scale": scale}
    if n == 0:
        return out
    if scale == "unit":
        x = np.clip(x, 0.0, 1.0)
    elif scale == "pvalue":
        x = np.clip(x, 0.0, 1.0)
    elif scale == "positive":
        x = np.maximum(x, 0.0)
    elif scale == "privleak":
        x = np.maximum(x, -100.0)
    out["sd"] = float(x.std(ddof=1)) if n > 1 else float("nan")
    if scale == "pvalue":
        z = np.log10(np.maximum(x, _TINY))
        out["mean"] = float(10 ** z.mean())
        out["sd_log10"] = float(z.std(ddof=1)) if n > 1 else float("nan")
    elif scale == "positive" and x.min() > 0:
        out["mean"] = float(np.exp(np.log(x).mean()))
    else:
        out["mean"] = float(x.mean())
    if n == 1:
        return out
    if np.all(x == x[0]):  # every seed agrees: the interval is that value (the spread is 0 on every scale)
        out["ci_low"] = out["ci_high"] = float(x[0])
        return out
    low, high = _mapped_interval(x, scale, confidence)
    out["ci_low"], out["ci_high"] = low, high
    return out


def _mapped_interval(x: np.ndarray, scale: str, confidence: float) -> tuple[float, float]:
    """The t-interval of the transformed values, mapped back to the metric's scale."""
    if scale == "real":
        half = _t_half(x, confidence)
        return float(x.mean() - half), float(x.mean() + half)
    if scale == "pvalue":
        z = np.log10(np.maximum(x, _TINY))
        half = _t_half(z, confidence)
        return float(10 ** (z.mean() - half)), float(min(1.0, 10 ** (z.mean() + half)))
    if scale in ("positive", "privleak"):
        shift = 100.0 if scale == "privleak" else 0.0
        y = x + shift
        positive = y[y > 0]
        floor = positive.min() / 2 if positive.size else 1e-12  # a value at the bound sits below the smallest other
        z = np.log(np.maximum(y, floor))
        half = _t_half(z, confidence)
        low, high = np.exp(z.mean() - half), np.exp(z.mean() + half)
        if y.min() <= 0 and low <= floor:  # a value at the bound: the interval reaches it
            low = 0.0
        return float(max(low - shift, -shift)), float(high - shift)
    eps = _unit_eps(x)
    z = np.log(np.clip(x, eps, 1 - eps)) - np.log1p(-np.clip(x, eps, 1 - eps))  # logit
    half = _t_half(z, confidence)
    low, high = (1 / (1 + np.exp(-(z.mean() + s * half))) for s in (-1, 1))
    # where a seed sits at a bound and the interval reaches the moved-in bound, it reaches the bound itself
    low = 0.0 if x.min() == 0 and low <= eps * (1 + 1e-9) else low
    high = 1.0 if x.max() == 1 and high >= 1 - eps * (1 + 1e-9) else high
    return float(low), float(high)
