"""Regenerate the table of "Exact unlearning: s3t" in docs/methods.md: S3T on a world split.

Trains S3T's sharded ensemble from the world's base model on the target's data (cached), then
scores, with the qa suite against the world's oracle: the target, the oracle, the second oracle
(the calibration row: two exact retrains), the ensemble before any deletion (what sharding costs;
with both aggregates), and the ensemble after deleting the split's forget people, by deactivating their layers and by
retraining them. The deletion's cost is the fraction of the ensemble's training it repeats.

    python scripts/s3t_table.py --preset tiny --split forget10 --seed 0 [--out docs/methods.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _cli import cell, replace_block

BEGIN, END = "<!-- s3t-table:begin -->", "<!-- s3t-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="s3t config key=value")
    parser.add_argument("--out", type=Path, default=Path("docs/methods.md"))
    args = parser.parse_args()
    import obliviate as ob
    from obliviate.config import build_config, parse_overrides
    from obliviate.methods.s3t import S3TConfig
    from obliviate.workflow.exact import run_exact_world
    from obliviate.workflow.specs import WorldRef
    from obliviate.world import build_world_models

    world = f"{args.preset}@{args.seed}"
    ref = WorldRef(args.preset, args.seed, args.split)
    config = build_config(S3TConfig, parse_overrides(args.overrides))
    models = build_world_models(args.preset, args.seed, args.split, which=("target", "oracle", "oracle2"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in (("target (one model, no unlearning)", models.target),
                            ("oracle (retrain without forget)", models.oracle),
                            ("second oracle (retrain, seed + 1)", models.oracle2)):
            res = ob.evaluate(str(path), world=world, split=args.split, out=f"{tmp}/{label[:6]}", progress=False)
            rows.append((label, res.aggregates, None, None))
            print(f"{label}: done", file=sys.stderr)
        other = "mean_logprob" if config.aggregate == "mixture" else "mixture"
        runs = (("s3t ensemble, before deletion", {}, dict(delete=False)),
                (f"s3t ensemble, before deletion, aggregate={other}", {"aggregate": other}, dict(delete=False)),
                ("s3t, forget deleted (layers deactivated)", {}, {}),
                ("s3t, forget deleted (layers retrained)", {"retrain": True}, {}))
        for i, (label, update, extra) in enumerate(runs):
            run_dir = Path(tmp) / f"run{i}"
            summary = run_exact_world("s3t", config.model_copy(update=update), ref, run_dir, progress=False, **extra)
            res = ob.evaluate(str(run_dir), progress=False)
            rows.append((label, res.aggregates, summary.get("deletion"), summary["seconds"]))
            print(f"{label}: done in {summary['seconds']:.0f}s", file=sys.stderr)
    head = ("| model | forget quality ↑ | model utility ↑ | forget ROUGE ↓ | retain ROUGE ↑ | training repeated | "
            "training left out |\n|---|---|---|---|---|---|---|\n")

    def frac(d: dict | None, key: str) -> str:
        if d is None:
            return "—"
        left_out = key == "deactivated_fraction" and d["retrain"]  # retrained layers are back in
        return "0.00" if left_out else f"{d[key]:.2f}"

    body = "".join(
        f"| {name} | {cell(a, 'forget_quality', ks=True)} | {cell(a, 'model_utility')} | {cell(a, 'forget/rouge')} | "
        f"{cell(a, 'retain/rouge')} | {frac(d, 'cost_fraction')} | {frac(d, 'deactivated_fraction')} |\n"
        for name, a, d, _ in rows)
    utility = {name: a.get("model_utility", {}).get("value") for name, a, _, _ in rows}
    target_mu, full_mu = utility[rows[0][0]], utility[rows[3][0]]
    lost = "—" if target_mu is None or full_mu is None else f"{target_mu - full_mu:.3f}"
    settings = ", ".join(f"{k} {v}" for k, v in config.model_dump().items()
                         if k in ("shards", "slices", "sequences", "r", "alpha", "lr", "epochs", "batch_size",
                                  "group_by", "aggregate"))
    command = (f"python scripts/s3t_table.py --preset {args.preset} --split {args.split} --seed {args.seed}"
               + "".join(f" --set {o}" for o in args.overrides))
    note = (f"\n`{command}` — world `{args.preset}`, split `{args.split}`, seed {args.seed}; s3t: {settings}. "
            f"Utility lost to sharding (target − ensemble before deletion): {lost}. "
            "Forget quality is the KS test of the forget truth ratios against the oracle's (n items); training "
            "repeated and left out are fractions of the ensemble's training (examples × epochs).\n")
    table = f"{BEGIN}\n{head}{body}{note}\n{END}"
    replace_block(args.out, BEGIN, END, table, "Methods")
    print(table)


if __name__ == "__main__":
    main()
