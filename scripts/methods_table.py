"""Regenerate the table in docs/methods.md: every method on a world split, one row each.

For each registered method (or `--methods a,b`), in a fresh subprocess: `obliviate unlearn` on the
world's target with the method's default config, then `obliviate eval` against the world's oracle.
Wall time is the unlearning call's; peak memory is that subprocess's peak resident set size.
The target and oracle rows are the world models themselves, evaluated the same way.

    python scripts/methods_table.py --preset small --split forget10 --seed 0 [--out docs/methods.md]
    python scripts/methods_table.py --methods s3t,rocr --update   # add or redo these rows, keep the others

Every registered name is a row, the labelled variants (`spul+gate`, ...) included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _cli import OBLIVIATE, Failed, cell, replace_block, run

BEGIN, END = "<!-- methods-table:begin -->", "<!-- methods-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--out", type=Path, default=Path("docs/methods.md"))
    parser.add_argument("--update", action="store_true",
                        help="keep the table's other rows; add or replace the rows of --methods (target/oracle kept)")
    args = parser.parse_args()
    if args.update and args.methods == "all":
        sys.exit("error: --update needs --methods a,b (the rows to add or redo)")
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
            for label, path in (() if args.update else
                                (("target (no unlearning)", models.target), ("oracle (retrain)", models.oracle))):
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
    lines = [
        f"| {name} | {cell(a, 'forget_quality')} | {cell(a, 'model_utility')} | {cell(a, 'forget/rouge')} | "
        f"{cell(a, 'retain/rouge')} | {'—' if s is None else f'{s:.0f}'} | {'—' if m is None else f'{m:.0f}'} |\n"
        for name, a, s, m in rows]
    command = f"python scripts/methods_table.py --preset {args.preset} --split {args.split} --seed {args.seed}"
    note = (f"\n`{command}`"
            f" — world `{args.preset}`, split `{args.split}`, seed {args.seed}, each method's default config; "
            "values with a 95% bootstrap CI over items.\n")
    fails = "".join(f"\n- `{name}` did not run with its defaults on this world: {why}" for name, why in failures)
    if args.update:
        lines, note, fails = _merged(args.out, lines, note, fails, f"{command} --methods {args.methods} --update")
    table = f"{BEGIN}\n{head}{''.join(lines)}{note}{fails}\n{END}"
    replace_block(args.out, BEGIN, END, table, "Methods")
    print(table)


def _merged(doc: Path, new: list[str], note: str, fails: str, command: str) -> tuple[list[str], str, str]:
    """The table's rows with `new` in place of the rows of the same name (new names go before the MoE
    world's rows); the old note, naming `command` for the rows it redid; old failures of other methods kept."""
    text = doc.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)].splitlines()
    name = lambda line: line.split("|")[1].strip()  # noqa: E731
    redone = {name(line) for line in new}
    rows = [line + "\n" for line in block if line.startswith("| ") and not line.startswith("| method |")]
    replaced = {name(line): line for line in new}
    out = [replaced.pop(name(line), line) for line in rows]
    at = next((i for i, line in enumerate(out) if "moe world" in name(line)), len(out))
    out[at:at] = list(replaced.values())
    old_note = next((line for line in block if line.startswith("`python scripts/methods_table.py")), note.strip())
    old_fails = "".join(f"\n{line}" for line in block
                        if line.startswith("- `") and line[3:].split("`")[0] not in redone)
    return out, f"\n{old_note} Rows redone or added by `{command}`.\n", old_fails + fails


if __name__ == "__main__":
    main()
