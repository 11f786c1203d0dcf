"""The qa suite's aggregates: each metric's mean with its 95% bootstrap CI, model utility (its CI resampling
a set's items jointly), forget quality against the oracle, membership AUCs and TOFU's PrivLeak.

Pure functions of the per-item arrays `obliviate.evals.qa` scores (`SetScores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from obliviate import metrics as M

if TYPE_CHECKING:
    from obliviate.evals.qa import SetScores

N_BOOT = 1000
EXTRA_DIRECTIONS = {"repetition_rate": False, "fluency": True}  # the forget set's fluency measures
MODEL_UTILITY = "model_utility"
MODEL_UTILITY_WITHOUT_ROUGE = "model_utility_without_rouge"  # generation off: 2 of 3 numbers per set


def tofu_privleak(auc: float, auc_oracle: float) -> float:
    """open-unlearning's privleak: ((1 − AUC) − (1 − AUC_oracle)) / (1 − AUC_oracle + 1e-10) × 100."""
    from obliviate.evals.open_unlearning import privleak

    return privleak(auc, auc_oracle)


def oracle_mia_aucs_from_items(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The oracle's membership AUC per attack (forget vs holdout) from its saved items.jsonl."""
    out = {}
    keys = sorted({k for r in rows for k in r if k.startswith("mia_")})
    for key in keys:
        forget = [r[key] for r in rows if r["set"] == "forget" and key in r]
        holdout = [r[key] for r in rows if r["set"] == "holdout" and key in r]
        if forget and holdout:
            out[key.removeprefix("mia_")] = float(M.mia_auc(forget, holdout)["auc"])
    return out


def _summary(values: np.ndarray, higher_is_better: bool | None) -> dict[str, Any]:
    """Mean ("value"), 95% bootstrap CI and n over the non-NaN values."""
    summary = M.summarize(values, higher_is_better, n_boot=N_BOOT)
    return {"value": summary.pop("mean"), **summary}


def _utility_components(sets: Sequence[SetScores]) -> dict[str, np.ndarray]:
    comps = {}
    for s in sets:
        if s.role not in ("retain", "utility"):
            continue
        comps[f"{s.name}/probability"] = s.probability
        comps[f"{s.name}/truth_ratio"] = s.truth_score
        if s.rouge is not None:
            comps[f"{s.name}/rouge"] = s.rouge
    return comps


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values (NaN when there are none)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def _row_nanmeans(values: np.ndarray) -> np.ndarray:
    """`_nanmean` of each row of a (B, n) array."""
    kept = ~np.isnan(values)
    count = kept.sum(1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.where(kept, values, 0.0).sum(1) / count, np.nan)


def _model_utility(comps: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Harmonic mean of the component means ("SET/metric" -> per-item values), with a bootstrap CI
    that resamples the items of each set jointly across its components (module docstring). A component
    with no value at all (no truth ratio on sets without perturbed answers, RWKU) is left out."""
    comps = {k: np.asarray(v, dtype=float) for k, v in comps.items()}
    names = sorted(k for k, v in comps.items() if (~np.isnan(v)).any())
    value = M.model_utility({k: _nanmean(comps[k]) for k in names})
    by_set: dict[str, list[str]] = {}
    for key in names:
        by_set.setdefault(key.rpartition("/")[0], []).append(key)
    for keys in by_set.values():
        if len({len(comps[k]) for k in keys}) > 1:
            raise ValueError(f"model utility: components {keys} of one set differ in length")
    rng = np.random.default_rng(seed)
    # Each replicate draws each set's items once (in the order of a loop over replicates, then sets),
    # and all replicates' component means are then taken at once: (N_BOOT, n) per set.
    draws: dict[str, list[np.ndarray]] = {name: [] for name in by_set}
    for _ in range(N_BOOT):
        for name, keys in by_set.items():
            n = len(comps[keys[0]])
            draws[name].append(rng.integers(0, n, n))  # one draw of the set's items for all its components
    means = np.column_stack([_row_nanmeans(comps[k][np.stack(draws[name])])
                             for name, keys in by_set.items() for k in keys])  # (N_BOOT, components)
    # A replicate that drew only NaN items for a component has no utility; it is left out.
    with np.errstate(divide="ignore"):
        boots = np.where(np.isnan(means).any(1), np.nan,
                         np.where((means == 0).any(1), 0.0, 1.0 / np.mean(1.0 / means, axis=1)))
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {"value": float(value), "ci_low": float(lo), "ci_high": float(hi), "n": len(names),
            "higher_is_better": True, "components": names}


def aggregate(sets: Sequence[SetScores], oracle_forget_tr: np.ndarray | None = None,
              oracle_mia_auc: Mapping[str, float] | None = None) -> dict[str, dict]:
    """results.json aggregates: each metric with value, 95% CI, n and direction."""
    out: dict[str, dict] = {}
    for s in sets:
        forget = s.role == "forget"
        if s.role == "holdout":
            continue
        out[f"{s.name}/probability"] = _summary(s.probability, not forget)
        out[f"{s.name}/truth_ratio"] = _summary(s.truth_score, None if forget else True)
        if s.rouge is not None:
            out[f"{s.name}/rouge"] = _summary(s.rouge, not forget)
        if forget:
            out[f"{s.name}/exact_memorisation"] = _summary(s.exact_mem, False)
            out[f"{s.name}/extraction_strength"] = _summary(s.extraction, False)
            for key, values in s.extra.items():
                if not np.isnan(values).all():
                    out[f"{s.name}/{key}"] = _summary(values, EXTRA_DIRECTIONS.get(key))
    comps = _utility_components(sets)
    if comps:
        # Without generations there is no ROUGE: the harmonic mean of the other components is
        # another number than model utility, so it is reported under its own name.
        complete = all(s.rouge is not None for s in sets if s.role in ("retain", "utility"))
        out[MODEL_UTILITY if complete else MODEL_UTILITY_WITHOUT_ROUGE] = _model_utility(comps)
    forget = next((s for s in sets if s.role == "forget"), None)
    if forget is not None and oracle_forget_tr is not None:
        fq = M.forget_quality(forget.truth_ratio[~np.isnan(forget.truth_ratio)],
                              oracle_forget_tr[~np.isnan(oracle_forget_tr)])
        out["forget_quality"] = {"value": fq["forget_quality"], "ks_statistic": fq["ks_statistic"],
                                 "n": fq["n_model"], "n_oracle": fq["n_oracle"], "higher_is_better": True}
    holdout = next((s for s in sets if s.role == "holdout"), None)
    if forget is not None and holdout is not None:
        for attack in forget.mia:
            res = M.mia_auc(forget.mia[attack], holdout.mia[attack])
            out[f"mia/{attack}_auc"] = {"value": float(res["auc"]), "tpr_at_1pct_fpr": float(res["tpr_at_1pct_fpr"]),
                                        "n": len(forget.mia[attack]), "n_nonmember": len(holdout.mia[attack]),
                                        "higher_is_better": None}
            if oracle_mia_auc and attack in oracle_mia_auc:
                out[f"mia/{attack}_privleak"] = {"value": tofu_privleak(res["auc"], oracle_mia_auc[attack]),
                                                 "auc_oracle": float(oracle_mia_auc[attack]),
                                                 "higher_is_better": None}
    return out
