"""CLI command `compat tofu-legacy`: score other tools' evaluation logs with obliviate's metrics."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from obliviate.cli.app import JsonOpt, compat_app, console, print_json
from obliviate.tables import fmt


@compat_app.command("tofu-legacy")
def compat_tofu_legacy(model_log: Path, oracle_log: Path, as_json: JsonOpt = False) -> None:
    """Score legacy TOFU evaluation logs (model vs retain-only oracle) with obliviate's metrics."""
    from obliviate.compat.tofu_legacy import tofu_legacy_report

    report = tofu_legacy_report(model_log, oracle_log)
    if as_json:
        return print_json(report)
    table = Table("metric", "value", title=f"TOFU legacy: {model_log.name} vs {oracle_log.name}")
    for key, value in report.items():
        if isinstance(value, (int, float)):
            table.add_row(key, fmt(value))
    console.print(table)
