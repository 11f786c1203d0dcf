"""The typer app, its sub-apps, the consoles and the `--json` option that every command module shares."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

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


def print_json(obj: Any) -> None:
    """Print `obj` as indented JSON (numpy values and paths included)."""
    from obliviate.io import _default

    typer.echo(json.dumps(obj, indent=2, default=_default))


def warn(line: str) -> None:
    """A one-line warning on the console."""
    console.print(f"[yellow]warning:[/] {line}", highlight=False)
