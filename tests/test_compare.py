"""`obliviate compare` and `obliviate seeds` on small hand-built run directories (no models)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from obliviate.comparison import aggregate_runs, compare_runs, holm, paired_test, world_seed_spec
from obliviate.errors import ObliviateError
from tests.helpers import run_cli


def make_run(path, sets: dict[str, dict[str, np.ndarray]], aggregates=None, hashes=None, subjects=None):
    """A run dir as `obliviate eval` leaves it: items.jsonl rows keyed by (set, index), and results.json."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for set_name, fields in sets.items():
        n = len(next(iter(fields.values())))
        for i in range(n):
            subject = subjects[set_name][i] if subjects else f"{set_name}-{i // 3}"
            rows.append({"set": set_name, "index": i, "subject": subject, "generation": "text",
                         **{k: float(v[i]) for k, v in fields.items()}})
    (path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if aggregates is None:
        aggregates = {}
        for set_name, fields in sets.items():
            for field, values in fields.items():
                aggregates[f"{set_name}/{field}"] = {"value": float(np.mean(values)),
                                                     "higher_is_better": set_name != "forget"}
    hashes = hashes if hashes is not None else {name: f"hash-{name}" for name in sets}
    results = {"suite": "qa", "aggregates": aggregates, "data_hashes": hashes}
    (path / "results.json").write_text(json.dumps(results))
    return path


def exact_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided exact signed-rank p by enumerating all 2^n sign patterns (distinct, non-zero |d|)."""
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    patterns = itertools.product((False, True), repeat=len(d))  # which items are positive
    null = np.array([ranks[np.array(signs)].sum() for signs in patterns])
    return min(1.0, 2 * min(np.mean(null <= observed), np.mean(null >= observed)))


def normal_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided normal-approximation signed-rank p (no ties, no continuity correction)."""
    n = len(d)
    t_plus = stats.rankdata(np.abs(d))[d > 0].sum()
    z = (t_plus - n * (n + 1) / 4) / np.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return float(2 * stats.norm.sf(abs(z)))


# -- the statistics --------------------------------------------------------------------------------------

def test_wilcoxon_p_matches_exact_enumeration_and_normal_approximation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=12)
    b = a + rng.normal(0.5, 1.0, size=12)
    assert paired_test(a, b, n_boot=200)["p_value"] == pytest.approx(exact_wilcoxon_p(b - a), rel=1e-9)
    a = rng.normal(size=80)
    b = a + rng.normal(0.2, 1.0, size=80)
    assert paired_test(a, b, n_boot=200)["p_value"] == pytest.approx(normal_wilcoxon_p(b - a), rel=1e-6)


def test_bootstrap_ci_matches_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=60)
    b = np.clip(a + rng.normal(0.05, 0.1, size=60), 0, 1)
    ours = paired_test(a, b, n_boot=10_000)
    ref = stats.bootstrap((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), paired=True,
                          method="percentile", n_resamples=10_000, rng=np.random.default_rng(7))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.05 * width)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.05 * width)
    assert ours["diff"] == pytest.approx(np.mean(b - a))


def test_pairing_finds_a_shift_that_unpaired_intervals_miss():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.1, 0.9, size=40)  # items differ a lot in difficulty...
    b = a + 0.02 + rng.normal(0, 0.005, size=40)  # ...B adds a small, consistent 0.02
    result = paired_test(a, b, n_boot=2000)
    assert result["p_value"] < 1e-6 and result["ci_low"] > 0
    assert stats.ttest_ind(a, b).pvalue > 0.5  # an unpaired test sees nothing


def test_identical_values_are_not_a_difference():
    a = np.linspace(0, 1, 10)
    result = paired_test(a, a.copy(), n_boot=100)
    assert result["p_value"] == 1.0 and result["n_nonzero"] == 0
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.01*4 = 0.04; 0.03*3 = 0.09; 0.04*2 = 0.08 -> raised to 0.09 (monotone); 0.5*1 = 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


# -- compare on run directories -----------------------------------------------------------------------------

@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    forget_a = rng.uniform(0.3, 1.0, size=30)
    retain_a = rng.uniform(0.5, 1.0, size=30)
    sets_a = {"forget": {"probability": forget_a, "mean_nll": -np.log(forget_a)},
              "retain": {"probability": retain_a, "mean_nll": -np.log(retain_a)}}
    forget_b = np.clip(forget_a - 0.2 + rng.normal(0, 0.05, size=30), 0.01, 1)  # B forgets
    retain_b = np.clip(retain_a + rng.normal(0, 0.02, size=30), 0.01, 1)  # and keeps the retain set
    sets_b = {"forget": {"probability": forget_b, "mean_nll": -np.log(forget_b)},
              "retain": {"probability": retain_b, "mean_nll": -np.log(retain_b)}}
    runs = []
    for name, sets, fq, mu in (("a", sets_a, 1e-6, 0.8), ("b", sets_b, 0.2, 0.78)):
        run = make_run(tmp_path / name, sets)
        results = json.loads((run / "results.json").read_text())
        results["aggregates"]["forget_quality"] = {"value": fq, "ks_statistic": 0.5, "n": 30, "n_oracle": 30,
                                                   "higher_is_better": True}
        results["aggregates"]["model_utility"] = {"value": mu, "ci_low": mu - 0.05, "ci_high": mu + 0.05,
                                                  "higher_is_better": True}
        del results["aggregates"]["forget/mean_nll"], results["aggregates"]["retain/mean_nll"]
        (run / "results.json").write_text(json.dumps(results))
        runs.append((run, sets))
    return runs


def test_compare_cli_json_matches_independent_computation(two_runs, tmp_path, monkeypatch, capsys):
    (run_a, sets_a), (run_b, sets_b) = two_runs
    out_file = tmp_path / "cmp.json"
    code, out, err = run_cli(["compare", str(run_a), str(run_b), "--json", "--out", str(out_file)],
                             monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert json.loads(out_file.read_text()) == result
    rows = {r["metric"]: r for r in result["paired"]}
    assert set(rows) == {"forget/probability", "retain/probability"}  # mean_nll backs no aggregate
    fa, fb = sets_a["forget"]["probability"], sets_b["forget"]["probability"]
    forget = rows["forget/probability"]
    assert forget["p_value"] == pytest.approx(stats.wilcoxon(fb - fa).pvalue, rel=1e-9)
    assert forget["diff"] == pytest.approx(np.mean(fb - fa))
    assert forget["ci_high"] < 0 and forget["verdict"] == "B lower (better)"
    retain = rows["retain/probability"]
    assert retain["ci_low"] < 0 < retain["ci_high"] and retain["verdict"] == "not significant"
    only = {r["metric"]: r for r in result["aggregate_only"]}
    assert set(only) == {"forget_quality", "model_utility"}
    assert all("no paired test" in r["note"] for r in only.values())
    assert only["forget_quality"]["ks_statistic_a"] == 0.5 and only["forget_quality"]["n_b"] == 30


def test_compare_all_metrics_and_patterns(two_runs):
    (run_a, _), (run_b, _) = two_runs
    every = compare_runs(run_a, run_b, all_metrics=True, n_boot=200)
    assert {r["metric"] for r in every["paired"]} == {"forget/probability", "forget/mean_nll",
                                                      "retain/probability", "retain/mean_nll"}
    # Holm's adjustment is over the metrics compared: never below the raw p
    assert all(r["p_holm"] >= r["p_value"] for r in every["paired"])
    picked = compare_runs(run_a, run_b, metrics=["forget/*"], n_boot=200)
    assert {r["metric"] for r in picked["paired"]} == {"forget/probability", "forget/mean_nll"}


def test_compare_table_says_not_significant(two_runs, monkeypatch, capsys):
    (run_a, _), (run_b, _) = two_runs
    code, out, _ = run_cli(["compare", str(run_a), str(run_b), "--n-boot", "500"], monkeypatch, capsys)
    assert code == 0
    assert "not significant" in out and "B lower (better)" in out and "no paired test" in out


def test_compare_refuses_runs_on_different_data(tmp_path, monkeypatch, capsys):
    values = {"forget": {"probability": np.linspace(0.1, 0.9, 9)}}
    a = make_run(tmp_path / "a", values)
    b = make_run(tmp_path / "b", values, hashes={"forget": "another-hash"})
    code, _, err = run_cli(["compare", str(a), str(b)], monkeypatch, capsys)
    assert code == 2 and "different data" in err and "forget" in err and len(err.strip().splitlines()) == 1

    c = make_run(tmp_path / "c", {"retain": {"probability": np.linspace(0.1, 0.9, 9)}})
    code, _, err = run_cli(["compare", str(a), str(c)], monkeypatch, capsys)
    assert code == 2 and "share no evaluated items" in err and len(err.strip().splitlines()) == 1

    # Without hashes, a subject that differs inside a pair still gives the mismatch away.
    d = make_run(tmp_path / "d", values, hashes={})
    e = make_run(tmp_path / "e", values, hashes={}, subjects={"forget": [f"other{i}" for i in range(9)]})
    code, _, err = run_cli(["compare", str(d), str(e)], monkeypatch, capsys)
    assert code == 2 and "disagree on item forget[0]" in err

    code, _, err = run_cli(["compare", str(a), str(tmp_path / "missing")], monkeypatch, capsys)
    assert code == 2 and "no results.json" in err and "obliviate eval" in err


def test_compare_reports_a_malformed_items_line(tmp_path):
    values = {"forget": {"probability": np.linspace(0.1, 0.9, 9)}}
    a = make_run(tmp_path / "a", values)
    b = make_run(tmp_path / "b", values)
    with open(b / "items.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(ObliviateError, match=r"items.jsonl:10: not valid JSON"):
        compare_runs(a, b)


# -- seeds -------------------------------------------------------------------------------------------------

def _seed_run(path, fq, ks, mu, forget_prob, method="ga"):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"aggregates": {
        "forget_quality": {"value": fq, "ks_statistic": ks, "n": 48, "n_oracle": 48,
                           "higher_is_better": True},
        "model_utility": {"value": mu, "higher_is_better": True},
        "forget/probability": {"value": forget_prob, "higher_is_better": False}}}))
    config = {"method": method, "world": {"preset": "tiny", "split": "forget10"}}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_seeds_aggregates_mean_sd_and_interval(tmp_path, monkeypatch, capsys):
    fq, ks, mu, fp = [0.01, 0.2, 0.05], [0.4, 0.2, 0.3], [0.8, 0.7, 0.75], [0.3, 0.2, 0.25]
    runs = [_seed_run(tmp_path / f"seed{i}", fq[i], ks[i], mu[i], fp[i]) for i in range(3)]
    code, out, err = run_cli(["seeds", *map(str, runs), "--json", "--out", str(tmp_path / "agg")],
                             monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert json.loads((tmp_path / "agg" / "seeds.json").read_text()) == summary
    metrics = summary["metrics"]
    for key, values in (("forget_quality", fq), ("forget_quality/ks_statistic", ks), ("model_utility", mu),
                        ("forget/probability", fp)):
        # forget quality, a p-value, is averaged on log10 (its geometric mean), as in the bench leaderboard
        mean = 10 ** np.mean(np.log10(values)) if key == "forget_quality" else np.mean(values)
        assert metrics[key]["mean"] == pytest.approx(mean)
        assert metrics[key]["sd"] == pytest.approx(np.std(values, ddof=1))
        assert 0 <= metrics[key]["ci_low"] <= metrics[key]["mean"] <= metrics[key]["ci_high"] <= 1
    assert metrics["forget_quality/n"]["values"] == [48, 48, 48]

    code, out, _ = run_cli(["seeds", *map(str, runs)], monkeypatch, capsys)
    assert code == 0 and "95% CI" in out and "oracle n" in out


def test_seeds_refuses_mixed_settings_and_bad_arguments(tmp_path, monkeypatch, capsys):
    runs = [_seed_run(tmp_path / "s0", 0.1, 0.3, 0.8, 0.2),
            _seed_run(tmp_path / "s1", 0.1, 0.3, 0.8, 0.2, method="npo")]
    with pytest.raises(ObliviateError, match="differ in method"):
        aggregate_runs(runs)
    code, _, err = run_cli(["seeds"], monkeypatch, capsys)
    assert code == 2 and "--model world:PRESET" in err
    code, _, err = run_cli(["seeds", str(runs[0]), "--model", "world:tiny"], monkeypatch, capsys)
    assert code == 2 and "not both" in err
    code, _, err = run_cli(["seeds", "--model", "./my-model", "--out", str(tmp_path / "x")],
                           monkeypatch, capsys)
    assert code == 2 and "seeds are worlds" in err


def test_world_seed_spec_replaces_the_seed_and_keeps_the_architecture():
    assert world_seed_spec("world:tiny", 3) == "world:tiny@3"
    assert world_seed_spec("world:small@7:gpt2", 1) == "world:small@1:gpt2"
