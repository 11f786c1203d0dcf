"""The report's plots, drawn with matplotlib (Agg) and returned as inline SVG text.

Every function takes plain rows (the leaderboard's, or a run's aggregates shaped the same way:
{"model", "kind", "metrics": {key: {"mean", "ci_low", "ci_high"}}}) and returns an `<svg>` element
ready to paste into HTML: no XML prolog, no metadata, and every id prefixed, so several plots can
share one page without their clip paths and markers colliding.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

TARGET_COLOR, ORACLE_COLOR = "black", "#d4a017"
ANCHOR_STYLE = {"target": dict(marker="X", color=TARGET_COLOR, s=110),
                "oracle": dict(marker="*", color=ORACLE_COLOR, s=220)}
# Methods take colours that are neither the target's black nor the oracle's gold.
METHOD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#17becf", "#e377c2", "#8c564b", "#7f7f7f",
                 "#bcbd22", "#ff7f0e", "#393b79", "#637939"]
# The range of each scale (obliviate.metrics.stats.SEED_SCALES): axes never run past it.
SCALE_RANGE = {"unit": (0.0, 1.0), "pvalue": (0.0, 1.0), "positive": (0.0, math.inf), "privleak": (-100.0, math.inf),
               "real": (-math.inf, math.inf)}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "obliviate", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def to_svg(fig, prefix: str) -> str:
    """The figure as an inline `<svg>` element with ids prefixed by `prefix`; closes the figure."""
    plt = _plt()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    return svg


def _value(row: dict, key: str) -> tuple[float, float, float]:
    m = row["metrics"].get(key) or {}
    return (float(m.get("mean", math.nan)), float(m.get("ci_low", math.nan)), float(m.get("ci_high", math.nan)))


def _err(mean: float, low: float, high: float) -> list[list[float]] | None:
    """Asymmetric error-bar lengths, or None where there is no interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]


def _errs(stats: Sequence[tuple[float, float, float]]) -> np.ndarray | None:
    """(2, n) error-bar lengths for bars; NaN (no bar drawn) where there is no interval."""
    errs = np.array([_err(*s) or [[math.nan], [math.nan]] for s in stats], dtype=float)[:, :, 0].T
    return None if np.isnan(errs).all() else errs


# -- bench plots ----------------------------------------------------------------------------------------------

def _oracle_band(ax, stats: tuple[float, float, float], axis: str, label: str | None = "oracle (95% interval)"):
    """The oracle as a reference: a gold line at its mean and a band over its interval over seeds."""
    mean, low, high = stats
    if not np.isfinite(mean):
        return
    line, span = (ax.axhline, ax.axhspan) if axis == "y" else (ax.axvline, ax.axvspan)
    line(mean, color=ORACLE_COLOR, lw=1.2, zorder=1, label=label)
    if np.isfinite(low) and np.isfinite(high) and high > low:
        span(low, high, color=ORACLE_COLOR, alpha=0.18, lw=0, zorder=0)


def _unit_limits(ax, rows: Sequence[dict], key: str, axis: str, log: bool = False, scale: str = "unit") -> None:
    """Axis limits around the values and intervals, never past the metric's range (p ≤ 1, utility ≤ 1)."""
    lo_range, hi_range = SCALE_RANGE[scale]
    values = [v for r in rows for v in _value(r, key) if np.isfinite(v)]
    if not values:
        return
    lo, hi = min(values), max(values)
    if log:
        positive = [v for v in values if v > 0]
        lo = min(positive) / 3 if positive else 1e-3
        hi = min(hi_range, hi * 3) if np.isfinite(hi_range) else hi * 3
    else:
        pad = max(0.03 * (hi - lo), 0.01)
        lo, hi = max(lo_range, lo - pad), min(hi_range, hi + pad)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo, hi)


def _place_labels(ax, labels: list) -> None:
    """Move point labels apart so none overlaps another or a point (adjustText, when installed)."""
    if len(labels) < 2:
        return
    try:
        from adjustText import adjust_text
    except ImportError:
        return
    adjust_text(labels, ax=ax, arrowprops=dict(arrowstyle="-", color="#999", lw=0.5))


MARKERS = "osD^vP<>hX*p"
LABEL_LIMIT = 8  # name the points on the plot itself up to this many methods; beyond, the legend does


def tradeoff(rows_by_split: dict[str, list[dict]], prefix: str = "tradeoff") -> str | None:
    """Forget quality (log x) against model utility, one panel per split, CI whiskers on both axes.

    A method keeps its colour and marker in every panel; the legend lists every model once.
    """
    panels = {s: rows for s, rows in rows_by_split.items()
              if any(np.isfinite(_value(r, "forget_quality")[0]) for r in rows)}
    if not panels:
        return None
    plt = _plt()
    methods = list(dict.fromkeys(r["model"] for rows in panels.values() for r in rows if r["kind"] == "method"))
    colors = [METHOD_COLORS[k % len(METHOD_COLORS)] for k in range(len(methods))]
    crowded = len(methods) > LABEL_LIMIT
    width, height = (6.4, 5.0) if crowded else (5.2, 4.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (split, rows) in zip(axes[0], panels.items(), strict=True):
        labels = []
        oracle = next((r for r in rows if r["model"] == "oracle"), None)
        if oracle is not None:
            _oracle_band(ax, _value(oracle, "model_utility"), "y")
        for row in rows:
            fq, mu = _value(row, "forget_quality"), _value(row, "model_utility")
            if not (np.isfinite(fq[0]) and np.isfinite(mu[0])):
                continue
            if row["kind"] == "anchor":
                style = ANCHOR_STYLE.get(row["model"], dict(marker="D", color="grey", s=80))
                handles[row["model"]] = ax.scatter([fq[0]], [mu[0]], zorder=4, edgecolors="white", clip_on=False,
                                                   **style)
                ax.errorbar([fq[0]], [mu[0]], xerr=_err(*fq), yerr=_err(*mu), fmt="none", color=style["color"],
                            capsize=2, lw=0.8, zorder=3)
                continue
            k = methods.index(row["model"])
            handles[row["model"]] = ax.errorbar([fq[0]], [mu[0]], xerr=_err(*fq), yerr=_err(*mu),
                                                fmt=MARKERS[k % len(MARKERS)], color=colors[k], capsize=3, ms=6,
                                                zorder=5)
            if not crowded:
                labels.append(ax.text(fq[0], mu[0], row["model"], fontsize=8, color=colors[k]))
        ax.set_xscale("log")
        _unit_limits(ax, rows, "model_utility", "y")
        _unit_limits(ax, rows, "forget_quality", "x", log=True)
        _place_labels(ax, labels)
        ax.set_xlabel("forget quality (KS p-value, log scale) →")
        ax.set_ylabel("model utility →")
        ax.set_title(split)
        ax.grid(alpha=0.3, which="both")
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 8), fontsize=8,
               bbox_to_anchor=(0.5, 1.02 + 0.025 * math.ceil(len(handles) / 8)), frameon=False)
    return to_svg(fig, prefix)


def metric_dots(rows_by_split: dict[str, list[dict]], key: str, label: str, log: bool = False,
                prefix: str | None = None, scale: str = "unit", higher_is_better: bool | None = None) -> str | None:
    """One metric as a dot plot: a row per method (ranked, best first) with its interval over seeds,
    against the oracle's band (gold) and the target (black dashed line); one panel per split."""
    panels = {s: rows for s, rows in rows_by_split.items() if any(np.isfinite(_value(r, key)[0]) for r in rows)}
    if not panels:
        return None
    plt = _plt()
    n_methods = max(sum(r["kind"] == "method" for r in rows) for rows in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.2, 0.28 * max(n_methods, 2) + 1.3),
                             squeeze=False)
    for ax, (split, rows) in zip(axes[0], panels.items(), strict=True):
        _dot_panel(ax, rows, key, log, scale, higher_is_better)
        ax.set_title(split if len(panels) > 1 else f"{label} — {split}")
        ax.set_xlabel(label + (" (log scale)" if log else ""))
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return to_svg(fig, prefix or f"dots-{key}")


def _ranked(rows: Sequence[dict], key: str, higher_is_better: bool | None) -> list[dict]:
    methods = [r for r in rows if r["kind"] == "method" and np.isfinite(_value(r, key)[0])]
    sign = -1 if higher_is_better is False else 1
    return sorted(methods, key=lambda r: -sign * _value(r, key)[0])


def _dot_panel(ax, rows: Sequence[dict], key: str, log: bool, scale: str, higher_is_better: bool | None,
               order: Sequence[str] | None = None, names: bool = True) -> None:
    by_name = {r["model"]: r for r in rows}
    methods = [by_name[m] for m in order if m in by_name] if order else _ranked(rows, key, higher_is_better)
    y = np.arange(len(methods))[::-1]
    oracle, target = by_name.get("oracle"), by_name.get("target")
    if oracle is not None:
        _oracle_band(ax, _value(oracle, key), "x")
    if target is not None and np.isfinite(_value(target, key)[0]):
        ax.axvline(_value(target, key)[0], color=TARGET_COLOR, ls="--", lw=1, zorder=1, label="target")
    for yi, row in zip(y, methods, strict=True):
        mean, low, high = _value(row, key)
        if not np.isfinite(mean):
            continue
        ax.errorbar([mean], [yi], xerr=_err(mean, low, high), fmt="o", color=METHOD_COLORS[0], ms=5, capsize=2,
                    lw=1, zorder=3)
    ax.set_yticks(y, [r["model"] for r in methods] if names else [""] * len(methods))
    ax.set_ylim(-0.7, len(methods) - 0.3)
    if log:
        ax.set_xscale("log")
    _unit_limits(ax, [*methods, *(r for r in (oracle, target) if r is not None)], key, "x", log=log, scale=scale)
    ax.grid(axis="x", alpha=0.3, which="both")


def ranked(rows_by_split: dict[str, list[dict]], prefix: str = "ranked",
           metrics: Sequence[tuple[str, str, bool]] = (("forget_quality", "forget quality (KS p, log)", True),
                                                      ("model_utility", "model utility", False))) -> str | None:
    """The hero figure: for each split, a dot plot per metric, methods ranked by forget quality (closest to
    the oracle first) in the same order in every panel, against the oracle's band and the target's line."""
    panels = {s: rows for s, rows in rows_by_split.items()
              if any(np.isfinite(_value(r, metrics[0][0])[0]) for r in rows if r["kind"] == "method")}
    if not panels:
        return None
    plt = _plt()
    last = list(panels.values())[-1]
    order = [r["model"] for r in _ranked(last, metrics[0][0], True)]
    order += [m for rows in panels.values() for m in (r["model"] for r in _ranked(rows, metrics[0][0], True))
              if m not in order]
    order = list(dict.fromkeys(order))
    ncols = len(panels) * len(metrics)
    fig, axes = plt.subplots(1, ncols, figsize=(2.5 * ncols + 1.2, 0.24 * max(len(order), 2) + 1.5), squeeze=False)
    for i, (split, rows) in enumerate(panels.items()):
        for j, (key, label, log) in enumerate(metrics):
            ax = axes[0][i * len(metrics) + j]
            _dot_panel(ax, rows, key, log, "pvalue" if log else "unit", True, order=order, names=i == j == 0)
            ax.set_title(f"{split}\n{label}", fontsize=9)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return to_svg(fig, prefix)


def attack_heatmap(rows_by_split: dict[str, list[dict]], prefix: str = "attacks") -> str | None:
    """Methods × attacks, colour = mean oracle-relative recovery over seeds; one panel per split."""
    panels = {}
    for split, rows in rows_by_split.items():
        rows = [r for r in rows if r.get("attacks")]
        attacks = sorted({a for r in rows for a in r["attacks"]})
        if rows and attacks:
            panels[split] = (rows, attacks)
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(max(4.0, 0.9 * max(len(a) for _, a in panels.values()) + 2) * len(panels),
                                      0.45 * max(len(r) for r, _ in panels.values()) + 1.6))
    image = None
    for ax, (split, (rows, attacks)) in zip(axes[0], panels.items(), strict=True):
        grid = np.array([[r["attacks"].get(a, {}).get("mean", math.nan) for a in attacks] for r in rows])
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn_r", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "—" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), [r["model"] for r in rows])
        ax.set_title(split)
    fig.colorbar(image, ax=axes[0].tolist(), label="recovery (0 = as the oracle, 1 = fully recovered)")
    return to_svg(fig, prefix)


def curves(panels: Sequence[dict[str, Any]], prefix: str, title: str | None = None) -> str | None:
    """Line plots: each panel {"title", "xlabel", "ylabel", "log", "series": [{"label", "x", "y", "lo", "hi"}]}."""
    panels = [p for p in panels if p["series"]]
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.3 * cols, 3.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for i, s in enumerate(panel["series"]):
            style = s.get("style", "o-")
            ax.plot(s["x"], s["y"], style, label=s["label"], color=s.get("color", f"C{i}"), ms=4)
            if s.get("lo") is not None and np.isfinite(np.asarray(s["lo"], dtype=float)).any():
                ax.fill_between(s["x"], s["lo"], s["hi"], color=s.get("color", f"C{i}"), alpha=0.15)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("log"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return to_svg(fig, prefix)


# -- single-run plots -----------------------------------------------------------------------------------------

def grouped_metrics(columns: dict[str, dict[str, Any]], keys: Sequence[tuple[str, str]], prefix: str = "metrics"
                    ) -> str | None:
    """Headline metrics of one run beside the target's and the oracle's: bars with their item-level CIs."""
    keys = [(k, label) for k, label in keys if any(k in agg for agg in columns.values())]
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(keys) + 1.5), 3.4))
    width = 0.8 / len(columns)
    x = np.arange(len(keys))
    colors = {"target": "black", "oracle": "#d4a017"}
    for j, (name, aggs) in enumerate(columns.items()):
        stats = []
        for key, _ in keys:
            a = aggs.get(key) or {}
            stats.append((a.get("value", math.nan), a.get("ci_low", math.nan), a.get("ci_high", math.nan)))
        means = np.array([s[0] for s in stats], dtype=float)
        ax.bar(x + (j - (len(columns) - 1) / 2) * width, np.nan_to_num(means), width, yerr=_errs(stats), capsize=2,
               label=name, color=colors.get(name, f"C{j}"), alpha=0.85, error_kw=dict(lw=0.8))
    ax.set_xticks(x, [label for _, label in keys], rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(columns))
    ax.grid(axis="y", alpha=0.3)
    return to_svg(fig, prefix)
