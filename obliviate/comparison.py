"""Honest statistics across runs: paired comparison of two evaluated runs, and the spread over seeds.

**Paired comparison** (`compare_runs`). Two runs evaluated on the same items give, for every
per-item metric, pairs (a_i, b_i); the question is whether B differs from A beyond item noise.
Pairing removes the between-item variance (some facts are hard for every model), so it detects
differences that two independent CIs would hide. For d_i = b_i − a_i:

- **Wilcoxon signed-rank test** (Wilcoxon 1945; `scipy.stats.wilcoxon`, two-sided): ranks |d_i|
  and compares the rank sums of the positive and negative d_i. Zero differences are dropped
  (Wilcoxon's convention). scipy's `method="auto"` gives the exact null distribution for up to
  50 differences without ties, an exhaustive permutation for up to 13 with ties, and otherwise the
  normal approximation with the tie correction.
- **Paired bootstrap CI** of the mean difference (Efron 1979): resample the n pairs with
  replacement, take mean(d) on each resample, and the 2.5 and 97.5 percentiles
  (`metrics.stats.bootstrap_ci` over the d_i, which is exactly the paired bootstrap).
- **Holm's step-down correction** (Holm 1979) over the metrics compared, since testing many
  metrics at 0.05 finds some "differences" by chance.

A difference is called significant only when p < alpha *and* the CI excludes 0; the verdict says
when it does not survive Holm's correction. Aggregate-only metrics (forget quality, model utility,
membership AUCs) have no per-item pairs: they are shown side by side, untested, and say so.

Items pair by (set, index): the index is the item's position in its evaluation set, which is stable
only for identical data, so runs whose results.json records different data hashes for a set are
refused, and a `subject`/`id` mismatch within a pair is refused too.

**Several seeds** (`aggregate_runs`, `run_seeds`): each seed of the built-in world is a new world
(people, splits, target and oracle), so the spread over seeds covers data and training noise that
one run's item-level CI cannot. Every aggregate gets its sample sd (ddof = 1) and the 95% interval
over seeds of `metrics.stats.seed_interval`, on a scale that keeps it in the metric's range; the
bench leaderboard uses the same function, and the same seed policy (the method's seed is the world
seed unless `--set seed=` fixes it, `config.with_seed`), so the two agree on the same runs.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from obliviate.errors import ConfigError, DataError, ObliviateError
from obliviate.io import read_json
from obliviate.metrics.registry import HEADLINE_AGGREGATES
from obliviate.metrics.stats import bootstrap_ci

ALPHA = 0.05
N_BOOT = 10_000

# Fields of an items.jsonl row that identify the item rather than measure it.
ID_FIELDS = ("set", "index", "subject", "id")
# Per-item field -> the name of the aggregate it backs in results.json. The qa suite stores the
# per-item truth *score* (min(R, 1/R) or max(0, 1 − R)) that its "truth_ratio" aggregate averages,
# next to the raw ratio R, which therefore needs another name here.
FIELD_ALIASES = {"truth_score": "truth_ratio", "truth_ratio": "truth_ratio_raw"}

HEADLINE = HEADLINE_AGGREGATES  # (key in results.json, label), in table order


# -- reading evaluated runs ---------------------------------------------------------------------------

@dataclass
class EvaluatedRun:
    """An evaluated run (or eval directory): its results.json and items.jsonl."""

    path: Path
    results: dict[str, Any]
    items: list[dict[str, Any]]

    @property
    def aggregates(self) -> dict[str, dict[str, Any]]:
        return self.results.get("aggregates", {})

    @property
    def data_hashes(self) -> dict[str, str]:
        return self.results.get("data_hashes", {})


def _read_items(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(path, "not valid JSON", line_no) from None
            if not isinstance(row, dict) or "set" not in row or "index" not in row:
                raise DataError(path, "expected an object with 'set' and 'index', as `obliviate eval` writes",
                                line_no)
            rows.append(row)
    return rows


def load_evaluated(run: str | Path) -> EvaluatedRun:
    """Read RUN/results.json and RUN/items.jsonl; a one-line error says how to make them if missing."""
    path = Path(run)
    for name in ("results.json", "items.jsonl"):
        if not (path / name).is_file():
            raise ObliviateError(f"{path}: no {name}; evaluate it first (obliviate eval {path} ...)")
    try:
        results = read_json(path / "results.json")
    except json.JSONDecodeError as exc:
        raise DataError(path / "results.json", f"not valid JSON ({exc.msg})", exc.lineno) from None
    return EvaluatedRun(path, results, _read_items(path / "items.jsonl"))


# -- the paired statistics -----------------------------------------------------------------------------

def paired_test(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA,
                seed: int = 0) -> dict[str, Any]:
    """Wilcoxon signed-rank p and paired-bootstrap CI of mean(b − a), over the pairs with both finite."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a_arr) & np.isfinite(b_arr)
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    diff = b_arr - a_arr  # (n,)
    n_nonzero = int(np.count_nonzero(diff))
    out: dict[str, Any] = {"n": int(diff.size), "n_nonzero": n_nonzero,
                           "mean_a": float(a_arr.mean()) if diff.size else math.nan,
                           "mean_b": float(b_arr.mean()) if diff.size else math.nan,
                           "diff": float(diff.mean()) if diff.size else math.nan}
    out["ci_low"], out["ci_high"] = bootstrap_ci(diff, n_boot=n_boot, alpha=alpha, seed=seed)
    if n_nonzero == 0:  # no evidence of any difference; the signed-rank statistic is undefined
        out["statistic"], out["p_value"] = math.nan, 1.0
    else:
        res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # monotone: never below an earlier one
        adjusted[i] = running
    return adjusted.tolist()


def verdict(row: dict[str, Any], alpha: float = ALPHA) -> str:
    """Plain words: significant only when p < alpha and the CI of the mean difference excludes 0."""
    if row["n_nonzero"] == 0:
        return "identical on every item"
    excludes_zero = row["ci_low"] > 0 or row["ci_high"] < 0
    if not (row["p_value"] < alpha and excludes_zero):
        return "not significant"
    higher = row["diff"] > 0
    words = "B higher" if higher else "B lower"
    better = row.get("higher_is_better")
    if better is not None:
        words += " (better)" if higher == better else " (worse)"
    if row.get("p_holm", 0.0) >= alpha:
        words += ", not after Holm correction"
    return words


# -- comparing two runs --------------------------------------------------------------------------------

def _metric_name(set_name: str, field: str) -> str:
    return f"{set_name}/{FIELD_ALIASES.get(field, field)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools count as 0/1 (per-item correctness)


def _per_item_values(run: EvaluatedRun) -> tuple[dict[tuple[str, int], dict], dict[str, tuple[str, str]]]:
    """({(set, index): row}, {metric name: (set, field)}) for every numeric per-item field."""
    keyed: dict[tuple[str, int], dict] = {}
    metrics: dict[str, tuple[str, str]] = {}
    for row in run.items:
        key = (str(row["set"]), int(row["index"]))
        if key in keyed:
            raise DataError(run.path / "items.jsonl", f"item {key[0]}[{key[1]}] appears twice")
        keyed[key] = row
        for field, value in row.items():
            if field not in ID_FIELDS and _is_number(value):
                metrics.setdefault(_metric_name(key[0], field), (key[0], field))
    return keyed, metrics


def check_same_data(a: EvaluatedRun, b: EvaluatedRun) -> None:
    """Refuse runs evaluated with different suites or on different data for a set both evaluated."""
    suite_a, suite_b = a.results.get("suite"), b.results.get("suite")
    if suite_a and suite_b and suite_a != suite_b:
        raise ObliviateError(f"{a.path} was evaluated with suite '{suite_a}' and {b.path} with '{suite_b}'; "
                             "compare runs evaluated with the same suite")
    for key in sorted(set(a.data_hashes) & set(b.data_hashes)):
        if a.data_hashes[key] != b.data_hashes[key]:
            raise ObliviateError(
                f"{a.path} and {b.path} were evaluated on different data: set '{key}' has hash "
                f"{a.data_hashes[key]} vs {b.data_hashes[key]}; evaluate both on the same sets")


def _check_identity(key: tuple[str, int], row_a: dict, row_b: dict, a: EvaluatedRun, b: EvaluatedRun) -> None:
    for field in ("subject", "id"):
        if field in row_a and field in row_b and row_a[field] != row_b[field]:
            raise ObliviateError(f"{a.path} and {b.path} disagree on item {key[0]}[{key[1]}] ({field} "
                                 f"{row_a[field]!r} vs {row_b[field]!r}): evaluated on different data")


def _select(names: Sequence[str], patterns: Sequence[str] | None,
            default: Callable[[str], bool]) -> list[str]:
    if not patterns:  # the aggregate-backed metrics, or every one if no aggregate names a per-item field
        return [n for n in names if default(n)] or list(names)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"--metric {', '.join(patterns)} matches no shared per-item metric; "
                          f"available: {', '.join(names)}")
    return chosen


def _aggregate_only_row(name: str, agg_a: dict, agg_b: dict) -> dict[str, Any]:
    row = {"metric": name, "value_a": agg_a.get("value"), "value_b": agg_b.get("value"),
           "higher_is_better": agg_a.get("higher_is_better"),
           "note": "no paired test (aggregate only)"}
    for side, agg in (("a", agg_a), ("b", agg_b)):
        for field in ("ci_low", "ci_high", "ks_statistic", "n", "n_oracle"):
            if field in agg:
                row[f"{field}_{side}"] = agg[field]
    if name == "forget_quality":
        row["note"] = "no paired test (a KS p-value)"
    return row


def compare_runs(run_a: str | Path, run_b: str | Path, metrics: Sequence[str] | None = None,
                 all_metrics: bool = False, n_boot: int = N_BOOT, alpha: float = ALPHA,
                 seed: int = 0) -> dict[str, Any]:
    """Paired tests of B against A on their shared items, one per per-item metric.

    By default the metrics are those behind an aggregate in both results.json files; `all_metrics`
    adds every numeric per-item field (raw truth ratio, mean NLL, membership scores, ...), and
    `metrics` picks names or fnmatch patterns ("forget/*").
    """
    a, b = load_evaluated(run_a), load_evaluated(run_b)
    check_same_data(a, b)
    items_a, names_a = _per_item_values(a)
    items_b, names_b = _per_item_values(b)
    shared = sorted(set(items_a) & set(items_b))
    if not shared:
        raise ObliviateError(f"{a.path} and {b.path} share no evaluated items (pairs match by set and index)")
    for key in shared:
        _check_identity(key, items_a[key], items_b[key], a, b)
    both_aggs = set(a.aggregates) & set(b.aggregates)
    names = [n for n in names_a if n in names_b]
    chosen = _select(names, metrics, lambda n: all_metrics or n in both_aggs)
    rows = []
    for name in chosen:
        set_name, field = names_a[name]
        pairs = [(items_a[k].get(field), items_b[k].get(field)) for k in shared if k[0] == set_name]
        pairs = [(x, y) for x, y in pairs if _is_number(x) and _is_number(y)]
        if not pairs:
            continue
        xs, ys = zip(*pairs, strict=True)
        stats = paired_test(xs, ys, n_boot=n_boot, alpha=alpha, seed=seed)
        direction = a.aggregates.get(name, {}).get("higher_is_better")
        rows.append({"metric": name, "set": set_name, "field": field, "higher_is_better": direction, **stats})
    for row, p in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = p
        row["verdict"] = verdict(row, alpha)
    covered = set(names_a) | set(names_b)
    aggregate_only = [_aggregate_only_row(k, a.aggregates[k], b.aggregates[k])
                      for k in sorted(both_aggs - covered, key=_headline_order)]
    return {"run_a": str(a.path), "run_b": str(b.path), "difference": "B - A", "alpha": alpha,
            "n_boot": n_boot, "seed": seed, "n_shared_items": len(shared),
            "test": "Wilcoxon signed-rank (two-sided, zeros dropped) and paired percentile bootstrap "
                    "of the mean difference; Holm-adjusted p over the metrics compared",
            "paired": rows, "aggregate_only": aggregate_only}


def _headline_order(key: str) -> tuple[int, str]:
    order = [k for k, _ in HEADLINE]
    return (order.index(key) if key in order else len(order), key)


# -- several seeds ---------------------------------------------------------------------------------------

def _seed_stats(key: str, values: Sequence[float | None]) -> dict[str, Any]:
    """Centre, sd and 95% interval over seeds on the metric's own scale: the bench leaderboard's numbers."""
    from obliviate.metrics.stats import seed_interval, seed_scale

    finite = [v for v in values if v is not None and math.isfinite(v)]
    res = seed_interval(finite, seed_scale(key, finite))
    res["n_runs"] = res.pop("n")
    return {**res, "values": [float(v) if v is not None else None for v in values]}


def _check_same_setting(runs: Sequence[EvaluatedRun]) -> None:
    """Seeds of one setting share method, world preset and split; averaging across settings means nothing."""
    configs = [read_json(r.path / "config.json") for r in runs if (r.path / "config.json").is_file()]
    if len(configs) != len(runs):
        return
    settings = {
        "method": {c.get("method") for c in configs},
        "preset": {(c.get("world") or {}).get("preset") for c in configs},
        "split": {(c.get("world") or {}).get("split") for c in configs},
    }
    for field, seen in settings.items():
        if len(seen) > 1:
            raise ObliviateError(f"the runs differ in {field} ({', '.join(sorted(map(str, seen)))}); "
                                 "aggregate seeds of one method, preset and split")


def aggregate_runs(runs: Sequence[str | Path]) -> dict[str, Any]:
    """Centre, sd and 95% interval over runs (typically world seeds) of every aggregate all of them report.

    Forget quality is reported with its KS statistic and n (forget items) per run, under
    "forget_quality/ks_statistic" and "forget_quality/n".
    """
    if not runs:
        raise ObliviateError("no runs to aggregate")
    evaluated = []
    for run in runs:
        path = Path(run)
        if not (path / "results.json").is_file():
            raise ObliviateError(f"{path}: no results.json; evaluate it first (obliviate eval {path})")
        evaluated.append(EvaluatedRun(path, read_json(path / "results.json"), []))
    _check_same_setting(evaluated)
    keys = set.intersection(*(set(r.aggregates) for r in evaluated))
    metrics: dict[str, dict[str, Any]] = {}
    for key in sorted(keys, key=_headline_order):
        aggs = [r.aggregates[key] for r in evaluated]
        metrics[key] = {**_seed_stats(key, [g.get("value") for g in aggs]),
                        "higher_is_better": aggs[0].get("higher_is_better")}
        if key == "forget_quality":
            ks = [g.get("ks_statistic") for g in aggs]
            metrics["forget_quality/ks_statistic"] = {**_seed_stats("ks_statistic", ks), "higher_is_better": False}
            metrics["forget_quality/n"] = {"values": [g.get("n") for g in aggs],
                                           "n_oracle": [g.get("n_oracle") for g in aggs]}
    missing = sorted(set.union(*(set(r.aggregates) for r in evaluated)) - keys)
    from obliviate.metrics.stats import SEED_CI_METHOD

    return {"runs": [str(r.path) for r in evaluated], "n_runs": len(evaluated), "sd": "sample sd (ddof=1)",
            "ci": SEED_CI_METHOD, "metrics": metrics, "not_in_every_run": missing}


def world_seed_spec(model: str, seed: int) -> str:
    """`world:PRESET[@S][:ARCH]` with its seed replaced by `seed`."""
    from obliviate.workflow import parse_world_spec

    ref = parse_world_spec(model)
    if ref is None:
        raise ObliviateError(f"--model {model}: seeds are worlds, so the model must be world:PRESET[:ARCH]")
    return f"world:{ref.preset}@{seed}" + ("" if ref.arch == "llama" else f":{ref.arch}")


def run_seeds(model: str, seeds: Sequence[int], out: Path, method: str | None = None, split: str = "forget10",
              overrides: Sequence[str] | None = None, generate: bool = True, progress: bool = True,
              log: Callable[[str], None] | None = None, max_retain: int | None = None) -> dict[str, Any]:
    """Unlearn (or, without `method`, only evaluate the target) on each world seed, then aggregate.

    Each seed's run goes to OUT/seed<S> and is evaluated against that world's exact-retrain oracle;
    the aggregate is written to OUT/seeds.json. The method's seed is the world seed unless
    `overrides` set it (`config.with_seed`, as in `obliviate bench`); `max_retain` evaluates on the
    same seeded subset of the retain set as `obliviate bench --max-retain`.
    """
    from obliviate.config import with_seed
    from obliviate.io import write_json
    from obliviate.workflow import (
        cached_world_eval,
        evaluate,
        parse_world_spec,
        world_eval_sets,
        world_models,
    )

    if method is not None:
        from obliviate.methods import get_method

        get_method(method)  # an unknown method fails before any world is built
    specs = [world_seed_spec(model, s) for s in seeds]
    dirs = [Path(out) / f"seed{s}" for s in seeds]
    for d in dirs:
        if d.exists() and any(d.iterdir()):
            raise ObliviateError(f"{d} already exists; choose another --out or remove it")
    for spec, run_dir in zip(specs, dirs, strict=True):
        ref = parse_world_spec(spec, split)
        if log:
            log(f"{spec} ({split}): {'unlearning with ' + method if method else 'evaluating the target'}")
        models = world_models(ref, which=("target", "oracle"), progress=progress)
        sets = world_eval_sets(ref, max_retain=max_retain)
        oracle_tr = cached_world_eval(ref, "oracle", models.oracle, sets)["_forget_truth_ratios"]
        if method is not None:
            from obliviate.runs import load_run_model
            from obliviate.workflow import run_unlearn

            run_unlearn(method, spec, run_dir, split=split, overrides=with_seed(overrides or [], ref.seed),
                        progress=progress)
            mdl, tok = load_run_model(run_dir)
        else:
            from obliviate.models.loading import load_model

            mdl, tok = load_model(models.target)
        config = {"target": str(run_dir) if method else spec, "oracle": "world", "world": ref.as_dict()}
        evaluate(mdl, tok, sets, run_dir, oracle_forget_tr=oracle_tr, generate=generate, config=config)
    summary = {"model": model, "method": method, "split": split, "seeds": list(seeds),
               "overrides": list(overrides or []), "max_retain": max_retain, **aggregate_runs(dirs)}
    write_json(Path(out) / "seeds.json", summary)
    return summary
