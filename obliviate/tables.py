"""Rich tables of results, shared by the CLI and the Python API (`EvalResult.table()`).

`fmt` is the one number format of every table: three decimals, or three significant digits below 0.01.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table


def fmt(value: Any) -> str:
    """A table cell: '—' for missing or NaN, 3 decimals (3 significant digits below 0.01) for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    return str(value)


def arrow(higher_is_better: bool | None) -> str:
    """' ↑' when higher is better, ' ↓' when lower is, '' otherwise."""
    return {True: " ↑", False: " ↓"}.get(higher_is_better, "")


def _value_ci(agg: dict[str, Any]) -> str:
    low = agg.get("ci_low")
    if low is not None and not (isinstance(low, float) and math.isnan(low)):
        return f"{fmt(agg['value'])} [{fmt(low)}, {fmt(agg['ci_high'])}]"
    return fmt(agg["value"])


def side_by_side(columns: dict[str, dict[str, Any]], title: str) -> Table:
    """The qa suite: a row per headline metric, a column per model (value [CI])."""
    from obliviate.metrics.registry import HEADLINE_AGGREGATES  # (imported here: the metrics load scipy)

    table = Table("metric", *columns, title=title)
    # the headline aggregates but the KS statistic
    keys = [(k, label) for k, label in HEADLINE_AGGREGATES
            if k != "forget_quality/ks_statistic" and any(k in c for c in columns.values())]
    for key, label in keys:
        first = next(c[key] for c in columns.values() if key in c)
        cells = ["—" if (a := agg.get(key)) is None else _value_ci(a) for agg in columns.values()]
        table.add_row(label + arrow(first.get("higher_is_better")), *cells)
    table.caption = ("value [95% CI]: the percentile bootstrap over the items (a resampled mean stays in the "
                     "metric's range); forget quality is a KS p-value, with no interval")
    return table


TEXT_ROWS = [
    ("verbmem_forget/rouge", "VerbMem: forget ROUGE-L F1"),
    ("knowmem_forget/rouge", "KnowMem: forget ROUGE-L F1"),
    ("knowmem_retain/rouge", "KnowMem: retain ROUGE-L F1 (utility)"),
    ("mia/muse_auc", "MUSE AUC, Min-40% (forget 0 / holdout 1)"),
    ("mia/muse_retain_auc", "MUSE AUC, Min-40% (retain 0 / holdout 1)"),
    ("privleak", "PrivLeak % vs the oracle (best near 0)"),
]


def text_table(aggregates: dict[str, dict[str, Any]], title: str) -> Table:
    """The text suite (MUSE-style): a row per metric with its CI and n."""
    table = Table("metric", "value [95% CI]", "n", title=title)
    for key, label in TEXT_ROWS:
        a = aggregates.get(key)
        if a is None:
            continue
        ci = f" [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]" if "ci_low" in a else ""
        table.add_row(label + arrow(a.get("higher_is_better")), fmt(a["value"]) + ci, fmt(a.get("n")))
    return table


LABELS_ROWS = [
    ("forget_train/accuracy", "forget-train accuracy"),
    ("forget_train/top_token_accuracy", "forget-train accuracy, top token"),
    ("retain_train/accuracy", "retain-train accuracy"),
    ("forget_test/accuracy", "forget-test accuracy"),
    ("retain_test/accuracy", "retain-test accuracy"),
    ("test/accuracy", "test accuracy"),
    ("forget_train/f1_weighted", "forget-train weighted F1"),
    ("test/f1_weighted", "test weighted F1"),
    ("mia/loss_auc", "MIA AUC, loss (forget-train vs test)"),
]


def labels_table(columns: dict[str, dict[str, Any]], title: str) -> Table:
    """The labels suite: a row per metric, a column per model."""
    table = Table("metric", *columns, title=title)
    for key, label in LABELS_ROWS:
        if not any(key in agg for agg in columns.values()):
            continue
        first = next(agg[key] for agg in columns.values() if key in agg)
        cells = [f"{fmt(a['value'])} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]" if (a := agg.get(key)) else "—"
                 for agg in columns.values()]
        table.add_row(label + arrow(first.get("higher_is_better")), *cells)
    return table


# -- attacks ---------------------------------------------------------------------------------------

ROLE_ORDER = ("target", "oracle", "unlearned")


def _bracket(ci: list[float] | None) -> str:
    return "" if not ci else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _levels(pooled: dict | None) -> list[str]:
    """Target, oracle and unlearned levels; without an oracle its column shows chance (an attack's baseline)."""
    levels = (pooled or {}).get("levels", {})
    if "oracle" not in levels and "chance" in levels:
        return [fmt(levels.get("target")), f"{fmt(levels['chance'])} (chance)", fmt(levels.get("unlearned"))]
    return [fmt(levels.get(role)) for role in ROLE_ORDER]


def _said(pooled: dict | None) -> str:
    levels = dict((pooled or {}).get("levels", {}))
    if "oracle" not in levels and "chance" in levels:  # no oracle: chance stands in its place
        levels["oracle"] = levels["chance"]
    return "/".join(f"{levels[r]:.2f}" for r in ROLE_ORDER if r in levels) or "—"


def _variant_rows(table: Table, report: dict) -> None:
    for name, entry in report["variants"].items():
        knows = entry.get("knows")
        rec = (knows or {}).get("recovery")
        if entry.get("reference"):
            status = "reference"
        elif entry.get("informative") or "note" not in entry:
            status = f"{fmt(rec)}{_bracket((knows or {}).get('recovery_ci'))}" if rec is not None else "—"
        else:
            status = "uninformative"
        gap = (knows or {}).get("gap_ci") or [0.0, 0.0]
        baseline = report.get("baseline", "oracle")
        note = "" if status != "uninformative" else f"target - {baseline} CI {gap[0]:.2f} to {gap[1]:.2f}: cannot tell"
        table.add_row("", f"  {name}", *_levels(knows), status, _said(entry.get("answers")), note)


def attack_table(reports: dict[str, dict], title: str) -> Table:
    """One row per attack (its pooled headline), then one per form."""
    table = Table("attack", "form", "target", "oracle", "unlearned", "recovery [95% CI]", "answers t/o/u", "note",
                  title=title)
    for name, rep in reports.items():
        if rep.get("status") != "ok":
            table.add_row(name, rep["status"], "", "", "", "—", "", rep.get("reason", ""))
            continue
        rec = rep.get("recovery")
        head = f"{fmt(rec)}{_bracket(rep.get('recovery_ci'))}" if rec is not None else "—"
        note = rep.get("note") or ""
        if rep.get("R"):
            note = f"R = {fmt(rep['R']['value'])} {rep['R']['note']}".strip()
        if rep.get("prior") is not None:
            note = f"prior {fmt(rep['prior'])}; layer " + ", ".join(f"{r} {k}" for r, k in rep["layers"].items())
        table.add_row(f"[bold]{name}[/]", "informative forms", *_levels(rep.get("knows")), head,
                      _said(rep.get("answers")), note)
        if len(rep["variants"]) > 1:
            _variant_rows(table, rep)
    return table


