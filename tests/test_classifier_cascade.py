"""The prompt classifier's prefilter cascade: a hashing stage screens prompts for the main embedder.

The main embedder here is a word-level hashing embedder registered under the MiniLM name, which
counts the texts it embeds, so the tests need no sentence model and can see what reaches it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from obliviate.interventions import classifier as clf
from obliviate.interventions.classifier import MINILM, PromptClassifier
from obliviate.interventions.detector import fit_detector, report_table
from obliviate.methods.eco import ECOConfig
from tests.conftest import build_tiny_tokenizer
from tests.test_classifier_report import FORGET, RETAIN

NAMES = [f"{a}{b}" for a in ("Ka", "Lo", "Mi", "Ne", "Ru", "Sa", "To", "Vi") for b in ("dor", "len", "mar", "rin",
                                                                                     "sel", "tav", "wen", "zic")]
FORGET_GROUPS = [[f"Where was {n} born?", f"What did {n} write?", f"Who taught {n}?"] for n in NAMES[:40]]
RETAIN_TEXTS = [f"{q} {n}?" for n in NAMES[40:] for q in ("Which river flows past", "How tall is the tower of",
                                                             "What grows near", "Who rules the town of")]


class CountingEmbedder:
    """Word hashing embeddings that remember every text they embed."""

    name = MINILM

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vec = HashingVectorizer(analyzer="word", n_features=1024, alternate_sign=False, norm="l2")
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        return self._vec.transform(list(texts)).toarray().astype(np.float32)


@pytest.fixture
def main_embedder(monkeypatch) -> CountingEmbedder:
    embedder = CountingEmbedder()
    monkeypatch.setitem(clf._EMBEDDERS, MINILM, embedder)
    return embedder


def fit(alpha: float = 0.25, **kw) -> PromptClassifier:
    """12 of the 40 forget groups calibrate: k = ⌊0.25 · 13⌋ = 3 misses to share."""
    return PromptClassifier.fit(FORGET_GROUPS, RETAIN_TEXTS, MINILM, alpha, seed=3, **kw)


def test_prompts_the_prefilter_drops_are_never_embedded_by_the_main_classifier(main_embedder):
    cascade = fit(prefilter="hashing")
    assert cascade.prefilter is not None and cascade.prefilter.embedder == "hashing"
    queries = [f"Where was {n} born?" for n in NAMES] + [f"Which river flows past {n}?" for n in NAMES] + \
        ["Where was Kador born, and who taught him?", "Describe a quiet morning."]
    cascade.forget_seen()
    main_embedder.seen.clear()
    flags = cascade.flags(queries)
    passed = cascade.prefilter.flags(queries)
    assert 0 < passed.sum() < len(queries)
    assert sorted(main_embedder.seen) == sorted({q for q, p in zip(queries, passed, strict=True) if p})
    main = cascade.scores(queries) >= cascade.threshold
    assert np.array_equal(flags, passed & main)
    assert flags[:40].mean() > 0.9 and not flags[64 + 40 : 128].any()  # forget people flagged, retain rivers not


def test_the_stages_share_the_calibration_misses_alpha_allows(main_embedder):
    alpha = 0.25
    cascade = fit(alpha, prefilter="hashing")
    order = np.random.default_rng(3).permutation(len(FORGET_GROUPS))
    groups = [FORGET_GROUPS[i] for i in order[: round(0.3 * len(FORGET_GROUPS))]]
    cal = [t for g in groups for t in g]
    n, k = len(groups), math.floor(alpha * (len(groups) + 1))  # one calibration score per group
    assert cascade.n_calibration == n and k >= 3
    # The prefilter's τ is at most its lowest calibration score (one miss) and the highest retain training
    # score; the main stage's τ is the (k − 1)-th lowest group score, a group's score its lowest prompt's.
    pre = cascade.prefilter
    assert pre.threshold == min(min(pre.scores(cal)), max(pre.scores(RETAIN_TEXTS)))
    assert (pre.scores(RETAIN_TEXTS) >= pre.threshold).mean() <= 0.02
    wider = fit(alpha, prefilter="hashing", prefilter_retain_share=0.3).prefilter
    assert wider.threshold < pre.threshold and (wider.scores(RETAIN_TEXTS) >= wider.threshold).mean() >= 0.3
    assert cascade.threshold == np.sort([cascade.scores(g).min() for g in groups])[k - 2]
    assert cascade.prefilter.alpha == pytest.approx(1 / (n + 1))
    assert cascade.stage_alpha == pytest.approx(alpha - 1 / (n + 1))
    # Each stage is the classifier its embedder gives alone (same split, same head).
    for stage, embedder in ((cascade, MINILM), (cascade.prefilter, "hashing")):
        alone = PromptClassifier.fit(FORGET_GROUPS, RETAIN_TEXTS, embedder, alpha, seed=3)
        assert np.array_equal(stage.weight, alone.weight) and stage.bias == alone.bias
    missed = [bool((~cascade.flags(g)).any()) for g in groups]
    assert sum(missed) <= k  # at most the k group misses the two stages share


def test_the_cascade_round_trips_and_old_states_load_without_a_prefilter(main_embedder):
    cascade = fit(prefilter="hashing")
    loaded = PromptClassifier.from_dict(cascade.to_dict())
    assert loaded.prefilter is not None and loaded.prefilter.threshold == cascade.prefilter.threshold
    texts = [t for g in FORGET_GROUPS for t in g] + RETAIN_TEXTS
    assert np.array_equal(loaded.flags(texts), cascade.flags(texts))
    old = {k: v for k, v in cascade.to_dict().items() if k != "prefilter"}
    assert PromptClassifier.from_dict(old).prefilter is None


@pytest.mark.parametrize("case", ["too few calibration prompts", "fixed threshold", "same embedder"])
def test_no_prefilter_where_it_cannot_be_calibrated_or_would_not_save_anything(main_embedder, case):
    if case == "too few calibration prompts":  # 12 calibration groups: k = ⌊0.1 · 13⌋ = 1, nothing to share
        out = fit(0.1, prefilter="hashing")
        assert out.stage_alpha == 0.1 and out.threshold > -math.inf
    elif case == "fixed threshold":
        out = fit(threshold=0.5, prefilter="hashing")
    else:
        out = PromptClassifier.fit(FORGET_GROUPS, RETAIN_TEXTS, "hashing", 0.1, seed=3, prefilter="hashing")
    assert out.prefilter is None


def test_detector_config_builds_the_cascade_by_default_and_reports_what_it_screens(main_embedder):
    assert ECOConfig().detector_kwargs()["prefilter"] == "hashing"
    assert ECOConfig(prefilter="none").detector_kwargs()["prefilter"] is None
    assert ECOConfig(prefilter_retain_share=0.1).detector_kwargs()["prefilter_retain_share"] == 0.1
    tok = build_tiny_tokenizer()
    # 2 calibration groups (of 7 trained facts): alpha 0.7 gives k = ⌊0.7 · 3⌋ = 2 misses to share.
    detector, report = fit_detector(tok, FORGET * 3, RETAIN * 3, embedder=MINILM, alpha=0.7, holdout_fraction=0.3,
                                    prefilter="hashing", seed=1)
    assert detector.classifier.prefilter is not None
    assert report["prefilter"]["embedder"] == "hashing" and report["prefilter"]["alpha"] < 0.7
    for kind in ("original", "paraphrased"):
        row = report["held_out"][kind]
        assert row["fpr"] <= row["screened_in"] <= 1  # a flagged prompt passed the prefilter
    table = report_table(report)
    assert table is not None and len(table.columns) == 8


def test_the_prefilter_scores_a_wrapped_question_by_its_best_sentence(main_embedder):
    pre = fit(prefilter="hashing").prefilter
    question = FORGET_GROUPS[0][0]
    preamble = ("You are a careful archivist with a long memory for the small print of old town records, and you "
                "answer every question in full. ")
    wrapped = f"{preamble}\nQuestion: {question}"
    whole = PromptClassifier(pre.embedder, pre.weight, pre.bias, pre.threshold)  # the same head on whole texts
    pieces = whole.scores([wrapped, preamble.strip(), "Question: " + question])
    assert pre.scores([wrapped])[0] == pytest.approx(pieces.max()) and pieces.argmax() == 2
    assert whole.scores([wrapped])[0] < pre.scores([wrapped])[0]
