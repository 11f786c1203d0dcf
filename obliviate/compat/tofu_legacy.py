"""Score TOFU's legacy evaluation logs with obliviate's own metric functions.

A legacy log (locuslab/tofu, `eval_results/ds_size300/eval_log_aggregated.json`) is one JSON object
with four parts, each a map from measurement name to {item index: value}:

    eval_log.json                      retain set          -> "Retain ..."
    eval_real_author_wo_options.json   real authors        -> "Real Authors ..."
    eval_real_world_wo_options.json    world facts         -> "World Facts ..."
    eval_log_forget.json               forget set          -> "Forget ..."

The report reproduces TOFU's `aggregate_eval_stat.py`, which produced the published numbers:

    Probability   retain, forget: mean exp(-avg_gt_loss)
                  real authors, world facts: mean P(a) / (P(a) + sum_j P(perturbed_j))
    ROUGE         mean rougeL_recall, as logged
    Truth Ratio   per item R = geomean_j P(pert_j) / P(para) from avg_paraphrased_loss and
                  average_perturb_loss (the script's exp(mean_j pert_j - para) is 1/R);
                  forget: mean(min(R, 1/R)); other sets: mean(max(0, 1 - R))
    model_utility harmonic mean of the nine non-forget numbers
    forget_quality KS-test p-value between the per-item forget-set R of the model and of the oracle
                  (KS is invariant under R -> 1/R, so this equals the script's value)

Items within a part are aligned by their index, not by the order of the JSON maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from obliviate.errors import DataError
from obliviate.metrics.forget_quality import forget_quality
from obliviate.metrics.probability import answer_probability, option_normalised_probability
from obliviate.metrics.truth_ratio import forget_truth_score, retain_truth_score, truth_ratio_geometric
from obliviate.metrics.utility import model_utility

PARTS: dict[str, str] = {
    "eval_log.json": "Retain",
    "eval_real_author_wo_options.json": "Real Authors",
    "eval_real_world_wo_options.json": "World Facts",
    "eval_log_forget.json": "Forget",
}
FORGET_PART = "eval_log_forget.json"
# Sets where TOFU normalises the answer probability over the options.
_OPTION_SETS = {"Real Authors", "World Facts"}
_MEASURES = ("Probability", "ROUGE", "Truth Ratio")
UTILITY_KEYS: tuple[str, ...] = tuple(
    f"{name} {measure}" for name in ("Retain", "Real Authors", "World Facts") for measure in _MEASURES
)
FORGET_KEYS: tuple[str, ...] = tuple(f"Forget {measure}" for measure in _MEASURES)


def load_tofu_log(path: str | Path) -> dict:
    """Read one legacy log; a missing file or invalid JSON raises `DataError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read: {err}") from None
    try:
        log = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg}", line=err.lineno) from None
    if not isinstance(log, dict):
        raise DataError(path, f"expected a JSON object with parts {', '.join(PARTS)}")
    return log


class _Part:
    """One part of a log; columns come back as arrays aligned on the first column's item indices."""

    def __init__(self, log: dict, path: Path, name: str) -> None:
        if name not in log:
            raise DataError(path, f"missing part {name!r}")
        if not isinstance(log[name], dict):
            raise DataError(path, f"part {name!r} is not a JSON object")
        self.data, self.path, self.name = log[name], path, name
        self.ids: list[str] | None = None

    def column(self, key: str, ndim: int = 1) -> np.ndarray:
        if key not in self.data:
            raise DataError(self.path, f"part {self.name!r} has no key {key!r}")
        values = self.data[key]
        where = f"{self.name}/{key}"
        if not isinstance(values, dict) or not values:
            raise DataError(self.path, f"{where}: expected a non-empty map from item index to value")
        if self.ids is None:
            self.ids = list(values)
        elif values.keys() != set(self.ids):
            raise DataError(self.path, f"{where}: item indices differ from the part's other keys")
        try:
            arr = np.array([values[i] for i in self.ids], dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.ndim != ndim:
            shape = "a number" if ndim == 1 else "a list of numbers of the same length"
            raise DataError(self.path, f"{where}: every value must be {shape}")
        finite = np.isfinite(arr) if ndim == 1 else np.isfinite(arr).all(axis=1)
        if not finite.all():
            item = self.ids[int(np.argmin(finite))]
            raise DataError(self.path, f"{where}: item {item} is null, NaN or infinite; every value must be a "
                                       "finite number")
        return arr


def _truth_ratio(part: _Part) -> np.ndarray:
    """Per-item R, perturbed over paraphrased (geometric form)."""
    return truth_ratio_geometric(part.column("avg_paraphrased_loss"), part.column("average_perturb_loss", 2))


def _part_scores(part: _Part, label: str) -> dict[str, float]:
    gt_loss = part.column("avg_gt_loss")
    if label in _OPTION_SETS:
        prob = option_normalised_probability(gt_loss, part.column("average_perturb_loss", 2))
    else:
        prob = answer_probability(gt_loss)
    ratio = _truth_ratio(part)
    truth = forget_truth_score(ratio) if part.name == FORGET_PART else retain_truth_score(ratio)
    return {
        f"{label} Probability": float(prob.mean()),
        f"{label} ROUGE": float(part.column("rougeL_recall").mean()),
        f"{label} Truth Ratio": truth,
    }


def tofu_legacy_report(model_log: str | Path, oracle_log: str | Path) -> dict:
    """TOFU's aggregate numbers for `model_log`, with forget quality against `oracle_log`.

    Keys: model_utility, forget_quality, ks_statistic, n_model, n_oracle, the nine UTILITY_KEYS
    ("Retain Probability", ..., "World Facts Truth Ratio") and the three FORGET_KEYS.
    """
    model_path, oracle_path = Path(model_log), Path(oracle_log)
    model, oracle = load_tofu_log(model_path), load_tofu_log(oracle_path)
    scores: dict[str, float] = {}
    for name, label in PARTS.items():
        scores.update(_part_scores(_Part(model, model_path, name), label))
    quality = forget_quality(
        _truth_ratio(_Part(model, model_path, FORGET_PART)),
        _truth_ratio(_Part(oracle, oracle_path, FORGET_PART)),
    )
    return {
        "model_utility": model_utility({key: scores[key] for key in UTILITY_KEYS}),
        **quality,
        **scores,
    }
