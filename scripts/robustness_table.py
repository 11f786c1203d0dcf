"""Regenerate the tables in docs/robustness.md: robustness attacks x unlearning methods on a world split.

For each method, in a fresh subprocess: `obliviate unlearn` on the world's target with the method's
default config, then `obliviate attack --all RUN --json` (every attack on the unlearned model, the
world's oracle and its target, with the attacks' default settings). Two reference rows come first:

- "target (no unlearning)": the target attacked as if it were the unlearned model. Its recovery is
  1 by construction; the row shows that every attack finds the facts where they are.
- "oracle2 (retrain, seed 1)" with --oracle2: the world's second exact retrain (another training
  seed) attacked as if it were the unlearned model. It never saw the facts, so its recovery is the
  attacks' noise floor.

Cells are the oracle-relative recovery of obliviate.attacks.base with its 95% bootstrap CI over facts;
"n/a" is an attack whose premise does not hold (relearn on an inference-time run), "—" one that gave
no number (reason in the run's attacks.json).

    python scripts/robustness_table.py --preset small --split forget10 --seed 0 \
        --methods all --oracle2 [--out docs/robustness.md]

`--keep DIR` keeps the run directories; `--keep DIR --reuse` renders the tables again from runs already
attacked there (they do not change the numbers, so the command named in the doc leaves them out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _cli import OBLIVIATE, Failed, replace_block, run

BEGIN, END = "<!-- robustness-table:begin -->", "<!-- robustness-table:end -->"
ATTACKS = ("direct", "forms", "jailbreak", "in_context", "stepwise", "quantize", "probe", "relearn")
DEFAULT_METHODS = "ga,graddiff,npo,simnpo,eco"


def cell(report: dict | None) -> str:
    """"0.53 [0.39, 0.68]", "n/a" (premise does not hold) or "—" (no number)."""
    if not report:
        return "—"
    status = report.get("status", "ok")
    if status == "not applicable":
        return "n/a"
    value, ci = report.get("recovery"), report.get("recovery_ci")
    if status != "ok" or value is None:
        return "—"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def answers_cell(report: dict | None) -> str:
    """The same recovery measured on greedy answers, pooled over the same forms."""
    if not report or report.get("status") != "ok":
        return cell(report)
    return cell(report.get("answers"))


def levels_cell(report: dict | None, role: str) -> str:
    levels = ((report or {}).get("knows") or {}).get("levels") or {}
    return "—" if role not in levels else f"{levels[role]:.2f}"


def attack_rows(exe: list[str], spec: str, out: str, world: str | None = None, reuse: bool = False) -> dict:
    """`obliviate attack --all` on `spec`, written into `out`; with `reuse`, a finished `out` is read back."""
    if reuse and (Path(out) / "attacks.json").exists():
        return json.loads((Path(out) / "attacks.json").read_text(encoding="utf-8"))
    cmd = [*exe, "attack", "--all", spec, "--out", out, "--json"]
    return run(cmd + (["--world", world] if world else []))


def ratio(payload: dict) -> str:
    """The relearn attack's R, or why there is none."""
    report = payload["attacks"].get("relearn") or {}
    if report.get("status") != "ok":
        return "n/a" if report.get("status") == "not applicable" else "—"
    r = report.get("R") or {}
    return "— (" + (r.get("note") or "no value") + ")" if r.get("value") is None else f"{r['value']:.2f}"


def table(rows: list[tuple[str, dict, float | None]], fmt, robustness: bool = True) -> str:
    """A row per run, a column per attack (cells from `fmt`), and the summary's harmonic mean."""
    extra = " robustness (HM) |" if robustness else ""
    head = "| run | " + " | ".join(ATTACKS) + f" |{extra}\n" + "|---" * (len(ATTACKS) + 1 + robustness) + "|\n"
    body = ""
    for label, payload, _ in rows:
        body += f"| {label} | " + " | ".join(fmt(payload["attacks"].get(a)) for a in ATTACKS) + " |"
        if robustness:
            hm = payload["robustness"]["harmonic_mean"]
            body += f" {'—' if hm is None else f'{hm:.2f}'} |"
        body += "\n"
    return head + body


def levels_table(rows: list[tuple[str, dict, float | None]]) -> str:
    """The raw levels behind the recoveries: fraction of forget facts ranked first, per model."""
    head = "| model | " + " | ".join(ATTACKS) + " |\n" + "|---" * (len(ATTACKS) + 1) + "|\n"
    first = rows[0][1]["attacks"]
    lines = [f"| {role} | " + " | ".join(levels_cell(first.get(a), role) for a in ATTACKS) + " |\n"
             for role in ("target", "oracle")]
    lines += [f"| {label} | " + " | ".join(levels_cell(p["attacks"].get(a), "unlearned") for a in ATTACKS) + " |\n"
              for label, p, _ in rows]
    return head + "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="methods a,b,... or all (a method that needs an MoE model runs on the "
                                               "world's MoE variant)")
    parser.add_argument("--oracle2", action="store_true", help="add the second oracle's row (trains it once)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--reuse", action="store_true", help="with --keep: read back runs already attacked there")
    parser.add_argument("--out", type=Path, default=Path("docs/robustness.md"))
    args = parser.parse_args()
    from obliviate.methods import METHODS
    from obliviate.world import build_world_models

    names = list(METHODS) if args.methods == "all" else args.methods.split(",")

    exe = OBLIVIATE
    world = f"{args.preset}@{args.seed}"
    which = ("target", "oracle", "oracle2") if args.oracle2 else ("target", "oracle")
    models = build_world_models(args.preset, args.seed, args.split, which=which)
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        reuse = args.reuse and args.keep is not None
        rows.append(("target (no unlearning)", attack_rows(exe, f"world:{world}", f"{root}/target", None, reuse),
                     None))
        if args.oracle2:
            rows.append(("oracle2 (retrain, seed 1)",
                         attack_rows(exe, str(models.oracle2), f"{root}/oracle2", world, reuse), None))
        print(f"reference rows: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        for name in names:
            run_dir = f"{root}/{name}"
            moe = METHODS[name].needs_moe  # attacked against the MoE world's own target and oracle
            t0 = time.perf_counter()
            try:
                if not (reuse and (Path(run_dir) / "attacks.json").exists()):
                    run([*exe, "unlearn", "--method", name, "--model", f"world:{world}" + (":moe" if moe else ""),
                         "--split", args.split, "--out", run_dir, "--json"])
                rows.append((name + (" (moe world)" if moe else ""), attack_rows(exe, run_dir, run_dir, None, reuse),
                             time.perf_counter() - t0))
            except Failed as exc:  # reported under the table, not hidden
                failures.append((name, str(exc)))
                continue
            print(f"{name}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    command = (f"python scripts/robustness_table.py --preset {args.preset} --split {args.split} --seed {args.seed} "
               f"--methods {args.methods}{' --oracle2' if args.oracle2 else ''}")
    header = (f"`{command}`: world `{args.preset}`, split `{args.split}`, seed {args.seed}; each method and each "
              "attack with its default settings.\n\n")
    block = f"{BEGIN}\n{header}{render(rows, failures)}\n{END}"
    replace_block(args.out, BEGIN, END, block, "Robustness")
    print(block)


def render(rows: list[tuple[str, dict, float | None]], failures: list[tuple[str, str]]) -> str:
    """The tables of the doc block, in markdown."""
    text = ("**Recovery** (recognition: the true answer ranked first among it and 5 wrong alternatives), "
            "95% bootstrap CI over facts; 0 = no more than the oracle, 1 = as much as the target:\n\n"
            + table(rows, cell)
            + "\n**Recovery of greedy answers** (the model states the answer), pooled over the same forms; "
              "\"—\" where the target states the answers under the attack by less than 0.2 more than the oracle:\n\n"
            + table(rows, answers_cell, robustness=False)
            + "\n**Levels**: fraction of forget facts ranked first under each attack (pooled over its informative "
              "forms), by the target, the oracle and each run's unlearned model:\n\n"
            + levels_table(rows))
    text += "\n**Relearning ratio** R = min(Δ_oracle / Δ_unlearned, 1), the cases as in obliviate/attacks/relearn.py: "
    text += "; ".join(f"{label}: {ratio(p)}" for label, p, _ in rows) + "\n"
    return text + "".join(f"\n- `{name}` did not run with its defaults on this world: {why}" for name, why in failures)


if __name__ == "__main__":
    main()
