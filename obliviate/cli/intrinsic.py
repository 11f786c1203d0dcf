"""`obliviate eval TARGET --suite intrinsic`: parametric traces and representation similarity (see
obliviate/evals/intrinsic.py and obliviate/workflow/intrinsic.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from obliviate.cli.app import console, print_json
from obliviate.tables import fmt


def eval_intrinsic(target: str, forget: str | None, retain: str | None, oracle: str | None, reference: str | None,
                   split: str, world: str | None, out: Path | None, as_json: bool,
                   unused: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `target` with the intrinsic suite; write and print the results."""
    from obliviate.workflow.intrinsic import RESULTS, evaluate_intrinsic_target

    payload = evaluate_intrinsic_target(target, forget, retain, oracle, reference, split, world, out,
                                        progress=not as_json, unused=unused)
    if as_json:
        print_json(payload)
        return payload
    columns = list(payload["aggregates"])
    table = Table("metric", *columns, title=f"intrinsic suite: {Path(target).name or target} against "
                  f"{Path(payload['reference']).name or payload['reference']} (1 = as the reference)")
    for key in payload["aggregates"]["model"]:
        table.add_row(key, *(fmt(payload["aggregates"][c].get(key)) for c in columns))
    console.print(table)
    for column, notes in payload["notes"].items():
        for note in notes:
            console.print(f"{column}: {note}")
    console.print(f"results: {(Path(target) if out is None else out) / RESULTS}")
    return payload
