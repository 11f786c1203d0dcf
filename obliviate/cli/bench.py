"""CLI commands `bench` (a resumable grid of methods × splits × seeds) and `report` (report.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from obliviate.cli.app import DataOpt, ForceOpt, JsonOpt, ReportToOpt, app, console, print_json
from obliviate.errors import ConfigError


@app.command()
def bench(
    methods: Annotated[str, typer.Option(help="methods a,b,... or all (see `obliviate methods`; "
                                            "all leaves out uoe on a world that is not MoE)")],
    out: Annotated[Path, typer.Option(help="bench directory; run the same command again to resume")],
    world: Annotated[str, typer.Option(help="built-in world PRESET or PRESET:ARCH (each seed is its own world)")]
    = "small",
    forget: Annotated[str, typer.Option(help="world splits, e.g. forget01,forget05,forget10; with --model: "
                                             "forget file(s), PATH or LABEL=PATH,...")] = "forget10",
    seeds: Annotated[str, typer.Option(help="a count N (seeds 0..N-1) or a list such as 0,4,7")] = "3",
    attacks: Annotated[str | None, typer.Option(help="robustness attacks a,b or all, run on every cell")] = None,
    model: Annotated[str | None, typer.Option(help="your own model (local dir or hub name) instead of the world")]
    = None,
    retain: Annotated[str | None, typer.Option(help="with --model: the retain QA set")] = None,
    oracle: Annotated[str | None, typer.Option(help="with --model: an oracle model, or an eval dir with "
                                                    "items.jsonl (forget quality needs one)")] = None,
    holdout: Annotated[str | None, typer.Option(help="with --model: never-trained QA set (membership inference)")]
    = None,
    utility: Annotated[list[str] | None, typer.Option(help="with --model: utility QA set NAME=PATH (repeatable)")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override key=value (every method with "
                                                                 "that key) or method.key=value")] = None,
    jobs: Annotated[int, typer.Option(help="cells run at once, each in its own process")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads per cell (0: 1 on the built-in world, else torch's "
                                              "default)")] = 0,
    max_retain: Annotated[int | None, typer.Option(help="evaluate on a seeded subset of this many retain items")]
    = None,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="skip generation (no ROUGE)")] = False,
    drop_models: Annotated[bool, typer.Option("--drop-models", help="delete each cell's unlearned weights once "
                                                                    "it is evaluated and attacked")] = False,
    redo_stale: Annotated[bool, typer.Option("--redo-stale", help="redo finished cells made with other "
                                                                  "settings (else the bench stops)")] = False,
    report: Annotated[bool, typer.Option(help="write report.html at the end")] = True,
    data: DataOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    report_to: ReportToOpt = None,
) -> None:
    """Run methods × forget splits × seeds, each unlearned, evaluated against the oracle (and attacked).

    Writes leaderboard.csv/.json/.md and report.html. Killed or failed cells are redone by running the
    same command again; finished cells are kept.
    """
    from obliviate.api import bench as run_bench

    board = run_bench(methods, out=out, world=world, forget=forget, seeds=seeds, attacks=attacks, model=model,
                      retain=retain, oracle=oracle, holdout=holdout, utility=dict(_name_path(u) for u in utility or []),
                      overrides=set_ or [], jobs=jobs, threads=threads, max_retain=max_retain,
                      generate=not no_generate, keep_models=not drop_models, redo_stale=redo_stale, report=report,
                      force=force, progress=not as_json and console.is_terminal,
                      log=None if as_json else console.print, report_to=report_to, data=data)
    if as_json:
        print_json({"out": str(out), "cells": board.total, "kept": board.kept, "ran": board.ran,
                    "failed": board.failed, "seconds": board.seconds,
                    "files": {k: str(v) for k, v in board.files.items()}})
    else:
        _print_summary(board)
    if board.failed:
        raise typer.Exit(1)


def _name_path(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--utility {spec!r}: expected NAME=PATH")
    return name, path


def _print_summary(outcome) -> None:
    from obliviate.grid.leaderboard import COLUMN, cell_text

    board = outcome.leaderboard
    keys = [k for k in ("forget_quality", "model_utility", "forget_rouge", "retain_rouge", "privleak", "verbmem_forget",
                        "knowmem_forget", "knowmem_retain", "wmdp_bio", "wmdp_cyber", "robustness", "unlearn_seconds")
            if k in board["columns"]]
    table = Table("split", "model", "seeds", *[board["labels"][k] for k in keys], title="leaderboard")
    for row in board["rows"]:
        name = f"[dim]{row['model']}[/]" if row["kind"] == "anchor" else row["model"]
        table.add_row(row["split"], name, str(row["n_seeds"]),
                      *[cell_text(row["metrics"].get(k), COLUMN[k].log) for k in keys])
    console.print(table)
    console.print(f"[dim]{board['ci']}[/]")
    console.print(f"{outcome.ran} cells run, {outcome.kept} kept from before, {len(outcome.failed)} failed, "
                  f"in {outcome.seconds:.0f}s")
    for label, why in outcome.failed.items():
        console.print(f"[red]failed[/] {label}: {why}", highlight=False)
    for kind, path in outcome.files.items():
        console.print(f"{kind}: {path}")


@app.command("report")
def report_cmd(
    path: Annotated[Path, typer.Argument(help="a bench directory, a run directory or a protocol directory")],
    out: Annotated[Path | None, typer.Option(help="where to write the HTML (default: PATH/report.html)")] = None,
) -> None:
    """Write report.html: one self-contained page with the plots, tables and provenance."""
    from obliviate.grid import write_report

    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory")
    console.print(f"report: {write_report(path, out)}")
