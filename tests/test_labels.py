"""The labelled-text task: review data, the labels suite, random-label fine-tuning, the target/oracle pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from obliviate.data.schema import LabelledText, QAItem
from obliviate.errors import ConfigError
from obliviate.evals.labels import LabelScores, aggregate_labels, score_labelled, weighted_f1_rows
from obliviate.models.prompts import DEFAULT_FORMAT
from obliviate.world import reviews as R
from tests.helpers import run_cli

# A few real brand names the invented product names must avoid (independent of the generator's list).
REAL_BRANDS = {"apple", "sony", "philips", "bosch", "samsung", "canon", "nikon", "ikea", "dyson", "braun"}


def _snapshot(task: R.ReviewTask) -> list:
    return [(r.text, r.label, r.meta) for r in [*task.train, *task.test]] + [task.forget_products]


# -- data -------------------------------------------------------------------------------------------


def test_reviews_are_deterministic_and_seeded():
    fresh = R.get_reviews.__wrapped__  # bypass the per-process cache
    assert _snapshot(fresh("tiny", 0)) == _snapshot(fresh("tiny", 0))
    assert {r.text for r in fresh("tiny", 1).train} != {r.text for r in fresh("tiny", 0).train}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_sizes_and_forget_sets(preset):
    task, cfg = R.get_reviews(preset, 0), R.PRESETS[preset].data
    assert len(task.train) == cfg.n_products * cfg.n_train and len(task.test) == cfg.n_products * cfg.n_test
    assert len({r.text for r in [*task.train, *task.test]}) == len(task.train) + len(task.test)
    assert not {w.lower() for p in task.products for w in p.split()} & REAL_BRANDS
    for kind in R.FORGET_KINDS:
        split = task.split(kind)
        train_ids = sorted(r.meta["id"] for r in [*split.forget_train, *split.retain_train])
        assert train_ids == sorted(r.meta["id"] for r in task.train)  # a partition of the train split
        assert len(split.forget_test) + len(split.retain_test) == len(task.test)
        assert 0 < len(split.forget_train) <= 0.3 * len(task.train)
    products = task.split("products")
    chosen = set(task.forget_products)
    assert {r.subject for r in products.forget_train} == chosen == {r.subject for r in products.forget_test}
    assert not chosen & {r.subject for r in [*products.retain_train, *products.retain_test]}


def test_clear_reviews_are_labelled_by_their_wording():
    """A bag-of-words model fit on clear train reviews labels every clear test review right; the
    mixed reviews' labels are coin flips that no wording predicts."""
    task = R.get_reviews("small", 0)
    clear = [r for r in task.train if r.meta["wording"] != "mixed"]
    vec = CountVectorizer().fit([r.text for r in task.train])
    clf = LogisticRegression(max_iter=1000).fit(vec.transform([r.text for r in clear]), [r.label for r in clear])
    test_clear = [r for r in task.test if r.meta["wording"] != "mixed"]
    assert clf.score(vec.transform([r.text for r in test_clear]), [r.label for r in test_clear]) == 1.0
    mixed = [r for r in [*task.train, *task.test] if r.meta["wording"] == "mixed"]
    assert 0.3 < len(mixed) / (len(task.train) + len(task.test)) < 0.5
    positive = np.mean([r.label == "positive" for r in mixed])
    assert 0.4 < positive < 0.6
    bow = LogisticRegression(max_iter=1000).fit(vec.transform([r.text for r in mixed[::2]]),
                                                [r.label for r in mixed[::2]])
    assert bow.score(vec.transform([r.text for r in mixed[1::2]]), [r.label for r in mixed[1::2]]) < 0.65


def test_qa_items_and_label_template_give_one_prompt():
    review = R.get_reviews("tiny", 0).train[0]
    item = R.as_qa_items([review])[0]
    assert isinstance(item, QAItem) and item.answer == review.label and review.text in item.question
    assert item.perturbed_answers == [y for y in R.LABELS if y != review.label]
    # SPUL/ICUL's labelled prompt is exactly the prompt the QA methods and the target see.
    assert R.LABEL_TEMPLATE.format(text=review.text) == DEFAULT_FORMAT.render(item.question)


def test_reviews_spec():
    assert R.parse_reviews_spec("reviews:tiny@3/random") == R.ReviewsRef("tiny", 3, "random")
    assert R.parse_reviews_spec("reviews:small") == R.ReviewsRef("small", 0, "products")
    assert R.parse_reviews_spec("world:small") is None
    for bad in ("reviews:huge", "reviews:small@x", "reviews:small@0/people"):
        with pytest.raises(ConfigError):
            R.parse_reviews_spec(bad)


# -- the suite's metrics ------------------------------------------------------------------------------


def _hand_scores(name, gold, pred, loss):
    logprobs = np.full((len(gold), 2), -3.0)
    logprobs[np.arange(len(gold)), pred] = -0.1
    return LabelScores(name, ["negative", "positive"], np.array(gold), logprobs, np.array(loss, dtype=float),
                       [None] * len(gold), list(range(len(gold))))


def test_aggregates_on_a_hand_made_example():
    scored = {
        "forget_train": _hand_scores("forget_train", [0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [3.0, 2.0, 5.0, 4.0, 6.0]),
        "forget_test": _hand_scores("forget_test", [0, 1], [0, 1], [1.0, 2.5]),
        "retain_test": _hand_scores("retain_test", [1], [0], [0.0]),
    }
    agg = aggregate_labels(scored, n_boot=200)
    assert agg["forget_train/accuracy"]["value"] == pytest.approx(3 / 5)
    # By hand: label 0 has TP 1, FP 1, FN 1 -> F1 1/2 (support 2); label 1 has TP 2, FP 1, FN 1 -> 2/3 (support 3).
    assert agg["forget_train/f1_weighted"]["value"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert agg["test/accuracy"]["value"] == pytest.approx(2 / 3) and agg["test/accuracy"]["n"] == 3
    # Every member loss score (2..6) beats the non-members 1.0 and 0.0; 2.0 loses to 2.5: 14 of 15 pairs.
    assert agg["mia/loss_auc"]["value"] == pytest.approx(14 / 15)
    assert agg["mia/loss_auc"]["n"] == 5 and agg["mia/loss_auc"]["n_nonmember"] == 3
    assert "test/top_token_accuracy" not in agg  # hand-made scores carry no top-token matches
    for a in agg.values():
        assert a["ci_low"] <= a["value"] <= a["ci_high"]


def test_vectorised_weighted_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 3, (20, 15)), rng.integers(0, 3, (20, 15))
    pred[0] = 0  # a label never predicted (zero division)
    expected = [f1_score(g, p, labels=[0, 1, 2], average="weighted", zero_division=0)
                for g, p in zip(gold, pred, strict=True)]
    np.testing.assert_allclose(weighted_f1_rows(gold, pred, 3), expected)


def test_label_scores_match_a_plain_forward_pass(tiny_llama, tiny_tokenizer):
    items = [LabelledText("good movie great story", "positive"), LabelledText("bad film terrible music", "negative"),
             LabelledText("the actor", "positive")]
    template = "review {text}\nAnswer:"
    scores = score_labelled(tiny_llama, tiny_tokenizer, items, ["negative", "positive"], template=template)
    for i, item in enumerate(items):
        prompt = tiny_tokenizer(template.format(text=item.text))["input_ids"]
        for k, label in enumerate(["negative", "positive"]):
            cont = tiny_tokenizer(" " + label, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = tiny_llama(torch.tensor([prompt + cont])).logits[0].log_softmax(-1)
            expected = sum(float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(cont))
            assert scores.logprobs[i, k] == pytest.approx(expected, abs=1e-4)
        assert scores.loss_score[i] == pytest.approx(scores.logprobs[i, scores.gold[i]] / len(cont), abs=1e-4)
        first = tiny_tokenizer(" " + item.label, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            top = int(tiny_llama(torch.tensor([prompt])).logits[0, -1].argmax())
        assert scores.top_match[i] == (top == first)
    assert list(scores.pred) == list(scores.logprobs.argmax(-1))
    with pytest.raises(ConfigError, match="outside the label words"):
        score_labelled(tiny_llama, tiny_tokenizer, [LabelledText("good", "neutral")], ["negative", "positive"])


# -- random-label fine-tuning ------------------------------------------------------------------------------


def test_random_labels_are_other_labels_and_seeded():
    from obliviate.methods.random_label import random_other_labels

    forget = R.as_qa_items(R.get_reviews("tiny", 0).train[:40])
    drawn = random_other_labels(forget, list(R.LABELS), seed=0)
    assert all(y != it.answer and y in R.LABELS for y, it in zip(drawn, forget, strict=True))
    assert drawn == random_other_labels(forget, list(R.LABELS), seed=0)
    qa = [QAItem("q1", "Paris"), QAItem("q2", "Rome"), QAItem("q3", "Oslo")]
    assert len(set(random_other_labels(qa * 20, ["Paris", "Rome", "Oslo"], seed=1))) == 3
    with pytest.raises(ConfigError, match="no other label"):
        random_other_labels([QAItem("q", "yes")], ["yes"], seed=0)


# -- the trained task ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_models(world_home):
    return R.build_review_models("tiny", 0, "random", progress=False)


@pytest.fixture(scope="module")
def task_evals(task_models):
    from obliviate.evals.labels import run_labels_suite
    from obliviate.models.loading import load_model

    sets = task_models.task.split("random").sets()
    return {role: run_labels_suite(*load_model(getattr(task_models, role)), sets)
            for role in ("target", "oracle")}


def test_target_learns_and_memorises_and_the_oracle_does_not(task_evals):
    target, oracle = task_evals["target"].aggregates, task_evals["oracle"].aggregates
    assert target["test/accuracy"]["value"] > 0.7  # chance is 0.5; mixed reviews cap it near 0.8
    clear = [s for s in task_evals["target"].sets if s.name == "retain_test"][0]
    wording = [r.meta["wording"] for r in R.get_reviews("tiny", 0).split("random").retain_test]
    assert clear.correct[[w != "mixed" for w in wording]].mean() > 0.95
    # Membership: the target gets its forget reviews right, mixed ones included; the oracle guesses those.
    assert target["forget_train/accuracy"]["value"] > oracle["forget_train/accuracy"]["value"] + 0.1
    assert target["mia/loss_auc"]["ci_low"] > 0.5
    assert abs(oracle["mia/loss_auc"]["value"] - 0.5) < 0.15


def test_cli_eval_labels(task_models, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["eval", "reviews:tiny@0/random", "--suite", "labels", "--out", str(tmp_path),
                              "--json"], monkeypatch, capsys)
    assert code == 0, err
    payload = json.loads(out[out.index("{"):])
    assert payload["suite"] == "labels" and "mia/loss_auc" in payload["aggregates"]
    assert payload["reference"]["oracle"]["forget_train/accuracy"]["value"] < 1.0
    assert (tmp_path / "labels_results.json").is_file() and (tmp_path / "labels_items.jsonl").is_file()
    code, _, err = run_cli(["eval", "reviews:tiny@0", "--suite", "labels", "--world", "reviews:huge", "--out",
                            str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "unknown reviews preset" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_random_label_moves_forget_accuracy_towards_the_oracle(task_models, task_evals, tmp_path):
    """Random-label fine-tuning (the shared fine-tuning defaults, pinned): forget-train accuracy falls at
    least halfway to the oracle's while retain-train and test accuracy hold."""
    from obliviate.evals.labels import run_labels_suite
    from obliviate.methods.random_label import RandomLabel
    from obliviate.models.loading import load_model

    split = task_models.task.split("random")
    model, tok = load_model(task_models.target)
    method = RandomLabel(RandomLabel.Config(lr=5e-4, epochs=5, batch_size=16))
    method.unlearn(model, tok, R.as_qa_items(split.forget_train), R.as_qa_items(split.retain_train), tmp_path,
                   progress=False)
    after = run_labels_suite(model, tok, split.sets()).aggregates
    target, oracle = task_evals["target"].aggregates, task_evals["oracle"].aggregates
    gap = target["forget_train/accuracy"]["value"] - oracle["forget_train/accuracy"]["value"]
    assert after["forget_train/accuracy"]["value"] < target["forget_train/accuracy"]["value"] - gap / 2
    assert abs(after["test/accuracy"]["value"] - target["test/accuracy"]["value"]) < 0.1
    assert after["retain_train/accuracy"]["value"] > 0.9
