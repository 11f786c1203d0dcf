"""CLI commands that unlearn and evaluate: `unlearn`, `eval` (every suite) and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from obliviate.cli.app import (
    ChatKwargsOpt,
    DataOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    MaxNewTokensOpt,
    PromptOpt,
    ReportToOpt,
    SystemPromptOpt,
    app,
    console,
    print_json,
    prompt_format,
    warn,
)
from obliviate.cli.world import Preset, Seed, Split
from obliviate.errors import ObliviateError
from obliviate.tables import fmt, side_by_side

# -- unlearn -----------------------------------------------------------------------------------------

@app.command()
def unlearn(
    method: Annotated[str, typer.Option("--method", "-m", help="method name (see `obliviate methods`)")],
    model: Annotated[str, typer.Option(help="world:PRESET[@SEED][:ARCH], a run dir, a local HF dir or a hub name")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    forget: Annotated[str | None, typer.Option(help="forget set file/dir/hub name (QA schema, or text passages: a "
                                                   "text column and no question)")] = None,
    retain: Annotated[str | None, typer.Option(help="retain set file/dir/hub name (QA schema or text passages)")]
    = None,
    split: Split = "forget10",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")] = None,
    config: Annotated[Path | None, typer.Option(help="method config file (.yaml/.toml/.json)")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="column mapping, e.g. question=prompt")] = None,
    strict: Annotated[bool, typer.Option(help="make forget/retain overlap and duplicate items an error")] = False,
    resume: Annotated[bool, typer.Option(help="continue a stopped run from its last checkpoint")] = False,
    lora: Annotated[str | None, typer.Option(help="train a LoRA adapter: r=8,alpha=16,targets=all-linear")] = None,
    merge: Annotated[bool, typer.Option(help="with --lora: save merged full weights, not the adapter")] = False,
    ref: Annotated[str | None, typer.Option(
        help="reference model π_ref (NPO, KL, IdkDPO, ...): adapter (LoRA switched off), precompute (cache its "
             "forget-set log-probs once, no model held), copy (a frozen copy) or auto")] = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    system_prompt: SystemPromptOpt = None,
    chat_kwargs: ChatKwargsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    defaults: Annotated[str, typer.Option(help="method defaults: paper (7B-scale, the paper's code), world (tuned "
                                               "on the built-in world) or auto (world for world: models)")] = "auto",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    report_to: ReportToOpt = None,
) -> None:
    """Unlearn a forget set from a model; writes a run directory."""
    from accelerate import PartialState

    from obliviate.api import unlearn as run_unlearn

    fmt = prompt_format(prompt, system_prompt, chat_kwargs, max_new_tokens)
    summary = run_unlearn(method, model, data, out=out, forget=forget, retain=retain, split=split, lora=lora,
                          overrides=set_, config=config, mapping=map_, strict=strict, resume=resume, merge=merge,
                          ref=ref, prompt=fmt, device=device, dtype=dtype, defaults=defaults, progress=not as_json,
                          log=warn, info=None if as_json else _info,
                          report_to=report_to, force=force).summary
    if not PartialState().is_main_process:
        return
    if as_json:
        return print_json({"run": str(out), **summary})
    cut = summary.get("truncated", {})
    if any(cut.values()):
        console.print(f"[yellow]note:[/] truncated to max_length: {cut.get('forget', 0)} forget and "
                      f"{cut.get('retain', 0)} retain items")
    for name, counts in summary.get("chunks", {}).items():
        console.print(f"note: long {name} passages split into chunks of at most max_length tokens: "
                      f"{counts['passages']} passages into {counts['chunks']} chunks")
    if isinstance(summary.get("classifier"), dict):
        from obliviate.interventions.detector import report_table

        table = report_table(summary["classifier"])
        if table is not None:
            console.print(table)
    if isinstance(summary.get("deletion"), dict):  # s3t: what the deletion took out and repeated
        d = summary["deletion"]
        console.print(f"deleted {d['items']} items: {d['layers_affected']} of {d['layers']} layers "
                      f"{'retrained' if d['retrain'] else 'deactivated'}; training repeated {d['cost_fraction']:.2f}, "
                      f"deactivated {d['deactivated_fraction']:.2f}")
    console.print(f"unlearned with {method} in {summary['train_seconds']:.1f}s, {summary['steps']} steps; "
                  f"run directory: {out}\nnext: obliviate eval {out}")


def _info(line: str) -> None:
    console.print(line, highlight=False)


# -- eval --------------------------------------------------------------------------------------------

def print_lm_eval(metrics: dict[str, Any], out: Path) -> None:
    from obliviate.evals.lm_eval import RESULTS_FILE

    table = Table("task", "metric", "value", "± stderr", "samples", title="lm-evaluation-harness")
    for task, row in metrics.items():
        for key, value in row.items():
            if key == "samples" or key.endswith("_stderr") or "_stderr/" in key:
                continue
            metric, _, filt = key.partition("/")
            stderr = row.get(f"{metric}_stderr/{filt}" if filt else f"{metric}_stderr")
            table.add_row(task, key, fmt(value), fmt(stderr), str(row.get("samples", "")))
    console.print(table)
    console.print(f"results: {out / RESULTS_FILE}")


@app.command("eval")
def eval_cmd(
    target: Annotated[str, typer.Argument(help="a run dir, world:PRESET[@SEED], a local HF dir or a hub name")],
    forget: Annotated[str | None, typer.Option(help="forget QA set (default: the world's)")] = None,
    retain: Annotated[str | None, typer.Option(help="retain QA set")] = None,
    utility: Annotated[list[str] | None, typer.Option(help="utility QA set NAME=PATH (repeatable)")] = None,
    holdout: Annotated[str | None, typer.Option(help="never-trained QA set, for membership inference")] = None,
    oracle: Annotated[str | None, typer.Option(help="oracle: a model, or an eval/run dir with items.jsonl; "
                                               "default for world runs: the world's oracle")] = None,
    split: Split = "forget10",
    world: Annotated[str | None, typer.Option(help="PRESET[@SEED][:ARCH]: use this world's sets and oracle")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write results (default: the run dir)")] = None,
    suite: Annotated[str, typer.Option(help="evaluation suite")] = "qa",
    map_: Annotated[list[str] | None, typer.Option("--map", help="column mapping, e.g. question=prompt")] = None,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="skip generation (no ROUGE)")] = False,
    keep_generations: Annotated[bool, typer.Option(
        "--keep-generations", help="write the forget set's generations into items.jsonl (they may hold the "
                                   "forgotten text; see docs/privacy.md)")] = False,
    lm_eval: Annotated[str | None, typer.Option(
        "--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks, e.g. mmlu,arc_easy: run these instead "
        "of a suite (needs the lm-eval extra); writes lm_eval.json")] = None,
    lm_eval_limit: Annotated[int | None, typer.Option(
        "--lm-eval-limit", min=1, metavar="N", help="with --lm-eval: score at most N documents per task")] = None,
    lm_eval_include: Annotated[Path | None, typer.Option(
        "--lm-eval-include", metavar="DIR", help="with --lm-eval: a directory of local task YAML files")] = None,
    lm_eval_fewshot: Annotated[int | None, typer.Option(
        "--lm-eval-fewshot", min=0, metavar="K", help="with --lm-eval: in-context examples (default: each "
        "task's own)")] = None,
    data: DataOpt = None,
    legacy_subset: Annotated[bool, typer.Option(
        "--legacy-subset", help="with --data tofu:...: TOFU's first 300 items of each set, as its published "
        "evaluation")] = False,
    prompt: PromptOpt = None,
    system_prompt: SystemPromptOpt = None,
    chat_kwargs: ChatKwargsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="items per forward pass and per generation batch")] = 32,
    reference_model: Annotated[str | None, typer.Option(
        help="a reference model (same tokenizer) for the reference-model membership attack; with --suite "
             "intrinsic, the model unlearning started from (default: a run's own, or the world's target)")] = None,
    gradnorm: Annotated[bool, typer.Option(help="also the GradNorm membership attack (a backward pass per "
                                                "item)")] = False,
    preset: Annotated[str | None, typer.Option(
        help="open-unlearning: its TOFU protocol (chat template, system prompt, date string, 200 new tokens) "
             "and its seven headline keys beside obliviate's metrics")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    report_to: ReportToOpt = None,
) -> None:
    """Evaluate a model or run with the qa suite (TOFU-style), against an oracle when one is given.

    With --lm-eval, run lm-evaluation-harness tasks on the model (general utility) instead.
    """
    from obliviate.workflow.suites import evaluate_lm_eval_target

    if lm_eval is not None:  # general utility through lm-evaluation-harness (see obliviate/evals/lm_eval.py)
        metrics, where = evaluate_lm_eval_target(
            target, lm_eval, lm_eval_limit, lm_eval_include, lm_eval_fewshot, split, out, progress=not as_json,
            unused={"--suite": suite if suite != "qa" else None, "--forget": forget, "--retain": retain,
                    "--utility": utility, "--holdout": holdout, "--oracle": oracle, "--world": world,
                    "--map": map_, "--no-generate": no_generate})
        return print_json(metrics) if as_json else print_lm_eval(metrics, where)
    if data is not None and forget is not None:
        raise ObliviateError("give --data or --forget/--retain, not both")
    from obliviate.workflow.data import parse_data_spec, resolve_spec, source

    bench = resolve_spec(target, data, forget) if suite == "qa" else None
    if bench is not None and bench.suite == "lm_eval":  # wmdp: multiple choice through the harness
        from obliviate.workflow.suites import evaluate_wmdp_target

        metrics, where = evaluate_wmdp_target(target, str(bench), lm_eval_limit, split, out, progress=not as_json)
        return print_json(metrics) if as_json else print_lm_eval(metrics, where)
    if bench is not None and bench.suite == "text":  # muse: the text suite on the benchmark's sets
        from obliviate.cli.text import eval_text

        eval_text(target, source(bench), oracle, split, world, out, not no_generate, as_json,
                  unused={"--retain": retain, "--utility": utility, "--holdout": holdout, "--map": map_})
        return
    for flag, value in (("--lm-eval-limit", lm_eval_limit), ("--lm-eval-include", lm_eval_include),
                        ("--lm-eval-fewshot", lm_eval_fewshot)):
        if value is not None:
            raise ObliviateError(f"{flag} needs --lm-eval TASKS")
    if suite == "text":  # MUSE-style; --forget names MUSE-format data (see obliviate/cli/text.py)
        from obliviate.cli.text import eval_text

        if data is not None:  # --data muse:news[@DIR] names the same data
            named = parse_data_spec(data)
            if named.suite != "text":
                raise ObliviateError(f"--suite text: --data {data} is not scored by the text suite (its suite: "
                                     f"{named.suite})")
            forget = source(named)
        eval_text(target, forget, oracle, split, world, out, not no_generate, as_json,
                  unused={"--retain": retain, "--utility": utility, "--holdout": holdout, "--map": map_})
        return
    if suite == "labels":  # the labelled-text review task (see obliviate/cli/labels.py)
        from obliviate.cli.labels import eval_labels

        eval_labels(target, world, oracle, out, as_json,
                    unused={"--forget": forget, "--retain": retain, "--utility": utility, "--holdout": holdout})
        return
    if suite == "skill":  # the skill task (see obliviate/cli/skills.py)
        from obliviate.cli.skills import eval_skill

        eval_skill(target, world, out, as_json,
                   unused={"--forget": forget, "--retain": retain, "--utility": utility, "--holdout": holdout})
        return
    if suite == "intrinsic":  # parametric traces and CKA against the reference (see obliviate/cli/intrinsic.py)
        from obliviate.cli.intrinsic import eval_intrinsic

        eval_intrinsic(target, forget, retain, oracle, reference_model, split, world, out, as_json,
                       unused={"--utility": utility, "--holdout": holdout, "--data": data, "--map": map_})
        return
    if suite != "qa":
        raise ObliviateError(f"unknown suite '{suite}' (available: qa, text, labels, skill, intrinsic)")
    from obliviate.api import evaluate

    result = evaluate(target, forget=forget, retain=retain, utility=utility, holdout=holdout, oracle=oracle,
                      world=world, split=split, out=out, mapping=map_, generate=not no_generate, data=data,
                      legacy=legacy_subset, prompt=prompt_format(prompt, system_prompt, chat_kwargs, max_new_tokens),
                      batch_size=batch_size, device=device, dtype=dtype, preset=preset, progress=not as_json,
                      report_to=report_to, reference_model=reference_model, gradnorm=gradnorm,
                      keep_generations=keep_generations)
    if as_json:
        return print_json(result.payload)
    console.print(side_by_side({Path(target).name or target: result.aggregates}, "qa suite"))
    if "rwku" in result.payload:
        table = Table("RWKU (ROUGE-L recall)", "value", title="RWKU's table: forget ↓, neighbour ↑")
        for key, value in result.payload["rwku"].items():
            table.add_row(key, fmt(value))
        console.print(table)
    if "open_unlearning" in result.payload:
        table = Table("open-unlearning key", "value", title="open-unlearning's headline keys (its definitions)")
        for key, value in result.payload["open_unlearning"].items():
            table.add_row(key, fmt(value))
        console.print(table)
    console.print(f"results: {result.path / 'results.json'}")


# -- demo --------------------------------------------------------------------------------------------

@app.command()
def demo(
    preset: Preset = "small",
    seed: Seed = 0,
    split: Split = "forget10",
    method: Annotated[str, typer.Option(help="unlearning method")] = "graddiff",
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/demo"),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a method config key: key=value")] = None,
) -> None:
    """Unlearn forget10 from the built-in world's model and compare it with the exact-retrain oracle."""
    from obliviate.api import demo as run_demo

    story = run_demo(preset, seed, split, method, out, progress=not as_json,
                     log=None if as_json else console.print, overrides=set_, force=force)
    if as_json:
        return print_json(story)
    console.print(side_by_side(story["models"], f"world:{preset}@{seed} {split} — {method} vs target vs oracle"))
    console.print(f"run directory: {out}  ({story['seconds']:.0f}s)\n"
                  "↑/↓: higher/lower is better; forget quality near 1 means indistinguishable from the oracle.")
