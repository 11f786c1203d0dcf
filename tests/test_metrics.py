"""Unit tests for obliviate.metrics on small cases computed by hand."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from obliviate.errors import ConfigError
from obliviate.metrics import (
    METRICS,
    answer_probability,
    bootstrap_ci,
    exact_memorisation,
    extraction_strength,
    forget_quality,
    forget_truth_score,
    forget_truth_values,
    get_metric,
    loss_score,
    mean_nll,
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    muse_auc,
    muse_privleak,
    option_normalised_probability,
    reference_score,
    retain_truth_score,
    rouge_l,
    summarize,
    truth_ratio_arithmetic,
    truth_ratio_geometric,
    zlib_score,
)
from obliviate.metrics import stats as stats_module

LN2 = math.log(2)


# -- registry ---------------------------------------------------------------------------------------


def test_registry_entries_are_consistent():
    assert len(METRICS) >= 20
    for name, info in METRICS.items():
        assert info.name == name
        assert info.higher_is_better in (True, False, None)
        assert info.description and info.suite in {"qa", "text", "mia"}
    assert METRICS["forget_quality"].higher_is_better is True
    assert METRICS["ks_statistic"].higher_is_better is False


def test_get_metric_suggests_close_names():
    assert get_metric("model_utility").name == "model_utility"
    with pytest.raises(ConfigError, match="did you mean 'forget_quality'"):
        get_metric("forget_qualty")
    with pytest.raises(ConfigError, match="unknown metric 'zzz'"):
        get_metric("zzz")


# -- probability ------------------------------------------------------------------------------------


def test_mean_nll_and_answer_probability():
    logprobs = [np.log([0.5, 0.25]), [math.log(0.1)]]
    nll = mean_nll(logprobs)
    np.testing.assert_allclose(nll, [1.5 * LN2, math.log(10)])
    np.testing.assert_allclose(answer_probability(nll), [2**-1.5, 0.1])


def test_mean_nll_rejects_empty_item():
    with pytest.raises(ValueError, match="item 1"):
        mean_nll([[-1.0], []])


def test_option_normalised_probability_by_hand():
    # P(a) = 0.5, perturbed 0.25 and 0.25 -> 0.5 / 1.0; P(a) = 0.2, perturbed 0.2 -> 0.5.
    true_nll = -np.log([0.5, 0.2])
    pert_nll = -np.log([[0.25, 0.25], [0.2, 1e-300]])
    np.testing.assert_allclose(option_normalised_probability(true_nll, pert_nll), [0.5, 0.5])


def test_option_normalised_probability_does_not_underflow():
    # exp(-2000) is 0 in float64; the naive ratio would be 0/0.
    out = option_normalised_probability([2000.0], [[2000.0, 2000.0 + LN2]])
    np.testing.assert_allclose(out, [1 / 2.5])


def test_option_shapes_are_checked():
    with pytest.raises(ValueError, match="shapes"):
        option_normalised_probability([1.0, 2.0], [[1.0, 2.0]])


# -- ROUGE ------------------------------------------------------------------------------------------


def test_rouge_l_recall_and_f1():
    out = rouge_l(["the cat sat on the mat"], ["the cat sat"])
    # LCS = 3 tokens: recall 3/6, precision 3/3, F1 = 2 * 0.5 * 1 / 1.5.
    np.testing.assert_allclose(out["recall"], [0.5])
    np.testing.assert_allclose(out["f1"], [2 / 3])


def test_rouge_l_reference_comes_first():
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"])["recall"][0] == pytest.approx(1.0)


def test_rouge_l_stemmer():
    assert rouge_l(["running dogs"], ["run dog"], use_stemmer=True)["recall"][0] == pytest.approx(1.0)
    assert rouge_l(["running dogs"], ["run dog"], use_stemmer=False)["recall"][0] == 0.0


def test_rouge_l_remembering_tokenizer_scores_as_rouge_score_does():
    from rouge_score import rouge_scorer

    texts = ["The author's books were published in 1998, and she won awards.", "Running dogs ran; the runner runs!",
             "", "Généralement: caring, carefully, cared — ponies' ponies", "the cat sat on the mat"]
    refs, preds = [a for a in texts for _ in texts], [b for _ in texts for b in texts]  # every text many times
    for stem in (True, False):
        want = [rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem).score(r, p)["rougeL"]
                for r, p in zip(refs, preds, strict=True)]
        for _ in range(2):  # the second pass reads what the first remembered
            got = rouge_l(refs, preds, use_stemmer=stem)
            assert got["recall"].tolist() == [w.recall for w in want]
            assert got["f1"].tolist() == [w.fmeasure for w in want]


def test_rouge_l_length_mismatch():
    with pytest.raises(ValueError):
        rouge_l(["a", "b"], ["a"])


# -- truth ratio ------------------------------------------------------------------------------------


def test_truth_ratio_forms_by_hand():
    # P(para) = 0.5, P(pert) = 0.25 and 0.0625.
    para = -np.log([0.5])
    pert = -np.log([[0.25, 0.0625]])
    assert truth_ratio_arithmetic(para, pert)[0] == pytest.approx((0.25 + 0.0625) / 2 / 0.5)
    assert truth_ratio_geometric(para, pert)[0] == pytest.approx(math.sqrt(0.25 * 0.0625) / 0.5)


def test_truth_ratio_forms_match_direct_numpy():
    rng = np.random.default_rng(1)
    para = rng.uniform(0.1, 4, size=50)
    pert = rng.uniform(0.1, 4, size=(50, 5))
    p_para, p_pert = np.exp(-para), np.exp(-pert)
    arith = truth_ratio_arithmetic(para, pert)
    geo = truth_ratio_geometric(para, pert)
    np.testing.assert_allclose(arith, p_pert.mean(axis=1) / p_para, rtol=1e-12)
    np.testing.assert_allclose(geo, np.exp(np.log(p_pert).mean(axis=1)) / p_para, rtol=1e-12)
    # TOFU's script writes the geometric form upside down.
    np.testing.assert_allclose(1 / geo, np.exp(pert.mean(axis=1) - para), rtol=1e-12)
    assert np.all(arith >= geo - 1e-12)  # AM-GM


def test_truth_scores_by_hand():
    np.testing.assert_allclose(forget_truth_values([0.5, 2.0, 1.0]), [0.5, 0.5, 1.0])
    assert forget_truth_score([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    # R = 0.25 -> 0.75; R = 1.5 (perturbed preferred) -> clipped to 0.
    assert retain_truth_score([0.25, 1.5]) == pytest.approx(0.375)


def test_retain_truth_score_matches_tofu_script_form():
    r = np.array([0.2, 0.9, 1.3, 3.0])
    r_script = 1 / r
    assert retain_truth_score(r) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / r_script)))
    assert forget_truth_score(r) == pytest.approx(forget_truth_score(r_script))


# -- forget quality and utility ---------------------------------------------------------------------


def test_forget_quality_identical_samples():
    values = np.linspace(0.1, 2.0, 40)
    out = forget_quality(values, values)
    assert out == {"forget_quality": 1.0, "ks_statistic": 0.0, "n_model": 40, "n_oracle": 40}


def test_forget_quality_disjoint_samples():
    out = forget_quality(np.linspace(0, 1, 30), np.linspace(2, 3, 20))
    assert out["ks_statistic"] == 1.0
    assert out["forget_quality"] < 1e-6
    assert (out["n_model"], out["n_oracle"]) == (30, 20)


def test_forget_quality_invariant_under_inversion():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 60), rng.lognormal(0.3, 1, 50)
    direct, inverted = forget_quality(a, b), forget_quality(1 / a, 1 / b)
    assert direct["ks_statistic"] == pytest.approx(inverted["ks_statistic"])
    assert direct["forget_quality"] == pytest.approx(inverted["forget_quality"])


def test_forget_quality_rejects_nan():
    with pytest.raises(ValueError, match="tr_oracle"):
        forget_quality([1.0, 2.0], [1.0, float("nan")])


def test_model_utility_harmonic_mean():
    assert model_utility({"a": 1.0, "b": 0.5}) == pytest.approx(2 / (1 / 1.0 + 1 / 0.5))
    assert model_utility({"a": 0.8, "b": 0.0, "c": 0.9}) == 0.0


@pytest.mark.parametrize("values", [{}, {"a": 0.5, "b": -0.1}, {"a": float("nan")}])
def test_model_utility_rejects_bad_input(values):
    with pytest.raises(ValueError):
        model_utility(values)


# -- memorisation -----------------------------------------------------------------------------------


def test_exact_memorisation():
    out = exact_memorisation([np.array([1, 0, 1, 1], bool), [True], [False, False]])
    np.testing.assert_allclose(out, [0.75, 1.0, 0.0])


def test_extraction_strength_on_crafted_matches():
    T, F = True, False
    cases = {
        (T, T, T, T): 1.0,  # k* = 0
        (F, T, T, T): 0.75,  # k* = 1
        (T, T, F, T): 0.25,  # k* = 3: the early matches do not count
        (T, T, T, F): 0.0,  # last token wrong: no suffix matches
        (F,): 0.0,
        (T,): 1.0,
    }
    out = extraction_strength([np.array(c) for c in cases])
    np.testing.assert_allclose(out, list(cases.values()))


def test_memorisation_rejects_empty_item():
    with pytest.raises(ValueError, match="item 0"):
        extraction_strength([np.array([], bool)])


# -- membership inference ---------------------------------------------------------------------------


def test_loss_zlib_and_reference_scores():
    logprobs = [np.array([-1.0, -3.0]), np.array([-0.5])]
    np.testing.assert_allclose(loss_score(logprobs), [-2.0, -0.5])
    text = "hello hello hello world"
    expected = -2.0 / len(zlib.compress(text.encode()))
    np.testing.assert_allclose(zlib_score(logprobs[:1], [text]), [expected])
    ref = [np.array([-2.0, -2.0, -2.0]), np.array([-1.5])]
    np.testing.assert_allclose(reference_score(logprobs, ref), [0.0, 1.0])


def test_min_k_score_by_hand():
    logprobs = [np.array([-1.0, -5.0, -2.0, -4.0, -3.0])]
    assert min_k_score(logprobs, k=0.4)[0] == pytest.approx(-4.5)  # lowest int(5 * 0.4) = 2
    assert min_k_score(logprobs, k=0.1)[0] == pytest.approx(-5.0)  # at least one token
    assert min_k_score(logprobs, k=1.0)[0] == pytest.approx(-3.0)
    with pytest.raises(ValueError):
        min_k_score(logprobs, k=0.0)


def test_min_k_plus_plus_by_hand():
    lp = np.array([-1.0, -5.0, -2.0, -4.0, -3.0])
    mu = np.full(5, -1.0)
    var = np.full(5, 4.0)
    # z = (lp + 1) / 2 = [0, -2, -0.5, -1.5, -1]; lowest two: -2, -1.5.
    assert min_k_plus_plus_score([lp], [mu], [var], k=0.4)[0] == pytest.approx(-1.75)
    # Variance is clamped at 1e-6, so sigma = 1e-3.
    z = min_k_plus_plus_score([np.array([-1.0])], [np.array([0.0])], [np.array([0.0])], k=1.0)
    assert z[0] == pytest.approx(-1000.0)


def test_mia_auc_separation():
    members, nonmembers = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])
    assert mia_auc(members, nonmembers) == {"auc": 1.0, "tpr_at_1pct_fpr": 1.0}
    assert mia_auc(nonmembers, members)["auc"] == 0.0
    assert mia_auc([1.0, 1.0], [1.0, 1.0])["auc"] == pytest.approx(0.5)


def test_muse_auc_orientation_and_privleak():
    # A memorising model gives forget texts higher (member-oriented) scores than holdout texts.
    forget, holdout = np.array([-0.1, -0.2, -0.3]), np.array([-2.0, -3.0, -4.0])
    assert muse_auc(forget, holdout) == 0.0
    assert muse_auc(holdout, forget) == 1.0
    assert muse_privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert muse_privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError):
        muse_privleak(0.5, 0.0)


# -- statistics -------------------------------------------------------------------------------------


def test_bootstrap_ci_constant_and_empty():
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0)
    low, high = bootstrap_ci([float("nan")])
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_ci_ignores_nan_and_is_seeded():
    values = list(np.random.default_rng(0).normal(size=30))
    assert bootstrap_ci(values + [float("nan")], seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_width_matches_normal_theory():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 2.0, size=400)
    low, high = bootstrap_ci(values, n_boot=2000)
    assert low < values.mean() < high
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_bootstrap_ci_other_statistics_and_blocks(monkeypatch):
    values = np.arange(20, dtype=float)
    med = bootstrap_ci(values, stat=np.median)
    assert bootstrap_ci(values, stat=lambda x: float(np.median(x))) == med  # no axis= keyword
    monkeypatch.setattr(stats_module, "_BLOCK_VALUES", 45)  # resample in blocks of 2 rows
    assert bootstrap_ci(values, stat=np.median) == med


def test_summarize():
    out = summarize([1.0, 2.0, float("nan"), 3.0], higher_is_better=False)
    assert out["mean"] == pytest.approx(2.0)
    assert out["n"] == 3
    assert out["higher_is_better"] is False
    assert out["ci_low"] <= 2.0 <= out["ci_high"]


@pytest.mark.parametrize("seed", range(6))
def test_roc_curve_matches_scikit_learn(seed):
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    from obliviate.metrics.mia import roc_auc, roc_curve

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    # Seeds 0-2 draw heavily tied scores (tied pairs and diagonal runs), 3-5 continuous ones.
    scores = rng.integers(0, 6, n).astype(float) if seed < 3 else rng.normal(size=n)
    fpr, tpr = roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert tpr[fpr <= 0.01].max() == sk_tpr[sk_fpr <= 0.01].max()
