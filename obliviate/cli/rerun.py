"""CLI command `rerun`: unlearn again as a run did, from its config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from obliviate.cli.app import JsonOpt, app, console, print_json, warn


@app.command()
def rerun(
    run: Annotated[Path, typer.Argument(help="a run directory (or its config.json) made by `obliviate unlearn`")],
    out: Annotated[Path, typer.Option(help="the new run directory")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="change a method config key: key=value")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Repeat a run: the same method, model, data and resolved settings, into a new run directory."""
    from obliviate.api import rerun as run_again

    summary = run_again(run, out=out, overrides=set_, progress=not as_json, log=warn).summary
    if as_json:
        return print_json({"run": str(out), **summary})
    console.print(f"repeated {run} in {summary.get('train_seconds', 0.0):.1f}s; run directory: {out}\n"
                  f"next: obliviate eval {out}")
