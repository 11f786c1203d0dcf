"""Metrics: pure numpy functions over per-item arrays (losses, log-probs, generations).

Scoring a model to get those arrays lives in `obliviate.models`; keeping the two apart lets logs from
other tools (e.g. TOFU's evaluation logs, see `obliviate.compat`) be scored by the same functions.
Each metric's direction is declared in `registry.METRICS`.
"""

from obliviate.metrics.fluency import fluency_scores, repetition_rate
from obliviate.metrics.forget_quality import forget_quality
from obliviate.metrics.memorisation import exact_memorisation, extraction_strength
from obliviate.metrics.mia import (
    loss_score,
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    muse_auc,
    muse_privleak,
    reference_score,
    zlib_score,
)
from obliviate.metrics.probability import answer_probability, mean_nll, option_normalised_probability
from obliviate.metrics.registry import METRICS, MetricInfo, get_metric
from obliviate.metrics.rouge import rouge_l
from obliviate.metrics.stats import bootstrap_ci, summarize
from obliviate.metrics.truth_ratio import (
    forget_truth_score,
    forget_truth_values,
    retain_truth_score,
    retain_truth_values,
    truth_ratio_arithmetic,
    truth_ratio_geometric,
)
from obliviate.metrics.utility import model_utility

__all__ = [
    "METRICS",
    "MetricInfo",
    "answer_probability",
    "bootstrap_ci",
    "exact_memorisation",
    "extraction_strength",
    "fluency_scores",
    "forget_quality",
    "forget_truth_score",
    "forget_truth_values",
    "get_metric",
    "loss_score",
    "mean_nll",
    "mia_auc",
    "min_k_plus_plus_score",
    "min_k_score",
    "model_utility",
    "muse_auc",
    "muse_privleak",
    "option_normalised_probability",
    "reference_score",
    "repetition_rate",
    "retain_truth_score",
    "retain_truth_values",
    "rouge_l",
    "summarize",
    "truth_ratio_arithmetic",
    "truth_ratio_geometric",
    "zlib_score",
]
