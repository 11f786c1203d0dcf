"""CLI commands `worker` (the durable-unlearning worker of a deployment) and `ledger verify` (its hash chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from obliviate.cli.app import JsonOpt, app, console, err_console, print_json

ledger_app = typer.Typer(no_args_is_help=True, help="The forget-request ledger of an `obliviate serve` deployment.")
app.add_typer(ledger_app, name="ledger")

ConfigOpt = Annotated[Path, typer.Option("--config", help="the deployment's config file (YAML; see docs/serve.md)")]


@app.command("worker")
def worker(config: ConfigOpt,
           once: Annotated[bool, typer.Option("--once", help="process at most one job, then exit")] = False) -> None:
    """Claim forget requests' jobs from the ledger: unlearn, check the gates, write the evidence, publish."""
    import signal

    from obliviate.serve.config import load_config
    from obliviate.serve.worker import run_worker

    deployment = load_config(config)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: the job is requeued
    try:
        done = run_worker(deployment, once=once, log=lambda line: console.print(line, highlight=False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if once:
        console.print(f"{done} job{'s' if done != 1 else ''} processed", highlight=False)


@ledger_app.command("verify")
def ledger_verify(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Recompute the ledger's hash chain; exit 1 naming the first record that was edited or deleted."""
    from obliviate.serve.config import load_config
    from obliviate.serve.ledger import Ledger

    deployment = load_config(config)
    ledger = Ledger(deployment.database_url, stale_after=deployment.stale_after)
    try:
        report = ledger.verify()
    finally:
        ledger.close()
    if as_json:
        print_json({"ok": report.ok, "records": report.records, "first_bad": report.first_bad,
                    "reason": report.reason})
    elif report.ok:
        console.print(report.line(), highlight=False)
    else:
        err_console.print(f"broken: {report.reason}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
