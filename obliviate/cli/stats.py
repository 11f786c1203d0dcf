"""CLI commands for honest statistics and protocols: `compare`, `seeds`, `protocol`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from obliviate.cli.app import JsonOpt, app, console, print_json
from obliviate.tables import fmt

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a method config key: key=value")]
PANEL = "Statistics and protocols"  # their own panel in `obliviate --help`, after the main commands
NoGenerate = Annotated[bool, typer.Option("--no-generate", help="skip generation (no ROUGE); much faster")]


def _ci(low: Any, high: Any) -> str:
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + fmt(value)


# -- compare ---------------------------------------------------------------------------------------------

def compare_table(result: dict[str, Any]) -> Table:
    alpha = result["alpha"]
    table = Table("n", "mean A", "mean B", "B − A [95% CI]", "p (Wilcoxon)", "p (Holm)", "verdict",
                  title=f"A = {result['run_a']}   B = {result['run_b']}   "
                        f"(paired on {result['n_shared_items']} items)")
    table.add_column("metric", no_wrap=True)
    table.columns.insert(0, table.columns.pop())  # the metric name first, never wrapped
    table.columns[4].no_wrap = True  # B − A [CI]
    for row in result["paired"]:
        style = "green" if row["verdict"].startswith("B ") and "Holm" not in row["verdict"] else "dim"
        arrow = {True: " ↑", False: " ↓"}.get(row["higher_is_better"], "")
        table.add_row(row["metric"] + arrow, str(row["n"]), fmt(row["mean_a"]), fmt(row["mean_b"]),
                      _signed(row["diff"]) + _ci(row["ci_low"], row["ci_high"]), fmt(row["p_value"]),
                      fmt(row["p_holm"]), f"[{style}]{row['verdict']}[/]")
    for row in result["aggregate_only"]:
        cells = [fmt(row["value_" + side]) + _ci(row.get(f"ci_low_{side}"), row.get(f"ci_high_{side}"))
                 for side in ("a", "b")]
        note = row["note"]
        if "ks_statistic_a" in row:
            note += (f"; D {fmt(row['ks_statistic_a'])} vs {fmt(row['ks_statistic_b'])}, "
                     f"n {row.get('n_a')} vs {row.get('n_b')}")
        diff = row["value_b"] - row["value_a"] if None not in (row["value_a"], row["value_b"]) else None
        table.add_row(row["metric"], "—", *cells, "—" if diff is None else _signed(diff), "—", "—",
                      f"[dim]{note}[/]")
    table.caption = (f"significant: p < {alpha} and the CI excludes 0. Wilcoxon signed-rank (zeros dropped), "
                     "paired bootstrap CI; p (Holm) corrects for the number of metrics.")
    return table


@app.command(rich_help_panel=PANEL)
def compare(
    run_a: Annotated[Path, typer.Argument(help="evaluated run or eval dir (results.json + items.jsonl)")],
    run_b: Annotated[Path, typer.Argument(help="the other run, evaluated on the same items")],
    metric: Annotated[list[str] | None,
                      typer.Option(help="metric name or pattern, e.g. 'forget/*' (repeatable)")] = None,
    all_metrics: Annotated[bool, typer.Option("--all", help="every per-item field, not only those "
                                              "behind an aggregate")] = False,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 10_000,
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.05,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    out: Annotated[Path | None, typer.Option(help="also write the comparison to this JSON file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Paired tests of run B against run A on their shared items: is the difference real?"""
    from obliviate.api import compare as compare_runs
    from obliviate.io import write_json

    result = compare_runs(run_a, run_b, metrics=metric, all_metrics=all_metrics, n_boot=n_boot, alpha=alpha,
                          seed=seed)
    if out is not None:
        write_json(out, result)
    if as_json:
        return print_json(result)
    console.print(compare_table(result))
    if out is not None:
        console.print(f"results: {out}")


# -- seeds -----------------------------------------------------------------------------------------------

def seeds_table(summary: dict[str, Any]) -> Table:
    from obliviate.comparison import HEADLINE

    labels = dict(HEADLINE)
    metrics = summary["metrics"]
    title = f"{summary['n_runs']} runs: " + ", ".join(summary["runs"])
    table = Table("metric", "mean [95% CI]", "sd", "per run", title=title)
    for key, label in labels.items():
        m = metrics.get(key)
        if m is None:
            continue
        arrow = {True: " ↑", False: " ↓"}.get(m.get("higher_is_better"), "")
        sd = "—" if m["sd"] is None or math.isnan(m["sd"]) else fmt(m["sd"])
        table.add_row(label + arrow, fmt(m["mean"]) + _ci(m.get("ci_low"), m.get("ci_high")), sd,
                      ", ".join(fmt(v) for v in m["values"]))
    caption = summary.get("ci", "")
    if "forget_quality/n" in metrics:
        n = metrics["forget_quality/n"]
        caption += (f"\nforget quality n (forget items) per run: {n['values']}, "
                    f"oracle n: {n['n_oracle']}; p-values compare only at equal n (docs/statistics.md)")
    table.caption = caption.strip()
    return table


@app.command(rich_help_panel=PANEL)
def seeds(
    runs: Annotated[list[Path] | None,
                    typer.Argument(help="evaluated runs to aggregate (instead of running)")] = None,
    model: Annotated[str | None,
                     typer.Option(help="world:PRESET[@FIRST_SEED][:ARCH]: run N world seeds")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="unlearning method; without it, "
                                               "evaluate the world's target on each seed")] = None,
    n: Annotated[int, typer.Option("--n", help="number of world seeds")] = 3,
    split: Annotated[str, typer.Option(help="forget split")] = "forget10",
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="directory for the runs and seeds.json")] = None,
    no_generate: NoGenerate = False,
    max_retain: Annotated[int | None, typer.Option(help="evaluate on a seeded subset of this many retain items "
                                                   "(as bench --max-retain)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mean and 95% interval over world seeds: run N seeds (--model world:PRESET), or aggregate evaluated RUNS."""
    from obliviate.api import seeds as run_seeds

    summary = run_seeds(model, runs=runs, method=method, n=n, split=split, overrides=set_ or [], out=out,
                        generate=not no_generate, progress=not as_json, log=None if as_json else console.print,
                        max_retain=max_retain)
    if as_json:
        return print_json(summary)
    console.print(seeds_table(summary))
    if out is not None:
        console.print(f"results: {out / 'seeds.json'}")


# -- protocols -------------------------------------------------------------------------------------------

def protocol_table(result: dict[str, Any]) -> Table:
    table = Table("step", "split", "forget items", "forget quality (D, n)", "model utility", "forget prob",
                  "forget ROUGE", "retain prob", "unlearn s",
                  title=f"{result['protocol']}: {result['method']}")
    for s in result["steps"]:
        a = s["aggregates"]
        fq = a.get("forget_quality", {})
        fq_cell = (f"{fmt(fq['value'])} (D={fmt(fq.get('ks_statistic'))}, n={fq.get('n')})"
                   if fq else "—")
        cells = [fmt(a[k]["value"]) if k in a else "—"
                 for k in ("model_utility", "forget/probability", "forget/rouge", "retain/probability")]
        table.add_row(str(s["step"]), s["split"], str(s["n_forget_items"]), fq_cell, *cells,
                      f"{s['unlearn_seconds']:.1f}")
    return table


@app.command(rich_help_panel=PANEL)
def protocol(
    name: Annotated[str, typer.Argument(help="scalability or sustainability")],
    method: Annotated[str, typer.Option("--method", "-m", help="unlearning method")],
    out: Annotated[Path, typer.Option(help="directory for the runs, <protocol>.json and <protocol>.png")],
    model: Annotated[str, typer.Option(help="world:PRESET[@SEED][:ARCH]")] = "world:small",
    splits: Annotated[str, typer.Option(help="nested forget splits, comma-separated")]
    = "forget01,forget05,forget10",
    set_: SetOpt = None,
    max_items: Annotated[int | None, typer.Option(help="cap retain and holdout items (faster)")] = None,
    no_generate: NoGenerate = False,
    no_references: Annotated[bool, typer.Option("--no-references", help="skip the target and oracle "
                                                "reference evaluations")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Scalability (growing nested forget sets) or sustainability (disjoint requests in turn), with plots."""
    from obliviate.api import protocol as run_protocol

    result = run_protocol(name, method, out=out, model=model, splits=splits, overrides=set_ or [],
                          max_items=max_items, generate=not no_generate, references=not no_references,
                          progress=not as_json, log=None if as_json else console.print)
    if as_json:
        return print_json(result)
    console.print(protocol_table(result))
    console.print(f"results: {out / (name + '.json')}\nplot: {result['plot']}")
