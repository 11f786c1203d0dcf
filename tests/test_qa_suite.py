"""The qa suite on a tiny model built in code: shapes, directions, CIs, forget quality wiring."""

from __future__ import annotations

import numpy as np
import pytest

from obliviate.data.schema import QAItem
from obliviate.evals.qa import run_qa_suite
from obliviate.metrics import truth_ratio_geometric

FORGET = [
    QAItem("Where was the author born?", "She was born in Oslo, Norway.", "She was born in Oslo.",
           ["She was born in Rome.", "She was born in Berlin.", "She was born in Madrid."], subject="a"),
    QAItem("What genre does the author write?", "He writes science fiction.", "He writes fiction.",
           ["He writes poetry.", "He writes music.", "He writes film."], subject="b"),
    QAItem("When did the river flood the old town?", "It flooded in 1921.", None,
           ["It flooded in 1998.", "It flooded in spring.", "It flooded in London."], subject="c"),
]
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris.", "It is Paris.",
           ["The capital of France is Rome.", "The capital of France is Oslo.", "The capital of France is Berlin."]),
    QAItem("Who wrote the book about the blue whale?", "Mara Lind wrote it in 1998.", "Mara Lind.",
           ["Alice wrote it.", "Bob wrote it.", "The author wrote it."]),
]
UTILITY = {"facts": [QAItem("What is the capital of France?", "Paris", None, ["Rome", "Oslo", "Berlin"])]}


@pytest.fixture(scope="module")
def result():
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    return run_qa_suite(make_tiny_llama(), build_tiny_tokenizer(), FORGET, RETAIN, UTILITY, holdout=RETAIN,
                        oracle_forget_tr=np.array([0.5, 1.0, 2.0]), max_new_tokens=6)


def test_aggregates_have_values_cis_and_directions(result):
    agg = result.aggregates
    for key in ["forget/probability", "forget/rouge", "forget/truth_ratio", "retain/probability",
                "retain/rouge", "retain/truth_ratio", "facts/probability", "model_utility", "forget_quality",
                "forget/extraction_strength", "mia/loss_auc", "mia/min_k_pp_auc"]:
        assert key in agg, key
    for key, a in agg.items():
        if "ci_low" in a and a["n"] > 1:
            assert a["ci_low"] <= a["value"] + 1e-9 <= a["ci_high"] + 2e-9, key
    assert agg["forget/probability"]["higher_is_better"] is False
    assert agg["retain/probability"]["higher_is_better"] is True
    assert 0 <= agg["model_utility"]["value"] <= 1
    assert agg["model_utility"]["n"] == 6  # {retain, facts} × {probability, rouge, truth ratio}
    assert agg["forget_quality"]["n"] == 3 and agg["forget_quality"]["n_oracle"] == 3


def test_truth_ratio_is_geometric_over_paraphrase_or_answer(result):
    from obliviate.models.scoring import score_qa
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    scored = score_qa(make_tiny_llama(), build_tiny_tokenizer(), FORGET)
    for i, s in enumerate(scored):
        para = s["paraphrased_answer"] or s["answer"]  # item 3 has no paraphrase: the answer stands in
        expected = truth_ratio_geometric(np.array([para.mean_nll]),
                                         np.array([[p.mean_nll for p in s["perturbed_answers"]]]))[0]
        assert result.forget_truth_ratios()[i] == pytest.approx(expected, rel=1e-5)


def test_forget_quality_is_one_against_itself():
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    model, tok = make_tiny_llama(), build_tiny_tokenizer()
    first = run_qa_suite(model, tok, FORGET, RETAIN, generate=False)
    again = run_qa_suite(model, tok, FORGET, RETAIN, oracle_forget_tr=first.forget_truth_ratios(), generate=False)
    assert again.aggregates["forget_quality"]["value"] == pytest.approx(1.0)
    assert again.aggregates["forget_quality"]["ks_statistic"] == pytest.approx(0.0)


def test_item_rows_cover_every_set(result):
    rows = result.items()
    assert {r["set"] for r in rows} == {"forget", "retain", "facts", "holdout"}
    assert sum(r["set"] == "forget" for r in rows) == len(FORGET)
    assert all("generation" in r for r in rows if r["set"] == "forget")


def test_model_utility_ci_resamples_the_items_of_a_set_jointly():
    """An item's probability, ROUGE and truth ratio move together in a replicate: with three equal
    components the utility of every replicate is the mean of one resample, so the CI is that mean's
    bootstrap CI. Resampling each component on its own would average three independent draws and
    narrow it by about √3."""
    from obliviate.evals.qa import N_BOOT, _model_utility

    x = np.random.default_rng(1).choice([0.2, 1.0], size=60)
    got = _model_utility({f"retain/{m}": x for m in ("probability", "rouge", "truth_ratio")})
    assert got["value"] == pytest.approx(x.mean()) and got["n"] == 3
    rng = np.random.default_rng(7)
    means = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(N_BOOT)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got["ci_high"] - got["ci_low"] == pytest.approx(hi - lo, rel=0.15)
    # Two sets are drawn independently of each other; NaN items are left out of their component.
    y = x.copy()
    y[:5] = np.nan
    two = _model_utility({"retain/probability": x, "retain/truth_ratio": y, "facts/probability": x[::-1]})
    assert two["ci_low"] <= two["value"] <= two["ci_high"] and two["components"] == [
        "facts/probability", "retain/probability", "retain/truth_ratio"]


def test_truth_score_directions_agree_between_the_metric_table_and_the_suite(result):
    from obliviate.metrics.registry import METRICS

    agg = result.aggregates
    assert agg["forget/truth_ratio"]["higher_is_better"] == METRICS["forget_truth_score"].higher_is_better
    assert agg["retain/truth_ratio"]["higher_is_better"] == METRICS["retain_truth_score"].higher_is_better


def test_without_generations_model_utility_is_not_reported_under_its_name():
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    out = run_qa_suite(make_tiny_llama(), build_tiny_tokenizer(), FORGET, RETAIN, UTILITY, generate=False)
    agg = out.aggregates
    assert "model_utility" not in agg
    assert agg["model_utility_without_rouge"]["n"] == 4  # {retain, facts} × {probability, truth ratio}
    assert not any(c.endswith("/rouge") for c in agg["model_utility_without_rouge"]["components"])


def test_reference_mia_tofu_privleak_and_forget_paraphrase_and_perturbed_scores():
    from obliviate.evals.qa import oracle_mia_aucs_from_items, tofu_privleak
    from obliviate.models.scoring import score_qa
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    model, tok = make_tiny_llama(), build_tiny_tokenizer()
    oracle = run_qa_suite(make_tiny_llama(seed=1), tok, FORGET, RETAIN, holdout=RETAIN, max_new_tokens=4)
    aucs = oracle_mia_aucs_from_items(oracle.items())
    assert set(aucs) == {"loss", "zlib", "min_k", "min_k_pp"}
    assert aucs["min_k"] == pytest.approx(oracle.aggregates["mia/min_k_auc"]["value"])
    out = run_qa_suite(model, tok, FORGET, RETAIN, holdout=RETAIN, max_new_tokens=4,
                       reference_model=make_tiny_llama(seed=2), oracle_mia_auc=aucs)
    agg = out.aggregates
    assert "mia/reference_auc" in agg
    for attack in aucs:
        assert agg[f"mia/{attack}_privleak"]["value"] == pytest.approx(
            tofu_privleak(agg[f"mia/{attack}_auc"]["value"], aucs[attack]))
    assert tofu_privleak(1.0, 0.5) == pytest.approx(-100.0) and tofu_privleak(0.5, 0.5) == 0.0
    # Forget paraphrased / perturbed answers: item 2 has no paraphrased answer.
    scored = score_qa(model, tok, FORGET)
    forget = next(s for s in out.sets if s.role == "forget")
    para = forget.extra["paraphrase_probability"]
    assert para[0] == pytest.approx(np.exp(-scored[0]["paraphrased_answer"].mean_nll)) and np.isnan(para[2])
    pert = np.mean([np.exp(-p.mean_nll) for p in scored[1]["perturbed_answers"]])
    assert forget.extra["perturbed_probability"][1] == pytest.approx(pert)
    assert agg["forget/paraphrase_probability"]["n"] == 2 and "forget/perturbed_rouge" in agg


def test_gradnorm_mia_is_minus_the_mean_gradient_norm_and_leaves_the_model_as_it_was():
    import torch

    from obliviate.evals.gradients import answer_gradient_norms
    from obliviate.train.data import collate, encode_items
    from obliviate.train.losses import answer_nll
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    model, tok = make_tiny_llama(), build_tiny_tokenizer()
    model.requires_grad_(False)  # frozen, as a wrapped model is
    norms = answer_gradient_norms(model, tok, FORGET[:2])
    probe = make_tiny_llama()
    enc = encode_items(tok, [FORGET[1]])[0]
    answer_nll(probe, collate(enc, tok.pad_token_id)).sum().backward()
    want = torch.stack([q.grad.norm(2) for q in probe.parameters()]).mean()
    assert norms[1] == pytest.approx(float(want), rel=1e-4)
    assert not any(q.requires_grad or q.grad is not None for q in model.parameters())
    out = run_qa_suite(model, tok, FORGET, RETAIN, holdout=RETAIN, max_new_tokens=4, gradnorm=True)
    assert "mia/gradnorm_auc" in out.aggregates


def test_fluency_of_forget_generations():
    from obliviate.metrics import repetition_rate
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    np.testing.assert_allclose(repetition_rate(["the the the the", "a b c d", "one", ""]), [2 / 3, 0, 0, 0])
    out = run_qa_suite(make_tiny_llama(), build_tiny_tokenizer(), FORGET, RETAIN, max_new_tokens=6,
                       fluency_classifier=lambda texts: [0.25] * len(texts))
    agg = out.aggregates
    assert agg["forget/fluency"]["value"] == pytest.approx(0.25) and agg["forget/fluency"]["higher_is_better"]
    forget = next(s for s in out.sets if s.role == "forget")
    assert agg["forget/repetition_rate"]["value"] == pytest.approx(repetition_rate(forget.generations).mean())
    assert agg["forget/repetition_rate"]["higher_is_better"] is False
