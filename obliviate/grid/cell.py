"""The work of one bench cell, run in its own process (`run_cell`).

A method cell unlearns with `workflow.run_unlearn` into `CELL/run`, evaluates the run with the qa
suite against its world's oracle (`workflow.evaluate`), scores PrivLeak when the text suite is
installed, runs the attacks when asked, then writes `result.json` and, last, `COMPLETE`. An
anchors cell evaluates the target and the oracle on the same sets (`workflow.cached_world_eval`
on the built-in world, so a second bench on the same world reuses them).

Each cell runs in a fresh child process: its peak memory is its own (the peak resident set is reset
when the cell starts), a crash or a leak in one method cannot spoil the next, and a killed bench
kills its cells with it. Everything the cell prints goes to `CELL/log.txt`.
"""

from __future__ import annotations

import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Imported here, before the runner forks, so every cell starts with them loaded.
import numpy as np
import torch

import obliviate.evals.qa  # noqa: F401
import obliviate.methods  # noqa: F401
import obliviate.workflow.unlearning  # noqa: F401  (the unlearn workflow)
from obliviate import metrics as M
from obliviate import tracking
from obliviate.errors import ObliviateError
from obliviate.grid import extras
from obliviate.grid.spec import COMPLETE, ERROR, RESULT, BenchSpec, Cell
from obliviate.io import read_json, write_json
from obliviate.workflow import EvalSets

extras.preload()


def run_cell(spec_dict: dict[str, Any], cell: Cell, root: str, parent_pid: int) -> None:
    """Child-process entry point: do the cell, or leave error.json and exit non-zero."""
    t0 = time.perf_counter()
    _die_with_parent(parent_pid)
    spec, path = BenchSpec.from_dict(spec_dict), cell.path(Path(root))
    path.mkdir(parents=True, exist_ok=True)
    _redirect_output(path / "log.txt")
    _reset_peak_memory()
    if spec.threads or spec.on_world:
        torch.set_num_threads(spec.threads or 1)  # tiny world models only lose time to intra-op threads
    code = 0
    try:
        with tracking.session(spec.report_to, cell.label.replace(" ", "-"), Path(root),
                              {"cell": cell.label, "method": cell.method, "split": cell.split, "seed": cell.seed,
                               "overrides": [] if cell.is_anchor else spec.method_overrides(cell.method, cell.seed)}):
            result = run_anchors(spec, cell) if cell.is_anchor else run_method(spec, cell, path)
            _log_result(result)
        write_json(path / RESULT, {"kind": "anchors" if cell.is_anchor else "method", "method": cell.method,
                                   "split": cell.split, "seed": cell.seed, **result,
                                   "cell_seconds": time.perf_counter() - t0, "cell_cpu_seconds": _cpu_seconds()})
        write_json(path / COMPLETE, {"fingerprint": spec.fingerprint(cell),
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except ObliviateError as exc:
        print(f"error: {exc}")
        write_json(path / ERROR, {"error": str(exc)})
        code = 2
    except BaseException as exc:  # noqa: BLE001  (any crash becomes the cell's error, never the bench's)
        traceback.print_exc()
        write_json(path / ERROR, {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the parent's atexit handlers, inherited by fork


def _log_result(result: dict[str, Any]) -> None:
    """The cell's final numbers to its tracker run (nothing without --report-to)."""
    for role in ("target", "oracle"):
        if isinstance(result.get(role), dict):
            tracking.log_metrics(result[role].get("aggregates") or {}, prefix=f"eval/{role}")
    tracking.log_metrics(result.get("aggregates") or {})
    tracking.log({f"unlearn/{k}": v for k, v in (result.get("unlearn") or {}).items()})
    tracking.log({"attacks/robustness": (result.get("attacks") or {}).get("robustness")})


# -- process hygiene ------------------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this cell when the bench process dies (a killed bench leaves no orphan cells)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _redirect_output(log: Path) -> None:
    """Send this process's stdout and stderr (Python's and native code's) to the cell's log."""
    handle = open(log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115  (lives as long as the process)
    for fd in (1, 2):
        os.dup2(handle.fileno(), fd)
    sys.stdout = sys.stderr = handle


def _cpu_seconds() -> float:
    """CPU time of this process so far (user + system); a forked cell starts from zero."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_memory() -> None:
    """Start the peak resident set size afresh (Linux), so the cell's peak memory is the cell's own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# -- evaluation sets ----------------------------------------------------------------------------------------

def eval_sets(spec: BenchSpec, cell: Cell) -> EvalSets:
    """The sets every model of a (split, seed) is evaluated on: the world's, or the user's files."""
    from obliviate.data import load_items

    if spec.data:
        from obliviate.workflow.data import eval_sets as data_eval_sets
        from obliviate.workflow.data import parse_data_spec

        return data_eval_sets(parse_data_spec(spec.data))
    if spec.on_world:  # the same sets as `obliviate seeds --max-retain` evaluates on
        from obliviate.workflow import world_eval_sets

        return world_eval_sets(world_ref(spec, cell), max_retain=spec.max_retain)
    retain = load_items(spec.retain, "qa")
    if spec.max_retain is not None and spec.max_retain < len(retain):
        keep = sorted(random.Random("obliviate-bench-retain").sample(range(len(retain)), spec.max_retain))
        retain = [retain[i] for i in keep]
    return EvalSets(load_items(spec.forget_files[cell.split], "qa"), retain,
                    {name: load_items(path, "qa") for name, path in spec.utility.items()},
                    load_items(spec.holdout, "qa") if spec.holdout else None)


def world_ref(spec: BenchSpec, cell: Cell):
    from obliviate.workflow import parse_world_spec

    return parse_world_spec(spec.world_spec(cell.seed), cell.split)


# -- anchors ---------------------------------------------------------------------------------------------------

def run_anchors(spec: BenchSpec, cell: Cell) -> dict[str, Any]:
    """Target and oracle on the cell's sets: their aggregates, and what method cells need from the oracle."""
    if _other_suite(spec):
        return {"target": _benchmark_score(spec, spec.model, None), "oracle": None}
    sets = eval_sets(spec, cell)
    if spec.on_world:
        target, oracle = _world_anchors(spec, cell, sets)
    else:
        target, oracle = _user_anchors(spec, sets)
    return {"target": target, "oracle": oracle, "data_hashes": sets.hashes()}


def _other_suite(spec: BenchSpec) -> bool:
    """Whether the bench's benchmark is scored by a suite other than the qa suite (MUSE, WMDP)."""
    from obliviate.workflow.data import parse_data_spec

    return bool(spec.data) and parse_data_spec(spec.data).suite != "qa"


def _benchmark_score(spec: BenchSpec, model_spec: str, out_dir: Path | None) -> dict[str, Any]:
    """A model (spec) scored by its benchmark's own suite (`workflow.suites.score_benchmark`)."""
    from obliviate.workflow import load_model_spec
    from obliviate.workflow.suites import score_benchmark

    model, tok, _ = load_model_spec(model_spec, progress=False)
    payload = score_benchmark(model, tok, spec.data, out_dir, generate=spec.generate)
    return {"aggregates": payload["aggregates"], "eval_seconds": payload.get("eval_seconds")}


def _world_anchors(spec: BenchSpec, cell: Cell, sets: EvalSets) -> tuple[dict, dict]:
    from obliviate.models.loading import load_model
    from obliviate.workflow import cached_world_eval, world_models

    ref = world_ref(spec, cell)
    models = world_models(ref, which=("target", "oracle"), progress=True)
    oracle_eval = cached_world_eval(ref, "oracle", models.oracle, sets)
    oracle_tr = np.asarray(oracle_eval["_forget_truth_ratios"], dtype=float)
    target_eval = cached_world_eval(ref, "target", models.target, sets, oracle_tr)
    oracle = {"aggregates": with_self_forget_quality(oracle_eval["aggregates"], oracle_tr),
              "forget_truth_ratios": oracle_tr.tolist(), "eval_seconds": oracle_eval.get("eval_seconds")}
    target = {"aggregates": target_eval["aggregates"], "eval_seconds": target_eval.get("eval_seconds")}
    if extras.text_suite_available():
        data = extras.world_privleak_data(ref, cell.split)
        oracle["text"], oracle["privleak_scores"] = extras.oracle_privleak(*load_model(models.oracle), data)
        target["text"] = extras.privleak(*load_model(models.target), data, oracle["privleak_scores"])
    return target, oracle


def with_self_forget_quality(aggregates: dict, oracle_tr) -> dict:
    """The oracle's forget quality against itself (1 by definition), so it plots as the anchor it is."""
    tr = np.asarray(oracle_tr, dtype=float)
    tr = tr[np.isfinite(tr)]
    if tr.size == 0:  # no truth ratios (items without perturbed answers): no forget quality at all
        return aggregates
    fq = M.forget_quality(tr, tr)
    return {**aggregates, "forget_quality": {"value": fq["forget_quality"], "ks_statistic": fq["ks_statistic"],
                                             "n": fq["n_model"], "n_oracle": fq["n_oracle"], "higher_is_better": True}}


def _user_anchors(spec: BenchSpec, sets: EvalSets) -> tuple[dict, dict | None]:
    from obliviate.workflow import evaluate, load_model_spec, oracle_truth_ratios

    oracle: dict | None = None
    oracle_tr = None
    if spec.oracle is not None:
        opath = Path(spec.oracle)
        if opath.is_dir() and (opath / "items.jsonl").exists():  # saved per-item results stand in for the model
            oracle_tr = oracle_truth_ratios(opath)
            saved = read_json(opath / "results.json") if (opath / "results.json").exists() else {}
            oracle = {"aggregates": saved.get("aggregates", {})}
        else:
            omodel, otok, _ = load_model_spec(spec.oracle, progress=False)
            payload = evaluate(omodel, otok, sets, None, generate=spec.generate)
            oracle_tr = payload["_forget_truth_ratios"]
            oracle = {"aggregates": payload["aggregates"]}
        oracle_tr = np.asarray(oracle_tr, dtype=float)
        oracle["aggregates"] = with_self_forget_quality(oracle["aggregates"], oracle_tr)
        if np.isfinite(oracle_tr).any():
            oracle["forget_truth_ratios"] = oracle_tr.tolist()
        else:
            oracle_tr = None  # nothing to compare with: no forget quality for any model
    model, tok, _ = load_model_spec(spec.model, progress=False)
    payload = evaluate(model, tok, sets, None, oracle_forget_tr=oracle_tr, generate=spec.generate)
    return {"aggregates": payload["aggregates"], "eval_seconds": payload["eval_seconds"]}, oracle


# -- a method ----------------------------------------------------------------------------------------------------

def run_method(spec: BenchSpec, cell: Cell, path: Path) -> dict[str, Any]:
    """Unlearn, evaluate against the oracle, then PrivLeak and the attacks where available."""
    from obliviate.runs import load_run_model
    from obliviate.workflow import evaluate, run_unlearn

    anchors = _anchors_result(spec, cell, path)
    run_dir = path / "run"
    overrides = spec.method_overrides(cell.method, cell.seed)
    if spec.on_world:
        summary = run_unlearn(cell.method, spec.world_spec(cell.seed), run_dir, split=cell.split,
                              overrides=overrides, progress=True)
    elif spec.data:
        summary = run_unlearn(cell.method, spec.model, run_dir, data=spec.data, overrides=overrides, progress=True)
    else:
        summary = run_unlearn(cell.method, spec.model, run_dir, forget=spec.forget_files[cell.split],
                              retain=spec.retain, overrides=overrides, progress=True)
    if _other_suite(spec):
        scored = _benchmark_score(spec, str(run_dir), run_dir)
        result = {**scored, "run": "run",
                  "unlearn": {k: summary.get(k) for k in ("seconds", "train_seconds", "steps", "peak_memory_mb")}}
        if not spec.keep_models:
            _drop_weights(run_dir)
        return result
    sets = eval_sets(spec, cell)
    oracle = anchors.get("oracle") or {}
    oracle_tr = np.asarray(oracle["forget_truth_ratios"], dtype=float) if "forget_truth_ratios" in oracle else None
    model, tok = load_run_model(run_dir)
    payload = evaluate(model, tok, sets, run_dir, oracle_forget_tr=oracle_tr, generate=spec.generate,
                       config={"target": str(run_dir), "bench_cell": cell.label,
                               "eval_sets": {"max_retain": spec.max_retain}})
    result: dict[str, Any] = {
        "aggregates": payload["aggregates"], "eval_seconds": payload["eval_seconds"],
        "data_hashes": payload["data_hashes"], "run": "run",
        "unlearn": {k: summary.get(k) for k in ("seconds", "train_seconds", "steps", "peak_memory_mb")},
    }
    if spec.on_world and "privleak_scores" in oracle and extras.text_suite_available():
        data = extras.world_privleak_data(world_ref(spec, cell), cell.split)
        result["text"] = extras.privleak(model, tok, data, oracle["privleak_scores"], out_dir=run_dir)
    del model
    if spec.attacks:
        result["attacks"] = extras.run_attacks(spec.attacks, run_dir)
    if not spec.keep_models:
        _drop_weights(run_dir)
    return result


def _anchors_result(spec: BenchSpec, cell: Cell, path: Path) -> dict[str, Any]:
    from obliviate.grid.spec import cell_state

    root = path.parents[3]
    anchor = spec.anchor_of(cell)
    if cell_state(spec, anchor, root) != "complete":
        raise ObliviateError(f"the anchors cell ({anchor.label}) did not finish; see {anchor.path(root)}/log.txt")
    return read_json(anchor.path(root) / RESULT)


def _drop_weights(run_dir: Path) -> None:
    import shutil

    artifact = read_json(run_dir / "artifact.json")
    if artifact.get("kind") in ("weights", "adapter"):
        shutil.rmtree(run_dir / artifact.get("path", "model"), ignore_errors=True)
