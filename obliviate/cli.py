"""The `obliviate` command line (typer).

User errors (`ObliviateError`) print one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from obliviate.errors import ObliviateError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a language model forget chosen data, and prove that it did.")
world_app = typer.Typer(no_args_is_help=True, help="The built-in synthetic world.")
compat_app = typer.Typer(no_args_is_help=True, help="Score other tools' evaluation logs.")
app.add_typer(world_app, name="world")
app.add_typer(compat_app, name="compat")

console = Console()
if not console.is_terminal:
    console = Console(width=160)  # piped output: do not wrap tables at 80 columns
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]


def _print_json(obj: Any) -> None:
    from obliviate.io import _default

    typer.echo(json.dumps(obj, indent=2, default=_default))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    return str(value)


# -- methods and metrics -----------------------------------------------------------------------------

@app.command()
def methods(name: Annotated[str | None, typer.Argument(help="show one method's config")] = None,
            as_json: JsonOpt = False) -> None:
    """List every unlearning method, or show one method's config fields."""
    from obliviate.config import describe_config
    from obliviate.methods import METHODS, get_method

    if name is None:
        rows = [{"name": m.name, "family": m.family, "paper": m.paper, "summary": m.summary}
                for m in METHODS.values()]
        if as_json:
            return _print_json(rows)
        table = Table("method", "family", "paper", "what it does", title="unlearning methods")
        for r in rows:
            table.add_row(r["name"], r["family"], r["paper"], r["summary"])
        return console.print(table)
    cls = get_method(name)
    fields = describe_config(cls.Config)
    if as_json:
        return _print_json({"name": cls.name, "doc": cls.__module__, "fields": [
            {"name": f, "type": t, "default": d, "help": h} for f, t, d, h in fields]})
    console.print(f"[bold]{cls.name}[/] ({cls.family}): {cls.summary}\n{cls.paper}")
    table = Table("field", "type", "default", "help", title=f"{cls.name} config (--set key=value)")
    for row in fields:
        table.add_row(*row)
    console.print(table)


@app.command()
def metrics(as_json: JsonOpt = False) -> None:
    """List every metric with its direction."""
    from obliviate.metrics.registry import METRICS

    rows = [{"name": m.name, "higher_is_better": m.higher_is_better, "suite": m.suite,
             "description": m.description} for m in METRICS.values()]
    if as_json:
        return _print_json(rows)
    arrow = {True: "↑", False: "↓", None: "target"}
    table = Table("metric", "better", "suite", "definition", title="metrics")
    for r in rows:
        table.add_row(r["name"], arrow[r["higher_is_better"]], r["suite"], r["description"])
    console.print(table)


# -- compat ------------------------------------------------------------------------------------------

@compat_app.command("tofu-legacy")
def compat_tofu_legacy(model_log: Path, oracle_log: Path, as_json: JsonOpt = False) -> None:
    """Score legacy TOFU evaluation logs (model vs retain-only oracle) with obliviate's metrics."""
    from obliviate.compat.tofu_legacy import tofu_legacy_report

    report = tofu_legacy_report(model_log, oracle_log)
    if as_json:
        return _print_json(report)
    table = Table("metric", "value", title=f"TOFU legacy: {model_log.name} vs {oracle_log.name}")
    for key, value in report.items():
        if isinstance(value, (int, float)):
            table.add_row(key, _fmt(value))
    console.print(table)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    try:
        app()
    except ObliviateError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


# Each command module registers its commands on `app` when imported:
# cli_run (demo, world, unlearn, eval), cli_attack (attack), cli_bench (bench, report),
# cli_compare (compare, seeds, protocol), cli_labels (reviews; eval --suite labels).
from obliviate import cli_attack, cli_bench, cli_compare, cli_labels, cli_run  # noqa: E402,F401

if __name__ == "__main__":
    main()
