"""The skill task on the command line: `obliviate skills ...` and `eval --suite skill`.

    obliviate skills build --task tiny@0                         # the skill model (trained once, cached)
    obliviate skills export data/ --task tiny@0/arithmetic       # forget.jsonl, retain.jsonl, test_<skill>.jsonl
    obliviate skills bench --task small@0/arithmetic --out runs/skills
    obliviate eval RUN --suite skill --world tiny@0/arithmetic

A task is `PRESET[@SEED][/SKILL]` (`workflow/skills.py`); SKILL is the one to forget (arithmetic,
copy or facts). `export` writes the sets any method can unlearn from the CLI: `obliviate unlearn
--method neuron_adjust --model SKILL_MODEL_DIR --forget data/forget.jsonl --retain data/retain.jsonl
--defaults world --out runs/na`. `eval --suite skill` scores a run (or `skills`, the skill model) on
the test halves and writes `skill_results.json` beside the other suites' files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from obliviate.cli.app import JsonOpt, app, console, print_json

skills_app = typer.Typer(no_args_is_help=True, help="The built-in skill task: forget one skill, keep the others.")
app.add_typer(skills_app, name="skills")

Task = Annotated[str, typer.Option(help="skill task: PRESET[@SEED][/SKILL], SKILL the one to forget")]


def skill_table(rows: dict[str, dict[str, Any]], title: str) -> Table:
    """One row per model: accuracy (and abstention) per skill."""
    skills = list(next(iter(rows.values()))["skills"])
    table = Table("model", *[f"{s} acc / abst" for s in skills], title=title)
    for name, payload in rows.items():
        table.add_row(name, *[f"{payload['skills'][s]['accuracy']:.2f} / {payload['skills'][s]['abstention']:.2f}"
                              for s in skills])
    return table


@skills_app.command("build")
def skills_build(task: Task = "tiny@0") -> None:
    """Train (or reuse) the skill model of a world preset."""
    from obliviate.workflow.skills import parse_skill_spec
    from obliviate.world.skills import build_skill_model

    ref = parse_skill_spec(task)
    console.print(f"skill model: {build_skill_model(ref.preset, ref.seed, progress=True)}")


@skills_app.command("export")
def skills_export(out: Path, task: Task = "tiny@0/arithmetic") -> None:
    """Write the forget and retain sets (fit halves) and each skill's test half as QA JSON Lines."""
    from obliviate.io import write_jsonl
    from obliviate.workflow.skills import parse_skill_spec
    from obliviate.world.skills import get_skills

    ref = parse_skill_spec(task)
    split = get_skills(ref.preset, ref.seed).split(ref.skill)
    sets = {"forget": split.forget, "retain": split.retain, **{f"test_{k}": v for k, v in split.tests.items()}}
    for name, items in sets.items():
        write_jsonl(out / f"{name}.jsonl", [it.to_dict() for it in items])
    console.print(f"wrote {', '.join(f'{n}.jsonl' for n in sets)} into {out}")


@skills_app.command("bench")
def skills_bench(out: Annotated[Path, typer.Option(help="directory for the runs and skill_bench.json")],
                 task: Task = "tiny@0/arithmetic",
                 methods: Annotated[str, typer.Option(help="comma-separated training-free methods")] =
                 "neuron_adjust,key_space_detection",
                 defaults: Annotated[str, typer.Option(help="the methods' defaults: world or paper")] = "world",
                 set_: Annotated[list[str] | None, typer.Option(
                     "--set", help="METHOD:KEY=VALUE, a config value of one method (repeatable)")] = None,
                 as_json: JsonOpt = False) -> None:
    """The skill model and each method side by side: accuracy / abstention per skill."""
    from obliviate.workflow.skills import parse_method_overrides, parse_skill_spec, skill_bench

    ref = parse_skill_spec(task)
    rows = skill_bench(ref, [m.strip() for m in methods.split(",") if m.strip()], out,
                       parse_method_overrides(set_ or []), progress=not as_json, defaults=defaults)
    if as_json:
        print_json({name: p["aggregates"] for name, p in rows.items()})
        return
    console.print(skill_table(rows, f"skill task {ref}: forget {ref.skill} (test halves)"))
    console.print(f"results: {out / 'skill_bench.json'}")


def eval_skill(target: str, world: str | None, out: Path | None, as_json: bool,
               unused: dict[str, Any] | None = None) -> dict[str, Any]:
    """`eval --suite skill`: score `target` (a run, a model, or `skills`) on the task's test halves."""
    from obliviate.errors import ObliviateError
    from obliviate.runs import is_run_dir
    from obliviate.workflow.skills import RESULTS, evaluate_skills, load_skill_target, parse_skill_spec

    for flag, value in (unused or {}).items():
        if value:
            raise ObliviateError(f"{flag} is not used by the skill suite (the skill task gives the sets)")
    if world is None:
        raise ObliviateError("the skill suite needs the task: --world PRESET[@SEED][/SKILL], e.g. tiny@0/arithmetic")
    if out is None and not is_run_dir(target):
        raise ObliviateError("--out is required when the target is not a run directory")
    ref = parse_skill_spec(world)
    where = Path(target) if out is None else out
    model, tok = load_skill_target(target, ref, progress=not as_json)
    payload = evaluate_skills(model, tok, ref, where, extra={"target": target})
    if as_json:
        print_json(payload)
    else:
        console.print(skill_table({Path(target).name or target: payload}, f"skill suite: {ref}"))
        console.print(f"results: {where / RESULTS}")
    return payload
