"""Studies of many runs: the bench grid, paired comparisons, world seeds, protocols and the demo."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from obliviate.api.core import _overrides
from obliviate.api.types import BenchResult, Run
from obliviate.errors import ConfigError


def _csv(value: str | Sequence[Any]) -> str:
    return value if isinstance(value, str) else ",".join(str(v) for v in value)


def bench(methods: str | Sequence[str], *, out: str | Path, world: str = "small",
          forget: str | Sequence[str] = "forget10", seeds: int | str | Sequence[int] = 3,
          attacks: str | Sequence[str] | None = None, model: str | None = None, retain: str | None = None,
          oracle: str | None = None, holdout: str | None = None, utility: Mapping[str, str] | None = None,
          overrides: Sequence[str] | Mapping[str, Any] | None = None, jobs: int = 1, threads: int = 0,
          max_retain: int | None = None, generate: bool = True, keep_models: bool = True,
          redo_stale: bool = False, report: bool = True, progress: bool = True,
          log: Callable[[str], None] | None = None, report_to: str | Sequence[str] | None = None,
          data: str | None = None, force: bool = False) -> BenchResult:
    """Run methods × forget splits × seeds, each unlearned and evaluated against the oracle (and attacked).

    Resumable: the same call again keeps finished cells and redoes the rest. On the built-in world,
    `forget` names splits; with `model=` (your own model), it names forget files (PATH or LABEL=PATH).
    `report_to` logs each cell's training and final metrics to experiment trackers, one tracker run per
    cell (`obliviate.tracking`).
    `data="tofu:forget10@DIR"` (with `model=`) benchmarks on a named benchmark instead: its training
    sets, its evaluation sets and its own suite (`muse:...` the text suite, `wmdp` lm-evaluation-harness).
    A non-empty `out` that is not a bench is refused before any work, unless `force`.

        board = ob.bench(["ga", "npo"], world="tiny", seeds=2, out="bench/b1")
        board.to_pandas()
    """
    from obliviate.grid.extras import parse_attacks
    from obliviate.grid.runner import run_bench
    from obliviate.grid.spec import (
        BENCH_FILE,
        BenchSpec,
        parse_forget_files,
        parse_methods,
        parse_seeds,
        parse_world_splits,
        scope_overrides,
    )
    from obliviate.io import check_out_dir
    from obliviate.tracking import parse_report_to

    check_out_dir(out, (BENCH_FILE,), force)  # before any work: a file, or a directory of the user's
    names = parse_methods(_csv(methods), moe=model is None and world.partition(":")[2] == "moe")
    if model is None and (retain or oracle or holdout or utility):
        raise ConfigError("--retain, --oracle, --holdout and --utility go with --model (your own model and data)")
    if model is not None and model.startswith("world:"):
        raise ConfigError("--model world:...: use --world PRESET for the built-in world")
    if max_retain is not None and max_retain < 1:
        raise ConfigError("--max-retain must be at least 1")
    if data is not None:
        return _bench_data(names, data, out=out, forget=forget, seeds=seeds, attacks=attacks, model=model,
                           retain=retain, oracle=oracle, holdout=holdout, utility=utility, overrides=overrides,
                           jobs=jobs, threads=threads, max_retain=max_retain, generate=generate,
                           keep_models=keep_models, redo_stale=redo_stale, report=report, progress=progress, log=log,
                           report_to=parse_report_to(report_to), force=force)
    user, forget_s = model is not None, _csv(forget)
    spec = BenchSpec(
        methods=names,
        splits=list(parse_forget_files(forget_s)) if user else parse_world_splits(forget_s),
        seeds=parse_seeds(str(seeds) if isinstance(seeds, int | str) else _csv(seeds)),
        world=None if user else world,
        model=model,
        forget_files=parse_forget_files(forget_s) if user else {},
        retain=retain, oracle=oracle, holdout=holdout,
        utility=dict(utility or {}),
        overrides=scope_overrides(names, _overrides(overrides)),
        attacks=parse_attacks(None if attacks is None else _csv(attacks)),
        max_retain=max_retain, generate=generate, keep_models=keep_models, threads=threads,
        report_to=parse_report_to(report_to),
    )
    outcome = run_bench(spec, Path(out), jobs=jobs, progress=progress, log=log, report=report,
                        redo_stale=redo_stale, force=force)
    board = BenchResult.load(outcome.root)
    board.total, board.ran, board.kept, board.failed = outcome.total, outcome.ran, outcome.kept, outcome.failed
    board.seconds, board.files = outcome.seconds, outcome.files
    return board


def _bench_data(names: list[str], data: str, *, out, forget, seeds, attacks, model, retain, oracle, holdout,
                utility, overrides, jobs, threads, max_retain, generate, keep_models, redo_stale, report, progress,
                log, report_to, force) -> BenchResult:
    """`bench(data=SPEC)`: one split, the benchmark's, read and checked before any cell runs."""
    from obliviate.grid.extras import parse_attacks
    from obliviate.grid.runner import run_bench
    from obliviate.grid.spec import BenchSpec, parse_seeds, scope_overrides
    from obliviate.workflow import data as specs

    if model is None:
        raise ConfigError("--data needs --model: the model to unlearn (world models take --world PRESET)")
    if retain or holdout or utility or _csv(forget) != "forget10":
        raise ConfigError("--data names the benchmark's sets: leave out --forget, --retain, --holdout and --utility")
    spec_d = specs.parse_data_spec(data)
    if spec_d.benchmark == "world":
        raise ConfigError(f"--data {data}: for the built-in world use --world PRESET --forget SPLIT")
    specs.train_sets(spec_d)  # a missing file or column fails here, in one line, before any cell runs
    if spec_d.suite == "qa":
        specs.eval_sets(spec_d)
    elif spec_d.suite == "text":
        from obliviate.data.adapters.muse import load_muse

        load_muse(specs.source(spec_d))
    elif spec_d.path:
        from obliviate.data.adapters.wmdp import wmdp_mc_files
        from obliviate.evals.wmdp import has_local_questions

        if has_local_questions(specs.source(spec_d)):
            wmdp_mc_files(specs.source(spec_d))
    spec = BenchSpec(methods=names, splits=[spec_d.label], seeds=parse_seeds(str(seeds) if isinstance(seeds, int | str)
                                                                              else _csv(seeds)),
                     world=None, model=model, oracle=oracle, overrides=scope_overrides(names, _overrides(overrides)),
                     attacks=parse_attacks(None if attacks is None else _csv(attacks)), max_retain=max_retain,
                     generate=generate, keep_models=keep_models, threads=threads, data=specs.record(spec_d),
                     report_to=report_to)
    outcome = run_bench(spec, Path(out), jobs=jobs, progress=progress, log=log, report=report, redo_stale=redo_stale,
                        force=force)
    board = BenchResult.load(outcome.root)
    board.total, board.ran, board.kept, board.failed = outcome.total, outcome.ran, outcome.kept, outcome.failed
    board.seconds, board.files = outcome.seconds, outcome.files
    return board


def compare(run_a: str | Path | Run, run_b: str | Path | Run, *, metrics: Sequence[str] | None = None,
            all_metrics: bool = False, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Paired tests of run B against run A on their shared items: is the difference real?

    Returns {"paired": [one row per metric: means, B − A with its bootstrap CI, Wilcoxon and Holm
    p-values, verdict], "aggregate_only": [...], ...}.

        result = ob.compare("runs/gd", "runs/npo", metrics=["forget/*"])
    """
    from obliviate.comparison import compare_runs

    if n_boot < 1 or not 0 < alpha < 1:
        raise ConfigError("need --n-boot >= 1 and 0 < --alpha < 1")
    return compare_runs(Path(run_a), Path(run_b), metrics=metrics, all_metrics=all_metrics, n_boot=n_boot,
                        alpha=alpha, seed=seed)


def seeds(model: str | None = None, *, runs: Sequence[str | Path] | None = None, method: str | None = None,
          n: int = 3, split: str = "forget10", overrides: Sequence[str] | Mapping[str, Any] | None = None,
          out: str | Path | None = None, generate: bool = True, progress: bool = True,
          log: Callable[[str], None] | None = None, max_retain: int | None = None) -> dict[str, Any]:
    """Mean, sd and 95% interval over world seeds: run `n` seeds of `model` (world:PRESET), or aggregate `runs`.

        summary = ob.seeds("world:tiny", method="graddiff", n=2, out="runs/seeds")
        summary["metrics"]["model_utility"]["mean"]
    """
    from obliviate.comparison import aggregate_runs, run_seeds
    from obliviate.io import write_json
    from obliviate.workflow import parse_world_spec

    if runs and model:
        raise ConfigError("give either RUNS to aggregate or --model world:PRESET to run seeds, not both")
    if runs:
        summary = aggregate_runs([Path(r) for r in runs])
        if out is not None:
            write_json(Path(out) / "seeds.json", summary)
        return summary
    if not model:
        raise ConfigError("give evaluated RUNS to aggregate, or --model world:PRESET --n N --out DIR to run seeds")
    if out is None:
        raise ConfigError("--out is required to run seeds")
    if n < 1:
        raise ConfigError("--n must be at least 1")
    if max_retain is not None and max_retain < 1:
        raise ConfigError("--max-retain must be at least 1")
    ref = parse_world_spec(model)
    first = ref.seed if ref is not None else 0
    return run_seeds(model, list(range(first, first + n)), Path(out), method=method, split=split,
                     overrides=_overrides(overrides), generate=generate, progress=progress, log=log,
                     max_retain=max_retain)


def protocol(name: str, method: str, *, out: str | Path, model: str = "world:small",
             splits: Sequence[str] | str = ("forget01", "forget05", "forget10"),
             overrides: Sequence[str] | Mapping[str, Any] | None = None, max_items: int | None = None,
             generate: bool = True, references: bool = True, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Scalability (growing nested forget sets) or sustainability (disjoint requests in turn), with plots.

        result = ob.protocol("scalability", "graddiff", model="world:tiny", out="runs/scale")
    """
    from obliviate.errors import ObliviateError
    from obliviate.protocols import plan_protocol, run_protocol

    split_list = [s.strip() for s in (splits.split(",") if isinstance(splits, str) else splits) if s.strip()]
    plan = plan_protocol(name, model, method, split_list, overrides=_overrides(overrides), generate=generate,
                         max_items=max_items, references=references)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ObliviateError(f"--out {out} is a file; give a directory")
    return run_protocol(plan, out, progress=progress, log=log)


def demo(preset: str = "small", seed: int = 0, split: str = "forget10", method: str = "graddiff",
         out: str | Path = "runs/demo", progress: bool = True,
         log: Callable[[str], None] | None = None,
         overrides: Sequence[str] | Mapping[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """The whole story on the built-in world: target, unlearned and oracle side by side.

    Returns {"run", "seconds", "models": {"target": aggregates, METHOD: aggregates, "oracle (retrain)": ...}}.

        story = ob.demo("tiny", method="graddiff", out="runs/demo")
    """
    from obliviate.workflow.demo import run_demo

    return run_demo(preset, seed, split, method, Path(out), progress=progress, log=log,
                    overrides=_overrides(overrides), force=force)
