"""Intervals over seeds (`metrics.stats.seed_interval`) stay within each metric's range.

A Student-t interval on the metric's own scale leaves it with few seeds (a utility of 1.16, a
negative time, a p-value of 37); the interval on the transformed scale, mapped back, never does.
The edge cases: every seed equal, p-values near 1, times near 0, values at the bounds of [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from obliviate.comparison import aggregate_runs
from obliviate.io import write_json
from obliviate.metrics.stats import SEED_SCALES, seed_interval, seed_scale

RANGES = {"unit": (0.0, 1.0), "pvalue": (0.0, 1.0), "positive": (0.0, math.inf), "privleak": (-100.0, math.inf),
          "real": (-math.inf, math.inf)}


def _in_range(res: dict, scale: str) -> None:
    lo, hi = RANGES[scale]
    assert lo <= res["ci_low"] <= res["mean"] <= res["ci_high"] <= hi, res


@pytest.mark.parametrize("scale", SEED_SCALES)
def test_all_seeds_equal_give_a_point_interval(scale):
    value = {"unit": 0.37, "pvalue": 0.2, "positive": 12.5, "privleak": -4.0, "real": -1.5}[scale]
    res = seed_interval([value] * 3, scale)
    assert res["mean"] == pytest.approx(value) and res["ci_low"] == res["ci_high"] == pytest.approx(value)
    assert res["sd"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("values", [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
def test_every_seed_at_a_bound_gives_the_bound(values):
    res = seed_interval(values, "unit")
    assert res["ci_low"] == res["ci_high"] == values[0]


def test_p_values_near_1_stay_at_most_1():
    res = seed_interval([0.95, 0.99, 1.0], "pvalue")
    _in_range(res, "pvalue")
    assert res["ci_high"] == 1.0
    assert res["mean"] == pytest.approx((0.95 * 0.99) ** (1 / 3))  # the geometric mean
    wide = seed_interval([1e-6, 0.5, 0.9], "pvalue")  # a t-interval of log10 reaching log10 p = 1.6
    _in_range(wide, "pvalue")


def test_times_near_0_stay_positive():
    res = seed_interval([1e-4, 3e-4, 2e-6], "positive")
    _in_range(res, "positive")
    assert res["ci_low"] > 0
    plain = seed_interval([1e-4, 3e-4, 2e-6], "real")
    assert plain["ci_low"] < 0  # what the plain t-interval would report: a negative time
    with_zero = seed_interval([0.0, 0.5, 0.7], "positive")
    _in_range(with_zero, "positive")
    assert with_zero["ci_low"] == 0.0


def test_unit_metrics_stay_in_0_1():
    utility = seed_interval([0.85, 0.95, 0.99], "unit")  # the plain t-interval reaches 1.15
    _in_range(utility, "unit")
    assert seed_interval([0.85, 0.95, 0.99], "real")["ci_high"] > 1
    rouge = seed_interval([0.0, 0.02, 0.05], "unit")  # the plain one goes below 0
    _in_range(rouge, "unit")
    assert rouge["ci_low"] == 0.0  # a seed at 0 and an interval reaching the bound
    tiny = seed_interval([1e-5, 2e-5, 1e-5], "unit")  # small values are not moved to a fixed epsilon
    _in_range(tiny, "unit")
    assert tiny["ci_low"] > 0


def test_privleak_stays_above_minus_100():
    _in_range(seed_interval([-99.0, -50.0, 20.0], "privleak"), "privleak")


@pytest.mark.parametrize("scale", ["unit", "pvalue", "positive"])
def test_random_seed_sets_stay_in_range(scale):
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 7))
        x = {"unit": rng.beta(0.4, 0.4, n), "pvalue": rng.uniform(0, 1, n) ** 4,
             "positive": rng.lognormal(0, 2, n)}[scale]
        _in_range(seed_interval(x, scale), scale)


def test_one_seed_has_no_interval_and_missing_values_are_dropped():
    res = seed_interval([0.4, None, float("nan")], "unit")
    assert res["n"] == 1 and res["mean"] == 0.4 and math.isnan(res["ci_low"])


def test_scales_of_the_aggregates():
    assert seed_scale("forget_quality") == "pvalue"
    assert seed_scale("privleak") == "privleak"
    assert seed_scale("unlearn_seconds") == "positive"
    assert seed_scale("retain/rouge", [0.2, 0.9]) == "unit"
    assert seed_scale("relearn", [-0.2, 1.3]) == "real"


def test_seeds_aggregate_uses_the_same_intervals(tmp_path):
    values = {"forget_quality": [0.9, 0.99, 1.0], "model_utility": [0.85, 0.95, 0.99]}
    runs = []
    for i in range(3):
        run = tmp_path / f"seed{i}"
        write_json(run / "results.json", {"aggregates": {k: {"value": v[i], "higher_is_better": True}
                                                         for k, v in values.items()}})
        runs.append(run)
    metrics = aggregate_runs(runs)["metrics"]
    for key, scale in (("forget_quality", "pvalue"), ("model_utility", "unit")):
        expected = seed_interval(values[key], scale)
        assert {s: metrics[key][s] for s in ("mean", "ci_low", "ci_high")} == \
            pytest.approx({s: expected[s] for s in ("mean", "ci_low", "ci_high")})
        _in_range(metrics[key], scale)
