"""The table of metrics: name, direction, one-line description, suite.

Every metric declares which way is good. `higher_is_better` is True or False where one direction is
always better, and None where the target is a value rather than a direction (a membership AUC is best
near 0.5, PrivLeak near 0) or where the direction depends on the split (memorisation is bad on the
forget set and good on the retain set). The description then says what to compare against.

Suites: "qa" (TOFU-style question answering), "text" (MUSE-style passages), "mia" (membership
inference scores and their summaries).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from obliviate.errors import ConfigError


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool | None
    description: str
    suite: str


_TABLE = [
    # -- per-item probabilities (probability.py)
    MetricInfo("probability", True, "exp(-mean answer-token NLL), per item (TOFU 'Prob.')", "qa"),
    MetricInfo(
        "option_probability", True,
        "P(a) / (P(a) + sum_j P(perturbed_j)), probability normalised over the answer options", "qa",
    ),
    # -- ROUGE (rouge.py)
    MetricInfo("rouge_l_recall", True, "ROUGE-L recall of the greedy generation vs the reference (TOFU)", "qa"),
    MetricInfo("rouge_l_f1", True, "ROUGE-L F1 of the generation vs the reference (MUSE)", "text"),
    # -- truth ratio (truth_ratio.py); R is perturbed over paraphrased
    MetricInfo(
        "truth_ratio_arithmetic", None,
        "per-item R = mean_j P(perturbed_j) / P(paraphrased) (TOFU paper formula); input to the scores",
        "qa",
    ),
    MetricInfo(
        "truth_ratio_geometric", None,
        "per-item R = geomean_j P(perturbed_j) / P(paraphrased) (TOFU logs, open-unlearning)", "qa",
    ),
    MetricInfo(
        "forget_truth_score", None,
        "mean(min(R, 1/R)) on the forget set; 1 means correct and perturbed answers are equally likely; "
        "the target is the oracle's value, not 1 (forget quality compares the two)", "qa",
    ),
    MetricInfo("retain_truth_score", True, "mean(max(0, 1 - R)) on retain, real-author, world-fact sets", "qa"),
    # -- forget quality and utility (forget_quality.py, utility.py)
    MetricInfo(
        "forget_quality", True,
        "KS-test p-value between the model's and the oracle's forget-set truth ratios; depends on n", "qa",
    ),
    MetricInfo("ks_statistic", False, "KS statistic behind forget_quality; 0 means identical distributions", "qa"),
    MetricInfo("model_utility", True, "harmonic mean of the 9 TOFU utility numbers (0 if any is 0)", "qa"),
    MetricInfo(
        "model_utility_without_rouge", True,
        "harmonic mean of the utility numbers but ROUGE (6 of TOFU's 9), when answers were not generated; "
        "not comparable with model_utility", "qa",
    ),
    # -- memorisation (memorisation.py)
    MetricInfo(
        "exact_memorisation", None,
        "fraction of answer tokens where the teacher-forced argmax equals the label; "
        "lower is better on forget, higher on retain", "qa",
    ),
    MetricInfo(
        "extraction_strength", None,
        "1 - k*/N, k* the first position from which the argmax matches the whole suffix; "
        "lower is better on forget, higher on retain", "qa",
    ),
    # -- fluency of generations (fluency.py)
    MetricInfo("repetition_rate", False, "share of a generation's word bigrams that repeat an earlier one "
               "(rep-2); near 1 for collapsed, repetitive text", "qa"),
    MetricInfo("fluency", True, "a fluency (gibberish) classifier's P(fluent) of a generation", "qa"),
    # -- membership inference (mia.py); per-item scores are oriented "higher = more likely a member"
    MetricInfo("mia_loss", None, "mean token log-prob (LOSS attack); higher = more likely a member", "mia"),
    MetricInfo("mia_zlib", None, "mean token log-prob / zlib-compressed bytes (Carlini et al. 2021)", "mia"),
    MetricInfo("mia_min_k", None, "mean of the lowest k fraction of token log-probs (Min-K%, k=0.4)", "mia"),
    MetricInfo("mia_min_k_plus_plus", None, "mean of the lowest k fraction of standardised log-probs", "mia"),
    MetricInfo("mia_reference", None, "mean log-prob minus a reference model's mean log-prob", "mia"),
    MetricInfo("mia_gradnorm", None, "minus the mean p-norm of the answer NLL's parameter gradients (GradNorm)",
               "mia"),
    MetricInfo("mia_auc", None, "ROC AUC of members vs non-members; 0.5 = indistinguishable (target)", "mia"),
    MetricInfo("mia_tpr_at_1pct_fpr", None, "TPR at FPR <= 1%; near 0.01 = indistinguishable (target)", "mia"),
    MetricInfo(
        "privleak", None,
        "MUSE PrivLeak = (AUC_unlearned - AUC_retrained) / AUC_retrained * 100; best near 0, "
        "negative = under-unlearning, positive = over-unlearning", "text",
    ),
]

METRICS: dict[str, MetricInfo] = {info.name: info for info in _TABLE}


def get_metric(name: str) -> MetricInfo:
    """Look a metric up by name; an unknown name raises `ConfigError` with close matches."""
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, METRICS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(METRICS)}"
    raise ConfigError(f"unknown metric {name!r}; {hint}")


# Headline aggregates of a run, in the order tables show them: (key in results.json, label).
HEADLINE_AGGREGATES = [
    ("forget_quality", "forget quality (KS p-value)"),
    ("forget_quality/ks_statistic", "forget quality: KS statistic D"),
    ("model_utility", "model utility"),
    ("model_utility_without_rouge", "model utility without ROUGE (6 of 9 numbers)"),
    ("forget/probability", "forget probability"),
    ("forget/rouge", "forget ROUGE-L recall"),
    ("forget/truth_ratio", "forget truth ratio"),
    ("forget/extraction_strength", "forget extraction strength"),
    ("retain/probability", "retain probability"),
    ("retain/rouge", "retain ROUGE-L recall"),
    ("mia/min_k_auc", "MIA AUC, Min-K% (forget vs holdout)"),
]
