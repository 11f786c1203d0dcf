"""CLI commands `finetune-sharded` and `delete`: S3T's sharded ensemble as a model of its own.

    obliviate finetune-sharded --model world:tiny --out runs/s3t-full
    obliviate finetune-sharded --model BASE --data train.jsonl --out runs/s3t-full --set shards=8
    obliviate delete runs/s3t-full --subjects p003,p017 --out runs/s3t-deleted [--retrain]

`unlearn --method s3t` does both at once (train, then delete the forget set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from obliviate.cli.app import JsonOpt, app, console, print_json


@app.command("finetune-sharded")
def finetune_sharded(
    model: Annotated[str, typer.Option(help="world:PRESET[@SEED], or the base model (a local HF dir or hub name)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    data: Annotated[str | None, typer.Option(help="fine-tuning set (QA items or text passages); not for world:")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="s3t config key=value (`obliviate methods s3t`)")]
    = None,
    force: Annotated[bool, typer.Option(help="write into a non-empty directory not of this tool")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train S3T's sharded ensemble of LoRA slices (exact unlearning by `obliviate delete`)."""
    from obliviate.workflow.exact import finetune_sharded as run

    summary = run(model, out, data, set_ or [], progress=not as_json, force=force)
    if as_json:
        return print_json(summary)
    console.print(f"trained the sharded ensemble on {summary['items']} items; run directory: {out}\n"
                  f"next: obliviate eval {out}, or obliviate delete {out} --subjects ... --out NEW")


@app.command("delete")
def delete(
    run: Annotated[Path, typer.Argument(help="an s3t run directory")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    ids: Annotated[Path | None, typer.Option(help="file of item ids to delete, one per line (manifest.json)")] = None,
    subjects: Annotated[str | None, typer.Option(help="delete every item of these subjects, comma-separated")] = None,
    retrain: Annotated[bool, typer.Option(help="retrain the deactivated layers without the items")] = False,
    force: Annotated[bool, typer.Option(help="write into a non-empty directory not of this tool")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete items from an s3t run exactly: deactivate (or retrain) every layer that saw them."""
    from obliviate.errors import ObliviateError
    from obliviate.workflow.exact import delete_from_run

    if ids is not None and not ids.is_file():
        raise ObliviateError(f"--ids {ids}: no such file")
    chosen = [line.strip() for line in ids.read_text(encoding="utf-8").splitlines() if line.strip()] if ids else None
    names = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
    summary = delete_from_run(run, out, chosen, names, retrain, progress=not as_json, force=force)
    if as_json:
        return print_json(summary)
    d = summary["deletion"]
    console.print(f"deleted {d['items']} items: {d['layers_affected']} of {d['layers']} layers "
                  f"{'retrained' if retrain else 'deactivated'}; training repeated {d['cost_fraction']:.2f}, "
                  f"deactivated {d['deactivated_fraction']:.2f}; run directory: {out}")
