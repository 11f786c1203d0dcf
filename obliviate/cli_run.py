"""CLI commands that build, unlearn and evaluate: `demo`, `world ...`, `unlearn`, `eval`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from obliviate.cli import JsonOpt, _fmt, _print_json, app, console, world_app
from obliviate.errors import ObliviateError

Preset = Annotated[str, typer.Option(help="world preset: tiny, small or full")]
Seed = Annotated[int, typer.Option(help="world seed")]
Split = Annotated[str, typer.Option(help="forget split: forget01, forget05 or forget10")]
Arch = Annotated[str, typer.Option(help="world model architecture: llama, gpt2 or moe (Mixtral-style)")]

def _arrow(agg: dict[str, Any]) -> str:
    return {True: " ↑", False: " ↓"}.get(agg.get("higher_is_better"), "")


def side_by_side(columns: dict[str, dict[str, Any]], title: str) -> Table:
    """One table: a row per headline metric, a column per model (value [CI])."""
    table = Table("metric", *columns, title=title)
    from obliviate.metrics.registry import HEADLINE_AGGREGATES  # (imported here: the metrics load scipy)

    # the headline aggregates but the KS statistic
    keys = [(k, label) for k, label in HEADLINE_AGGREGATES
            if k != "forget_quality/ks_statistic" and any(k in c for c in columns.values())]
    for key, label in keys:
        first = next(c[key] for c in columns.values() if key in c)
        cells = []
        for agg in columns.values():
            a = agg.get(key)
            if a is None:
                cells.append("—")
            elif "ci_low" in a and not np.isnan(a["ci_low"]):
                cells.append(f"{_fmt(a['value'])} [{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}]")
            else:
                cells.append(_fmt(a["value"]))
        table.add_row(label + _arrow(first), *cells)
    return table


def peak_memory_mb() -> float:
    """Peak memory of this process: torch's peak allocation on a GPU, else the peak resident set size."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- world -------------------------------------------------------------------------------------------

@world_app.command("build")
def world_build(preset: Preset = "small", seed: Seed = 0, split: Split = "forget10",
                oracle2: Annotated[bool, typer.Option(help="also train the second oracle")] = False,
                arch: Arch = "llama") -> None:
    """Generate the world and train (or reuse) its target and oracle models."""
    from obliviate.world import build_world_models

    which = ("target", "oracle", "oracle2") if oracle2 else ("target", "oracle")
    models = build_world_models(preset, seed, split, which=which, progress=True, arch=arch)
    console.print(f"target: {models.target}\noracle: {models.oracle}" + (f"\noracle2: {models.oracle2}"
                                                                         if models.oracle2 else ""))


@world_app.command("check")
def world_check(preset: Preset = "small", seed: Seed = 0, split: Split = "forget10", as_json: JsonOpt = False,
                arch: Arch = "llama") -> None:
    """Print the world's calibration table (pass/fail per line); exit 1 if any line fails."""
    from obliviate.world.check import check_world, format_check_table

    rows = check_world(preset, seed, split, arch=arch)
    if as_json:
        _print_json([r.__dict__ for r in rows])
    else:
        console.print(format_check_table(rows))
    if not all(r.passed for r in rows):
        raise typer.Exit(1)


@world_app.command("export")
def world_export(out: Path, preset: Preset = "small", seed: Seed = 0, split: Split = "forget10") -> None:
    """Write the world's forget/retain/holdout/utility sets as JSONL files."""
    from obliviate.world import get_world

    get_world(preset, seed).export(out, split)
    console.print(f"wrote {out}")


# -- unlearn -----------------------------------------------------------------------------------------

def _load_sets(forget: str | None, retain: str | None, ref, mapping: list[str], strict: bool):
    from obliviate.data import check_forget_set, check_overlap, load_items, parse_mapping

    cols = parse_mapping(mapping) if mapping else None
    if forget is None:
        if ref is None:
            raise ObliviateError("--forget is required unless the model is world:PRESET")
        from obliviate.world import get_world

        world = get_world(ref.preset, ref.seed)
        return world.forget_train(ref.split), world.retain_train(ref.split)
    forget_items = load_items(forget, "qa", cols)
    check_forget_set(forget_items, forget)
    retain_items = load_items(retain, "qa", cols) if retain else []
    for line in check_overlap(forget_items, retain_items, forget, retain or "", strict=strict):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    return forget_items, retain_items


def run_unlearn(method: str, model_spec: str, out: Path, forget: str | None = None, retain: str | None = None,
                split: str = "forget10", overrides: list[str] | None = None, config_file: Path | None = None,
                mapping: list[str] | None = None, strict: bool = False, resume: bool = False,
                progress: bool = True, lora: str | None = None, merge: bool = False) -> dict[str, Any]:
    """Unlearn `model_spec` with `method` into run directory `out`."""
    from obliviate.config import build_config, parse_overrides, read_config_file
    from obliviate.data import data_hash
    from obliviate.methods import get_method
    from obliviate.models.loading import save_model
    from obliviate.models.lora import apply_lora, parse_lora
    from obliviate.runs import write_artifact, write_config, write_intervention_artifact
    from obliviate.workflow import load_model_spec, parse_world_spec

    cls = get_method(method)
    values = read_config_file(config_file) if config_file else {}
    values.update(parse_overrides(overrides or []))
    config = build_config(cls.Config, values, source=str(config_file) if config_file and not overrides else "--set")
    ref = parse_world_spec(model_spec, split)
    forget_items, retain_items = _load_sets(forget, retain, ref, mapping or [], strict)
    lora_spec = parse_lora(lora) if lora else None
    inference_time = getattr(cls, "produces", "weights") == "intervention"
    if inference_time and lora_spec is not None:
        raise ObliviateError(f"--lora does not apply to {method}: it leaves the weights frozen")
    model, tok, ref = load_model_spec(model_spec, split, progress=progress)
    base_path = getattr(model, "name_or_path", None) or model.config._name_or_path
    if lora_spec is not None:
        model = apply_lora(model, lora_spec)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = cls(config).unlearn(model, tok, forget_items, retain_items, out, progress=progress, resume=resume)
    seconds = time.perf_counter() - t0
    summary = {**summary, "seconds": seconds, "peak_memory_mb": peak_memory_mb()}
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return summary  # under `accelerate launch`, the main process writes the run
    if inference_time:  # unlearn() saved out/intervention; the run points at the untouched base model
        write_intervention_artifact(out, str(base_path), method, summary["intervention"])
    elif lora_spec is not None and not merge:
        model.save_pretrained(out / "adapter")
        tok.save_pretrained(out / "adapter")
        write_artifact(out, "adapter", path="adapter", base_model=str(base_path), method=method)
    else:
        if lora_spec is not None:
            model = model.merge_and_unload()
        save_model(model, tok, out / "model")
        write_artifact(out, "weights", path="model", method=method)
    write_config(out, {"method": method, "method_config": config.model_dump(), "model": model_spec,
                       "world": ref.as_dict() if ref else None, "forget": forget, "retain": retain,
                       "lora": lora, "merged": merge,
                       "data_hashes": {"forget": data_hash(forget_items), "retain": data_hash(retain_items)},
                       "unlearn": summary})
    if isinstance(summary.get("classifier"), dict):  # eco, guard and gated prefix methods
        from obliviate.runs import write_classifier_report

        write_classifier_report(out, summary["classifier"])
    return summary


@app.command()
def unlearn(
    method: Annotated[str, typer.Option("--method", "-m", help="method name (see `obliviate methods`)")],
    model: Annotated[str, typer.Option(help="world:PRESET[@SEED][:ARCH], a run dir, a local HF dir or a hub name")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    forget: Annotated[str | None, typer.Option(help="forget set file/dir/hub name (QA schema)")] = None,
    retain: Annotated[str | None, typer.Option(help="retain set file/dir/hub name (QA schema)")] = None,
    split: Split = "forget10",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")] = None,
    config: Annotated[Path | None, typer.Option(help="method config file (.yaml/.toml/.json)")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="column mapping, e.g. question=prompt")] = None,
    strict: Annotated[bool, typer.Option(help="make forget/retain overlap an error")] = False,
    resume: Annotated[bool, typer.Option(help="continue a stopped run from its last checkpoint")] = False,
    lora: Annotated[str | None, typer.Option(help="train a LoRA adapter: r=8,alpha=16,targets=all-linear")] = None,
    merge: Annotated[bool, typer.Option(help="with --lora: save merged full weights, not the adapter")] = False,
    ref: Annotated[str | None, typer.Option(
        help="reference model π_ref (NPO, KL, IdkDPO, ...): adapter (LoRA switched off), precompute (cache its "
             "forget-set log-probs once, no model held), copy (a frozen copy) or auto")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Unlearn a forget set from a model; writes a run directory."""
    if ref is not None:
        from typing import get_args

        from obliviate.methods import get_method
        from obliviate.train.reference import RefMode

        if ref not in get_args(RefMode):
            raise ObliviateError(f"--ref {ref}: choose one of {', '.join(get_args(RefMode))}")
        if "ref" not in get_method(method).Config.model_fields:
            raise ObliviateError(f"--ref: method '{method}' uses no reference model")
        set_ = [*(set_ or []), f"ref={ref}"]
    summary = run_unlearn(method, model, out, forget, retain, split, set_, config, map_, strict, resume,
                          progress=not as_json, lora=lora, merge=merge)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if as_json:
        return _print_json({"run": str(out), **summary})
    cut = summary.get("truncated", {})
    if any(cut.values()):
        console.print(f"[yellow]note:[/] truncated to max_length: {cut.get('forget', 0)} forget and "
                      f"{cut.get('retain', 0)} retain items")
    if isinstance(summary.get("classifier"), dict):
        from obliviate.interventions.classifier import report_table

        table = report_table(summary["classifier"])
        if table is not None:
            console.print(table)
    console.print(f"unlearned with {method} in {summary['train_seconds']:.1f}s, {summary['steps']} steps; "
                  f"run directory: {out}\nnext: obliviate eval {out}")


# -- eval --------------------------------------------------------------------------------------------

def _eval_sets(target_ref, forget, retain, utility, holdout, mapping):
    from obliviate.data import load_items, parse_mapping
    from obliviate.workflow import EvalSets, world_eval_sets

    if forget is None:
        if target_ref is None:
            raise ObliviateError("--forget and --retain are required unless the model comes from the world")
        return world_eval_sets(target_ref)
    cols = parse_mapping(mapping) if mapping else None
    if retain is None:
        raise ObliviateError("--retain is required with --forget")
    util = {}
    for spec in utility or []:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ObliviateError(f"--utility {spec!r}: expected NAME=PATH")
        util[name] = load_items(path, "qa", cols)
    return EvalSets(load_items(forget, "qa", cols), load_items(retain, "qa", cols), util,
                    load_items(holdout, "qa", cols) if holdout else None)


def eval_lm_eval(target: str, tasks: str, limit: int | None, include: Path | None, fewshot: int | None,
                 split: str, out: Path | None, as_json: bool, unused: dict[str, Any]) -> dict[str, Any]:
    """`eval --lm-eval TASKS`: lm-evaluation-harness tasks on the target model, instead of the qa suite."""
    from obliviate.evals.lm_eval import RESULTS_FILE, load_task_manager, run_lm_eval, task_list
    from obliviate.runs import is_run_dir
    from obliviate.workflow import load_model_spec

    for flag, value in unused.items():
        if value:
            raise ObliviateError(f"{flag} is not used with --lm-eval (the harness's tasks bring their own data)")
    if out is None:
        if not is_run_dir(target):
            raise ObliviateError("--out is required when the target is not a run directory")
        out = Path(target)
    names = task_list(tasks)
    manager = load_task_manager(names, include)  # unknown tasks fail before any model loads
    model, tok, _ = load_model_spec(target, split, progress=not as_json)
    metrics = run_lm_eval(model, tok, names, out, limit=limit, include_path=include, num_fewshot=fewshot,
                          manager=manager)
    if as_json:
        _print_json(metrics)
        return metrics
    table = Table("task", "metric", "value", "± stderr", "samples", title="lm-evaluation-harness")
    for task, row in metrics.items():
        for key, value in row.items():
            if key == "samples" or key.endswith("_stderr") or "_stderr/" in key:
                continue
            metric, _, filt = key.partition("/")
            stderr = row.get(f"{metric}_stderr/{filt}" if filt else f"{metric}_stderr")
            table.add_row(task, key, _fmt(value), _fmt(stderr), str(row.get("samples", "")))
    console.print(table)
    console.print(f"results: {out / RESULTS_FILE}")
    return metrics


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
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model or run with the qa suite (TOFU-style), against an oracle when one is given.

    With --lm-eval, run lm-evaluation-harness tasks on the model (general utility) instead.
    """
    from obliviate.runs import is_run_dir
    from obliviate.workflow import (
        cached_world_eval,
        evaluate,
        load_model_spec,
        oracle_truth_ratios,
        parse_world_spec,
        world_models,
    )

    if lm_eval is not None:  # general utility through lm-evaluation-harness (see obliviate/evals/lm_eval.py)
        eval_lm_eval(target, lm_eval, lm_eval_limit, lm_eval_include, lm_eval_fewshot, split, out, as_json,
                     unused={"--suite": suite if suite != "qa" else None, "--forget": forget, "--retain": retain,
                             "--utility": utility, "--holdout": holdout, "--oracle": oracle, "--world": world,
                             "--map": map_, "--no-generate": no_generate})
        return
    for flag, value in (("--lm-eval-limit", lm_eval_limit), ("--lm-eval-include", lm_eval_include),
                        ("--lm-eval-fewshot", lm_eval_fewshot)):
        if value is not None:
            raise ObliviateError(f"{flag} needs --lm-eval TASKS")
    if suite == "text":  # MUSE-style; --forget names MUSE-format data (see obliviate/cli_text.py)
        from obliviate.cli_text import eval_text

        eval_text(target, forget, oracle, split, world, out, not no_generate, as_json,
                  unused={"--retain": retain, "--utility": utility, "--holdout": holdout, "--map": map_})
        return
    if suite == "labels":  # the labelled-text review task (see obliviate/cli_labels.py)
        from obliviate.cli_labels import eval_labels

        eval_labels(target, world, oracle, out, as_json,
                    unused={"--forget": forget, "--retain": retain, "--utility": utility, "--holdout": holdout})
        return
    if suite != "qa":
        raise ObliviateError(f"unknown suite '{suite}' (available: qa, text, labels)")
    model, tok, ref = load_model_spec(target, split, progress=not as_json)
    if world is not None:
        ref = parse_world_spec(f"world:{world}", split)
    sets = _eval_sets(ref, forget, retain, utility, holdout, map_)
    oracle_tr = None
    if oracle is not None:
        if Path(oracle).is_dir() and (Path(oracle) / "items.jsonl").exists():
            oracle_tr = oracle_truth_ratios(oracle)
        else:
            omodel, otok, _ = load_model_spec(oracle, split, progress=False)
            oracle_tr = evaluate(omodel, otok, sets, None, generate=False)["_forget_truth_ratios"]
    elif ref is not None and forget is None:
        models = world_models(ref, which=("target", "oracle"), progress=not as_json)
        oracle_tr = cached_world_eval(ref, "oracle", models.oracle, sets)["_forget_truth_ratios"]
    if out is None:
        if not is_run_dir(target):
            raise ObliviateError("--out is required when the target is not a run directory")
        out = Path(target)
    payload = evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, generate=not no_generate,
                       config={"target": target, "oracle": oracle})
    payload.pop("_forget_truth_ratios")
    if as_json:
        return _print_json(payload)
    console.print(side_by_side({Path(target).name or target: payload["aggregates"]}, "qa suite"))
    console.print(f"results: {out / 'results.json'}")


# -- demo --------------------------------------------------------------------------------------------

@app.command()
def demo(
    preset: Preset = "small",
    seed: Seed = 0,
    split: Split = "forget10",
    method: Annotated[str, typer.Option(help="unlearning method")] = "graddiff",
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/demo"),
    as_json: JsonOpt = False,
) -> None:
    """Unlearn forget10 from the built-in world's model and compare it with the exact-retrain oracle."""
    from obliviate.runs import load_run_model
    from obliviate.workflow import WorldRef, cached_world_eval, evaluate, world_eval_sets, world_models

    t0 = time.perf_counter()
    ref = WorldRef(preset, seed, split)
    progress = not as_json
    if progress:
        console.print(f"[bold]1/3[/] world '{preset}' (seed {seed}): target and exact-retrain oracle")
    models = world_models(ref, which=("target", "oracle"), progress=progress)
    sets = world_eval_sets(ref)
    oracle_eval = cached_world_eval(ref, "oracle", models.oracle, sets)
    oracle_tr = oracle_eval["_forget_truth_ratios"]
    target_eval = cached_world_eval(ref, "target", models.target, sets, oracle_tr)
    if progress:
        console.print(f"[bold]2/3[/] unlearning {split} with {method}")
    if out.exists():
        shutil.rmtree(out)
    run_unlearn(method, f"world:{preset}@{seed}", out, split=split, progress=progress)
    if progress:
        console.print("[bold]3/3[/] evaluating against the oracle")
    model, tok = load_run_model(out)
    unlearned = evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, config={"target": str(out)})
    columns = {"target": target_eval["aggregates"], method: unlearned["aggregates"],
               "oracle (retrain)": oracle_eval["aggregates"]}
    if as_json:
        return _print_json({"run": str(out), "seconds": time.perf_counter() - t0, "models": columns})
    console.print(side_by_side(columns, f"world:{preset}@{seed} {split} — {method} vs target vs oracle"))
    console.print(f"run directory: {out}  ({time.perf_counter() - t0:.0f}s)\n"
                  "↑/↓: higher/lower is better; forget quality near 1 means indistinguishable from the oracle.")
