"""The leaderboard: one row per method × forget split (and the target and oracle anchors), each
metric's mean over seeds with a 95% confidence interval over seeds. A method's row is shown under
its labelled-variant name (`spul+gate`, `methods/base.py`) when its settings depart from the paper;
`method` keeps the name the bench ran it as.

Interval: Student's t over the per-seed values (each seed a new world, target, oracle and
unlearning run, so seeds are independent replicates), computed on a scale that keeps it within the
metric's range and mapped back (`obliviate.metrics.stats.seed_interval`): logit for metrics in [0, 1],
log10 for forget quality (a p-value: its centre is the geometric mean, its interval capped at 1),
log for times and memory, log(x + 100) for PrivLeak. `obliviate seeds` uses the same function, so
the two give the same numbers for the same runs. With one seed there is no interval (shown as —).
Within a seed, each cell's own results.json keeps the item-level bootstrap CIs; the leaderboard is
about the spread between seeds.

Forget quality depends on the forget-set size n (a KS p-value), so it is compared within a split,
never across splits.

Files (written atomically): leaderboard.json (every row with its per-seed values; null where there
is no value or interval), leaderboard.csv (mean, ci_low, ci_high per metric; empty where none) and
leaderboard.md (mean [ci_low, ci_high]).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.grid.spec import RESULT, BenchSpec, cell_state, load_spec
from obliviate.io import atomic_open, read_json, write_json
from obliviate.metrics.stats import SEED_CI_METHOD, SEED_CONFIDENCE, seed_interval

CONFIDENCE = SEED_CONFIDENCE
CI_METHOD = SEED_CI_METHOD


def _agg(key: str) -> Callable[[dict], float | None]:
    return lambda view: (view.get("aggregates") or {}).get(key, {}).get("value")


def _text(key: str) -> Callable[[dict], float | None]:
    return lambda view: (view.get("text") or {}).get(key, {}).get("value")


def _unlearn(key: str) -> Callable[[dict], float | None]:
    return lambda view: (view.get("unlearn") or {}).get(key)


def _robustness(view: dict) -> float | None:
    return (view.get("attacks") or {}).get("robustness")


@dataclass(frozen=True)
class Column:
    """One leaderboard metric: how to read it from a model's results, and how to average it."""

    key: str
    label: str
    higher_is_better: bool | None  # None: closer to a reference is better (AUC 0.5, PrivLeak 0)
    get: Callable[[dict], float | None]
    scale: str = "unit"  # the interval's scale (obliviate.metrics.stats.SEED_SCALES)

    @property
    def log(self) -> bool:
        """Shown on a log axis: a p-value spanning many orders of magnitude."""
        return self.scale == "pvalue"

    @property
    def arrow(self) -> str:
        return {True: " ↑", False: " ↓"}.get(self.higher_is_better, "")


COLUMNS = [
    Column("forget_quality", "forget quality", True, _agg("forget_quality"), "pvalue"),
    Column("model_utility", "model utility", True, _agg("model_utility")),
    Column("forget_rouge", "forget ROUGE-L", False, _agg("forget/rouge")),
    Column("retain_rouge", "retain ROUGE-L", True, _agg("retain/rouge")),
    Column("forget_probability", "forget probability", False, _agg("forget/probability")),
    Column("mia_auc", "MIA AUC (Min-K%)", None, _agg("mia/min_k_auc")),
    Column("privleak", "PrivLeak", None, _text("privleak"), "privleak"),
    # benchmarks with their own suite (`bench --data`): MUSE's text suite, WMDP's multiple choice
    Column("verbmem_forget", "VerbMem forget", False, _agg("verbmem_forget/rouge")),
    Column("knowmem_forget", "KnowMem forget", False, _agg("knowmem_forget/rouge")),
    Column("knowmem_retain", "KnowMem retain", True, _agg("knowmem_retain/rouge")),
    Column("wmdp_bio", "WMDP-Bio accuracy", False, _agg("wmdp_bio/acc")),
    Column("wmdp_cyber", "WMDP-Cyber accuracy", False, _agg("wmdp_cyber/acc")),
    Column("robustness", "robustness", True, _robustness),
    Column("unlearn_seconds", "unlearn time (s)", False, _unlearn("seconds"), "positive"),
    Column("peak_memory_mb", "peak memory (MB)", False, _unlearn("peak_memory_mb"), "positive"),
]
COLUMN = {c.key: c for c in COLUMNS}


# -- statistics -----------------------------------------------------------------------------------------------

def t_interval(values, confidence: float = CONFIDENCE) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "sd", "n"} of the finite values: mean ± t_{(1+c)/2, n−1}·s/√n, for a
    metric with no bounds (the "real" scale of `seed_interval`)."""
    res = seed_interval(values, "real", confidence)
    return {k: res[k] for k in ("mean", "ci_low", "ci_high", "sd", "n")}


def summarize_column(column: Column, values: list[float | None]) -> dict[str, Any]:
    stats = seed_interval(values, column.scale)
    return {**stats, "values": [None if v is None else float(v) for v in values]}


# -- reading the cells -------------------------------------------------------------------------------------------

def _views(spec: BenchSpec, root: Path) -> dict[tuple[str, str], dict[int | None, dict]]:
    """(split, model) -> {seed: the model's results} over the complete cells of the grid."""
    views: dict[tuple[str, str], dict[int | None, dict]] = {}
    for cell in spec.cells():
        if cell_state(spec, cell, root) != "complete":
            continue
        result = read_json(cell.path(root) / RESULT)
        if cell.is_anchor:
            for role in ("target", "oracle"):
                if result.get(role):
                    views.setdefault((cell.split, role), {})[cell.seed] = result[role]
        else:
            views.setdefault((cell.split, cell.method), {})[cell.seed] = result
    return views


def display_name(spec: BenchSpec, method: str) -> str:
    """The name a method's rows are shown under: its labelled variant under the bench's `--set` pairs
    (`spul` with `gate=classifier` is `spul+gate`), followed in parentheses by any other pair that this
    method was given and some other method of the bench was not (`eco (alpha=0.2)`), so that a row run
    away from its defaults never passes for them. A pair every method was given (a bench-wide
    `--set max_steps=2`) is a setting of the whole bench, recorded in bench.json, and not repeated."""
    from obliviate.methods import METHODS, label_for_overrides

    pairs = spec.overrides.get(method, [])
    cls = METHODS.get(method)
    labelled = {key for values in getattr(cls, "variants", {}).values() for key in values}
    everyone = set.intersection(*(set(spec.overrides.get(m, [])) for m in spec.methods)) if spec.methods else set()
    others = [pair.replace(" ", "") for pair in pairs
              if pair.split("=", 1)[0].strip() not in labelled and pair not in everyone]
    return label_for_overrides(method, pairs) + (f" ({', '.join(others)})" if others else "")


def _missing(spec: BenchSpec, root: Path) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for cell in spec.cells():
        if cell_state(spec, cell, root) != "complete":
            names = ("target", "oracle") if cell.is_anchor else (cell.method,)
            for name in names:
                out.setdefault((cell.split, name), []).append(cell.label)
    return out


def build_leaderboard(root: Path) -> dict[str, Any]:
    """The leaderboard of a bench directory, from its complete cells."""
    root = Path(root)
    spec = load_spec(root)
    views, missing = _views(spec, root), _missing(spec, root)
    rows = []
    for split in spec.splits:
        for name in ("target", "oracle", *spec.methods):
            per_seed = views.get((split, name), {})
            if not per_seed and name in ("target", "oracle"):
                if (split, name) not in missing:
                    continue  # no oracle given on user data
            seeds = sorted(per_seed, key=lambda s: -1 if s is None else s)
            anchor = name in ("target", "oracle")
            row = {"split": split, "model": name if anchor else display_name(spec, name),
                   "kind": "anchor" if anchor else "method",
                   "seeds": seeds, "n_seeds": len(seeds), "incomplete": missing.get((split, name), []),
                   "metrics": {}}
            if not anchor:
                row["method"] = name
            for column in COLUMNS:
                values = [column.get(per_seed[s]) for s in seeds]
                if any(v is not None for v in values):
                    row["metrics"][column.key] = summarize_column(column, values)
            row["attacks"] = _attack_summary([per_seed[s] for s in seeds])
            rows.append(row)
    present = [c.key for c in COLUMNS if any(c.key in r["metrics"] for r in rows)]
    return {"ci": CI_METHOD, "spec": spec.to_dict(), "columns": present,
            "labels": {k: COLUMN[k].label + COLUMN[k].arrow for k in present}, "rows": rows}


def _attack_summary(views: list[dict]) -> dict[str, dict[str, Any]]:
    """Each attack's oracle-relative recovery over seeds (mean and t-interval), where attacks ran."""
    per_attack: dict[str, list[float]] = {}
    for view in views:
        for name, value in ((view.get("attacks") or {}).get("recovery") or {}).items():
            per_attack.setdefault(name, []).append(value)
    return {name: t_interval(values) for name, values in per_attack.items()}


# -- writing ---------------------------------------------------------------------------------------------------

def fmt(value: float | None, log: bool = False) -> str:
    """Three decimals below 10, one below 100, none above; scientific notation below 0.01 (p-values)."""
    if value is None or not np.isfinite(value):
        return "—"
    if value != 0 and abs(value) < 1e-2:
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def cell_text(stats: dict[str, Any] | None, log: bool = False) -> str:
    """"mean [ci_low, ci_high]", or the mean alone when there is no interval."""
    if not stats:
        return "—"
    text = fmt(stats["mean"], log)
    if np.isfinite(stats.get("ci_low", math.nan)):
        text += f" [{fmt(stats['ci_low'], log)}, {fmt(stats['ci_high'], log)}]"
    return text


def to_csv(board: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    stats = ("mean", "ci_low", "ci_high")
    writer.writerow(["split", "model", "kind", "n_seeds", "incomplete",
                     *[f"{k}_{s}" for k in board["columns"] for s in stats]])
    for row in board["rows"]:
        values = []
        for key in board["columns"]:
            m = row["metrics"].get(key)
            values += [repr(float(m[s])) if m and np.isfinite(m[s]) else "" for s in stats]
        writer.writerow([row["split"], row["model"], row["kind"], row["n_seeds"], len(row["incomplete"]), *values])
    return buffer.getvalue()


def to_markdown(board: dict[str, Any], command: str | None = None) -> str:
    spec = board["spec"]
    keys = board["columns"]
    head = "| split | model | seeds | " + " | ".join(board["labels"][k] for k in keys) + " |\n"
    head += "|---|---|---|" + "---|" * len(keys) + "\n"
    body = ""
    for row in board["rows"]:
        name = f"*{row['model']}*" if row["kind"] == "anchor" else row["model"]
        if row["incomplete"]:
            name += f" ({len(row['incomplete'])} incomplete)"
        cells = [cell_text(row["metrics"].get(k), COLUMN[k].log) for k in keys]
        body += f"| {row['split']} | {name} | {row['n_seeds']} | " + " | ".join(cells) + " |\n"
    where = f"world `{spec['world']}`" if spec.get("world") else f"model `{spec.get('model')}`"
    lines = [f"Leaderboard: {where}, seeds {', '.join(map(str, spec['seeds']))}.", "",
             f"Each value: {board['ci']}. Forget quality is comparable within a split only (it depends on "
             "the forget-set size). *target* and *oracle* are the model before unlearning and the "
             "model retrained without the forget set.", ""]
    if command:
        lines += [f"`{command}`", ""]
    return "\n".join(lines) + "\n" + head + body


def _finite_or_null(obj: Any) -> Any:
    """NaN and infinities become null, so leaderboard.json is standard JSON (JavaScript reads it too)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def write_leaderboard(board: dict[str, Any], root: Path) -> dict[str, Path]:
    root = Path(root)
    bench = read_json(root / "bench.json") if (root / "bench.json").is_file() else {}
    command = " ".join(bench.get("command", [])) or None
    paths = {"json": root / "leaderboard.json", "csv": root / "leaderboard.csv", "md": root / "leaderboard.md"}
    write_json(paths["json"], _finite_or_null(board))
    with atomic_open(paths["csv"]) as handle:
        handle.write(to_csv(board))
    with atomic_open(paths["md"]) as handle:
        handle.write(to_markdown(board, command))
    return paths
