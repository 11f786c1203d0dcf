"""Bench wall time as the world grows (tiny → small → full), and its growth exponent.

For each preset in `--presets`, the world's target and forget10 oracle are built and the target's
and oracle's evaluations cached first (untimed: a bench reuses both). Then a bench of `--methods`
× forget10 × one seed runs into a fresh directory (`run_bench`, without the HTML report), and two
times are taken:

- **bench**: the wall time of the whole bench (anchors from the cache, every method cell, the
  leaderboard);
- **cells**: the summed wall time of the method cells alone (unlearning, the qa suite, PrivLeak);
- **cells CPU**: their summed CPU time (user + system; each cell runs on one thread on the built-in
  world), which other work on a shared machine hardly changes.

Evaluated tokens: every token one evaluation puts through the model, i.e. each item's prompt with
each continuation it scores (answer, paraphrased answer, perturbed answers) over the forget, retain,
utility and holdout sets, plus the generation budget (32 new tokens) of each generated item, plus
the biography passages PrivLeak scores (forget, holdout and retain people) when the text suite is
installed. With `--repeats N` each preset's bench runs N times and the fastest run counts (the
least disturbed by other work on the machine).

The growth exponent is the least-squares slope b of log(time) on log(tokens): time ∝ tokens^b,
so b ≈ 1 means the bench grows linearly with the evaluated tokens. It is printed for each of the
three times; on a busy machine trust the CPU one. Beside it, an affine least-squares fit of the CPU
time, a + c·tokens, separates the fixed cost of the method cells (loading and saving models, the
process, unlearning steps that do not grow with the evaluation) from the cost per evaluated token;
a b well below 1 with a large a means the fixed cost still dominates at these sizes.

    python benchmarks/bench_scaling.py [--presets tiny,small,full] [--methods ga] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from obliviate.grid import BenchSpec, run_bench  # noqa: E402
from obliviate.grid.extras import text_suite_available  # noqa: E402
from obliviate.io import read_json  # noqa: E402

SPLIT = "forget10"
GENERATED_TOKENS = 32  # the qa suite's max_new_tokens


def evaluated_tokens(preset: str, seed: int) -> tuple[int, int]:
    """(items, tokens) of one qa-suite evaluation on the world's forget10 sets (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    from obliviate.models.prompts import encode_pair
    from obliviate.workflow import WorldRef, world_eval_sets, world_models

    ref = WorldRef(preset, seed, SPLIT)
    tok = PreTrainedTokenizerFast.from_pretrained(world_models(ref, which=(), progress=False).tokenizer)
    sets = world_eval_sets(ref)
    generated = [*sets.forget, *sets.retain, *[i for v in sets.utility.values() for i in v]]
    items = generated + list(sets.holdout or [])
    tokens = GENERATED_TOKENS * len(generated)
    for it in items:
        for answer in (it.answer, it.paraphrased_answer or it.answer, *it.perturbed_answers):
            prompt, ans = encode_pair(tok, it.question, answer)
            tokens += len(prompt) + len(ans)
    if text_suite_available():
        from obliviate.world import get_world

        world = get_world(preset, seed)
        pids = [*world.splits[SPLIT], *world.splits["holdout"], *world.retain_pids(SPLIT)]
        tokens += sum(len(ids) for ids in tok([p.text for p in world.passages(pids)])["input_ids"])
    return len(items), tokens


def warm(preset: str, seed: int) -> None:
    """Build the world's models and cache the target's and oracle's evaluations (untimed)."""
    from obliviate.workflow import WorldRef, cached_world_eval, world_eval_sets, world_models

    ref = WorldRef(preset, seed, SPLIT)
    models = world_models(ref, which=("target", "oracle"), progress=True)
    sets = world_eval_sets(ref)
    oracle = cached_world_eval(ref, "oracle", models.oracle, sets)
    cached_world_eval(ref, "target", models.target, sets, oracle["_forget_truth_ratios"])


def time_bench(spec: BenchSpec) -> tuple[float, float, float]:
    """(bench wall time, summed method-cell wall and CPU times) of one run into a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcome = run_bench(spec, Path(tmp) / "bench", progress=False, report=False)
        bench = time.perf_counter() - t0
        if outcome.failed:
            raise SystemExit(f"{spec.world}: {outcome.failed}")
        results = [read_json(c.path(Path(tmp) / "bench") / "result.json") for c in spec.cells() if not c.is_anchor]
    return bench, sum(r["cell_seconds"] for r in results), sum(r["cell_cpu_seconds"] for r in results)


def measure(preset: str, methods: list[str], seed: int, repeats: int) -> dict:
    warm(preset, seed)
    spec = BenchSpec(methods=methods, splits=[SPLIT], seeds=[seed], world=preset)
    runs = [time_bench(spec) for _ in range(repeats)]
    bench, cells, cpu = (min(r[i] for r in runs) for i in range(3))  # each the least disturbed run's
    items, tokens = evaluated_tokens(preset, seed)
    return {"preset": preset, "items": items, "tokens": tokens, "bench": bench, "cells": cells, "cpu": cpu}


def exponent(rows: list[dict], key: str) -> float:
    x = np.log([r["tokens"] for r in rows])
    y = np.log([r[key] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,full")
    parser.add_argument("--methods", default="ga")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import obliviate.grid.cell  # noqa: F401  (loaded once, as `obliviate bench` does before its first cell)

    rows = []
    for preset in args.presets.split(","):
        row = measure(preset, args.methods.split(","), args.seed, args.repeats)
        rows.append(row)
        print(f"{preset:6s} items {row['items']:6d}  evaluated tokens {row['tokens']:9d}  bench {row['bench']:7.1f}s  "
              f"method cells {row['cells']:7.1f}s  cells CPU {row['cpu']:7.1f}s  "
              f"({1000 * row['cpu'] / row['tokens']:.3f} CPU s per 1k tokens)", flush=True)
    if len(rows) >= 2:
        print(f"growth exponent vs evaluated tokens: bench {exponent(rows, 'bench'):.2f}, method cells "
              f"{exponent(rows, 'cells'):.2f}, cells CPU {exponent(rows, 'cpu'):.2f}  (1.00 = linear; log-log "
              f"least squares over {len(rows)} presets)")
        slope, fixed = np.polyfit([r["tokens"] for r in rows], [r["cpu"] for r in rows], 1)
        print(f"affine fit of cells CPU: {fixed:.1f}s fixed + {1e6 * slope:.1f}s per million evaluated tokens")


if __name__ == "__main__":
    main()
