"""The labelled-text task on the command line: `obliviate reviews ...` and `eval --suite labels`.

    obliviate reviews build --preset small --kind products     # target + oracle of the review task
    obliviate reviews export data/ --preset small --kind products
    obliviate eval reviews:small@0/products --suite labels --out evals/target
    obliviate eval RUN --suite labels --world reviews:small@0/products

A target is a run directory, a local HF directory or hub name, or `reviews:PRESET[@SEED][/KIND]`
(the task's target model). The task comes from `--world reviews:PRESET[@SEED][/KIND]`, else from the
target's spec, else from the run's config.json (`"reviews"`). `export` writes each set as labelled
texts (`labelled/NAME.jsonl`) and as QA items (`qa/NAME.jsonl`), so any QA method can unlearn the
task from the CLI: `obliviate unlearn --method ga --model TARGET_DIR --forget data/qa/forget_train.jsonl
--retain data/qa/retain_train.jsonl --out runs/ga`.

The table shows the model beside the task's target and its oracle (or `--oracle MODEL`); results
go to `labels_results.json` and `labels_items.jsonl` in the run directory (or `--out`), beside the
qa suite's files, which they never overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from obliviate.cli.app import app, console, print_json

reviews_app = typer.Typer(no_args_is_help=True,
                          help="The built-in labelled-text task: reviews of fictitious products.")
app.add_typer(reviews_app, name="reviews")

Preset = Annotated[str, typer.Option(help="reviews preset: tiny or small")]
Seed = Annotated[int, typer.Option(help="task seed")]
Kind = Annotated[str, typer.Option(help="forget set: products (all reviews of chosen products) or random")]

@reviews_app.command("build")
def reviews_build(preset: Preset = "small", seed: Seed = 0, kind: Kind = "products") -> None:
    """Generate the review task and train (or reuse) its target and oracle."""
    from obliviate.world.review_models import build_review_models

    models = build_review_models(preset, seed, kind, progress=True)
    console.print(f"target: {models.target}\noracle: {models.oracle}")


@reviews_app.command("export")
def reviews_export(out: Path, preset: Preset = "small", seed: Seed = 0, kind: Kind = "products") -> None:
    """Write the four sets as labelled texts and as QA items (JSON Lines)."""
    from obliviate.io import write_jsonl
    from obliviate.world.reviews import as_qa_items, get_reviews

    for name, items in get_reviews(preset, seed).split(kind).sets().items():
        write_jsonl(out / "labelled" / f"{name}.jsonl", [it.to_dict() for it in items])
        write_jsonl(out / "qa" / f"{name}.jsonl", [it.to_dict() for it in as_qa_items(items)])
    console.print(f"wrote {out}/labelled and {out}/qa")


def eval_labels(target: str, world: str | None = None, oracle: str | None = None, out: Path | None = None,
                as_json: bool = False, unused: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `target` with the labels suite on the review task; write and print the results."""
    from obliviate.evals.labels import RESULTS
    from obliviate.tables import labels_table
    from obliviate.workflow.suites import evaluate_labels_target

    payload, columns, ref = evaluate_labels_target(target, world, oracle, out, unused)
    if as_json:
        print_json(payload)
        return payload
    console.print(labels_table(columns, f"labels suite: {ref}"))
    console.print(f"results: {(Path(target) if out is None else out) / RESULTS}")
    return payload
