"""Regenerate the table in docs/methods.md: every method on a world split, one row each.

For each registered method (or `--methods a,b`), in a fresh subprocess: `obliviate unlearn` on the
world's target with the method's default config, then `obliviate eval` against the world's oracle.
Wall time is the unlearning call's; peak memory is that subprocess's peak resident set size.
The target and oracle rows are the world models themselves, evaluated the same way.

    python scripts/methods_table.py --preset small --split forget10 --seed 0 [--out docs/methods.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _cli import OBLIVIATE, Failed, replace_block, run

BEGIN, END = "<!-- methods-table:begin -->", "<!-- methods-table:end -->"


def cell(agg: dict, key: str) -> str:
    a = agg.get(key)
    if not a:
        return "—"
    v = a["value"]
    text = f"{v:.2e}" if key == "forget_quality" and v < 0.01 else f"{v:.3f}"
    if "ci_low" in a:
        text += f" [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--out", type=Path, default=Path("docs/methods.md"))
    args = parser.parse_args()
    from obliviate.methods import METHODS
    from obliviate.world import build_world_models

    # methods that need an instruction model (ALU) do not apply to the world: their rows come from
    # scripts/real_model.py (docs/real_model.md)
    names = [n for n in METHODS if not METHODS[n].needs_chat] if args.methods == "all" else args.methods.split(",")
    exe = OBLIVIATE
    # methods that need a mixture-of-experts model (UOE) run on the world's MoE variant, under that
    # variant's own target and oracle rows
    groups = {"llama": [n for n in names if not METHODS[n].needs_moe],
              "moe": [n for n in names if METHODS[n].needs_moe]}
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, members in groups.items():
            if not members:
                continue
            world = f"world:{args.preset}@{args.seed}" + ("" if arch == "llama" else f":{arch}")
            suffix = "" if arch == "llama" else f", {arch} world"
            models = build_world_models(args.preset, args.seed, args.split, which=("target", "oracle"), arch=arch)
            for label, path in (("target (no unlearning)", models.target), ("oracle (retrain)", models.oracle)):
                res = run([*exe, "eval", str(path), "--split", args.split, "--world", world.removeprefix("world:"),
                           "--out", f"{tmp}/{arch}-{label[:6]}", "--json"])
                rows.append((label.replace(")", suffix + ")"), res["aggregates"], None, None))
            for name in members:
                run_dir = f"{tmp}/{name}"
                try:
                    summary = run([*exe, "unlearn", "--method", name, "--model", world, "--split", args.split,
                                   "--out", run_dir, "--json"])
                    res = run([*exe, "eval", run_dir, "--json"])
                except Failed as exc:  # reported in the table, not hidden
                    failures.append((name, str(exc)))
                    continue
                rows.append((name + ("" if arch == "llama" else f" ({arch})"), res["aggregates"], summary["seconds"],
                             summary["peak_memory_mb"]))
                print(f"{name}: done in {summary['seconds']:.0f}s", file=sys.stderr)
    head = ("| method | forget quality ↑ | model utility ↑ | forget ROUGE ↓ | retain ROUGE ↑ | wall time (s) | "
            "peak memory (MB) |\n|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {name} | {cell(a, 'forget_quality')} | {cell(a, 'model_utility')} | {cell(a, 'forget/rouge')} | "
        f"{cell(a, 'retain/rouge')} | {'—' if s is None else f'{s:.0f}'} | {'—' if m is None else f'{m:.0f}'} |\n"
        for name, a, s, m in rows)
    command = f"python scripts/methods_table.py --preset {args.preset} --split {args.split} --seed {args.seed}"
    note = (f"\n`{command}`"
            f" — world `{args.preset}`, split `{args.split}`, seed {args.seed}, each method's default config; "
            "values with a 95% bootstrap CI over items.\n")
    fails = "".join(f"\n- `{name}` did not run with its defaults on this world: {why}" for name, why in failures)
    table = f"{BEGIN}\n{head}{body}{note}{fails}\n{END}"
    replace_block(args.out, BEGIN, END, table, "Methods")
    print(table)


if __name__ == "__main__":
    main()
