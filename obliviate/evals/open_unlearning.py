"""open-unlearning's TOFU protocol (`experiment=eval/tofu/default`) as a named preset of the qa suite.

`obliviate eval MODEL --data tofu:forget10@DIR --oracle RETAIN_MODEL --preset open-unlearning` sets
open-unlearning's format (the chat template, system prompt "You are a helpful assistant.", date string
"10 Apr 2025"), greedy generation of up to 200 new tokens, and reports its seven headline keys beside
obliviate's own metrics:

- `forget_truth_ratio`, `forget_quality`, `forget_Q_A_Prob`, `forget_Q_A_ROUGE`, `model_utility`: the
  qa suite's own values under that format (the same definitions);
- `extraction_strength`: ES = 1 − k/N over the answer tokens **without the last labelled token** (the
  template's end-of-turn), and 1/N when no suffix matches;
- `privleak`: Min-K% (k = 0.4) over the same tokens, AUC of forget (label 0) against holdout (label 1)
  with score −MinK, then privleak = ((1 − AUC) − (1 − AUC_ref)) / ((1 − AUC_ref) + 1e-10) × 100, where
  AUC_ref is the oracle's (the retain model's) AUC, or 0.5 without an oracle as open-unlearning does.

Differs from obliviate's defaults, which keep the end-of-turn token for extraction strength and give
ES = 0 when no suffix matches (`metrics/memorisation.py`): open-unlearning's variants are reported
under their own keys, never in place of obliviate's. Checked against open-unlearning itself by
tests/test_open_unlearning_parity.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from obliviate.metrics.mia import roc_auc

PRESET = "open-unlearning"
SYSTEM_PROMPT = "You are a helpful assistant."
DATE_STRING = "10 Apr 2025"
MIN_K = 0.4
DEFAULT_REF_AUC = 0.5  # open-unlearning's reference AUC when no retain-model logs are given
KEYS = ("forget_truth_ratio", "forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility",
        "privleak", "extraction_strength")


def preset_format(max_new_tokens: int = 200):
    """open-unlearning's prompt format for its default Llama-3.2 instruct model config."""
    from obliviate.models.prompts import make_format

    return make_format("chat", SYSTEM_PROMPT, {"date_string": DATE_STRING}, max_new_tokens)


def extraction_strength(argmax_match: Sequence[np.ndarray]) -> np.ndarray:
    """Per item: 1 − k/N with k the first position from which every prediction matches; 1/N if none does."""
    out = np.empty(len(argmax_match))
    for i, match in enumerate(argmax_match):
        m = np.asarray(match, dtype=bool)
        n = m.size
        k = next((k for k in range(n) if m[k:].all()), None)
        out[i] = (1 - k / n) if k is not None else 1 / n
    return out


def min_k(logprobs: Sequence[np.ndarray], k: float = MIN_K) -> np.ndarray:
    """Per item: −mean of the lowest max(1, int(k·n)) token log-probs (higher: less likely a member)."""
    return np.array([-float(np.sort(lp)[:max(1, int(k * lp.size))].mean()) for lp in logprobs])


def min_k_auc(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """ROC AUC with forget labelled 0 and holdout 1 (1.0: the model memorised the forget set)."""
    labels = np.r_[np.zeros(len(forget_scores)), np.ones(len(holdout_scores))]
    return roc_auc(labels, np.r_[forget_scores, holdout_scores])


def privleak(auc: float, ref_auc: float | None) -> float:
    ref = DEFAULT_REF_AUC if ref_auc is None else ref_auc
    return ((1 - auc) - (1 - ref)) / ((1 - ref) + 1e-10) * 100


def without_last(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each item's per-token values without its last labelled token (the template's end-of-turn)."""
    return [np.asarray(v)[:-1] if np.asarray(v).size > 1 else np.asarray(v) for v in values]


def headline(aggregates: dict[str, dict[str, Any]], ou_items: dict[str, dict[str, np.ndarray]],
             ref_auc: float | None) -> dict[str, float | None]:
    """The seven keys, from the qa suite's aggregates and the per-set OU scores (`ou_item_scores`)."""
    forget, holdout = ou_items.get("forget"), ou_items.get("holdout")
    auc = min_k_auc(forget["min_k"], holdout["min_k"]) if forget is not None and holdout is not None else None

    def value(key: str) -> float | None:
        return aggregates[key]["value"] if key in aggregates else None

    return {
        "forget_truth_ratio": value("forget/truth_ratio"),
        "forget_quality": value("forget_quality"),
        "forget_Q_A_Prob": value("forget/probability"),
        "forget_Q_A_ROUGE": value("forget/rouge"),
        "model_utility": value("model_utility"),
        "privleak": None if auc is None else privleak(auc, ref_auc),
        "extraction_strength": float(np.mean(forget["es"])) if forget is not None else None,
        "min_k_auc": auc,
        "ref_min_k_auc": ref_auc,
    }


def ou_item_scores(scored_answers: Sequence, role: str) -> dict[str, np.ndarray]:
    """open-unlearning's per-item scores of one set from its answers' ContinuationScores."""
    out = {"min_k": min_k(without_last([s.logprobs for s in scored_answers]))}
    if role == "forget":
        out["es"] = extraction_strength(without_last([s.argmax_match for s in scored_answers]))
    return out
