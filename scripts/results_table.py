"""Regenerate docs/results.md: the leaderboard of the methods on a built-in world, over forget sizes and seeds.

Runs the bench (`obliviate.grid.run_bench`, the code behind `obliviate bench`) into a bench
directory, then writes docs/results.md (the leaderboard as a Markdown table, with this command) and
the forget-quality × model-utility trade-off plot next to it (docs/results_tradeoff.svg). The bench
directory keeps finished cells, so a stopped run continues where it stopped when started again;
its report.html has every plot.

    python scripts/results_table.py                  # every method, small world, forget01/05/10, 3 seeds
    python scripts/results_table.py --preset tiny --methods ga,graddiff --forget forget01 --seeds 1
    python scripts/results_table.py --figure-from-table     # redraw the figure from docs/results.md's means

The figure is a ranked dot plot (`obliviate.grid.plots.ranked`): for each split, every method's forget
quality and model utility, ranked by forget quality, against the oracle's band and the target's line.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE_END = "<!-- results-table:end: the reading below is written by hand and kept when the table is regenerated -->"
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="built-in world preset")
    parser.add_argument("--methods", default="all", help="methods a,b,... or all")
    parser.add_argument("--forget", default="forget01,forget05,forget10", help="forget splits")
    parser.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a list 0,4,7")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once")
    parser.add_argument("--max-retain", type=int, default=None, help="evaluate on this many retain items")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a method's config key, for every cell of that method (repeatable)")
    parser.add_argument("--bench", type=Path, default=None, help="bench directory (default bench/results-PRESET)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--figure-from-table", action="store_true",
                        help="only redraw the figure, from the means in --out's table (no bench, no intervals)")
    args = parser.parse_args()
    if args.figure_from_table:
        return redraw_from_table(args.out)

    from obliviate.errors import ObliviateError
    from obliviate.grid import build_leaderboard, run_bench
    from obliviate.grid.leaderboard import to_markdown
    from obliviate.grid.plots import ranked
    from obliviate.grid.report import rows_by_split
    from obliviate.grid.spec import BenchSpec, parse_methods, parse_seeds, parse_world_splits
    from obliviate.io import atomic_open

    try:
        spec = BenchSpec(methods=parse_methods(args.methods), splits=parse_world_splits(args.forget),
                         seeds=parse_seeds(args.seeds), world=args.preset, max_retain=args.max_retain,
                         overrides=_method_sets(args.sets))
        bench_dir = args.bench or ROOT / "bench" / f"results-{args.preset}"
        outcome = run_bench(spec, bench_dir, jobs=args.jobs, progress=sys.stderr.isatty(),
                            log=lambda line: print(line, file=sys.stderr))
    except ObliviateError as exc:
        sys.exit(f"error: {exc}")
    board = build_leaderboard(bench_dir)
    image = args.out.with_name(args.out.stem + "_tradeoff.svg")
    svg = ranked(rows_by_split(board))
    if svg is not None:
        with atomic_open(image) as handle:
            handle.write(svg)
    command = "python scripts/results_table.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("preset", args.preset), ("methods", args.methods),
                                                    ("forget", args.forget), ("seeds", args.seeds),
                                                    ("max_retain", args.max_retain)) if v is not None) + "".join(
        f" --set {pair}" for pair in args.sets)
    settings = "".join(f" `{pair.split(':', 1)[0]}` runs with `{pair.split(':', 1)[1]}`." for pair in args.sets)
    settings += " Rows run with such settings show them beside the name." if args.sets else ""
    failed = "".join(f"\n- `{label}` did not finish: {why}" for label, why in outcome.failed.items())
    text = "\n".join([
        "# Results",
        "",
        ("Every method but `uoe` (it needs a mixture-of-experts model) and `alu` (it needs an instruction "
         "model with a chat template; see docs/real_model.md)"
         if args.methods == "all" else "The methods " + ", ".join(f"`{m}`" for m in spec.methods))
        + ", each with its default config" + (" but for the settings below" if args.sets else "")
        + f", on the built-in `{args.preset}` world, forget splits "
        f"{', '.join(f'`{s}`' for s in spec.splits)}, seeds {', '.join(map(str, spec.seeds))} (each seed is its "
        "own world, target and exact-retrain oracle). Regenerate with",
        "",
        f"    {command}",
        "",
        f"which runs the bench into `{bench_dir.relative_to(ROOT) if bench_dir.is_relative_to(ROOT) else bench_dir}`"
        f" (open its `report.html` for every plot). Measured on {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()} with {_cores()} CPU cores{_gpu()}; its cells took {_cell_time(bench_dir, spec)} in all."
        + settings,
        "",
        *([f"![every method's forget quality and model utility against the oracle]({image.name})", ""]
          if svg is not None else []),
        to_markdown(board),
        *(["", "Cells that did not finish:" + failed] if failed else []),
        "",
        TABLE_END,
    ])
    # The reading written under the table is kept; only what the bench produces is replaced.
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    reading = old.split(TABLE_END, 1)[1] if TABLE_END in old else "\n"
    with atomic_open(args.out) as handle:
        handle.write(text + reading)
    print(text)


def rows_from_table(text: str) -> dict[str, list[dict]]:
    """The leaderboard rows of a results.md table, means only: {split: [{"model", "kind", "metrics"}]}."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = {"forget quality ↑": "forget_quality", "model utility ↑": "model_utility"}
    out: dict[str, list[dict]] = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        model = cells["model"]
        kind = "anchor" if model.startswith("*") else "method"
        metrics = {}
        for label, key in column.items():
            mean = cells.get(label, "—").split(" [")[0]
            if mean != "—":
                metrics[key] = {"mean": float(mean), "ci_low": float("nan"), "ci_high": float("nan")}
        out.setdefault(cells["split"], []).append({"model": model.strip("*").split(" (")[0], "kind": kind,
                                                   "metrics": metrics})
    return out


def redraw_from_table(markdown: Path) -> None:
    """Redraw docs/results_tradeoff.svg from the means in `markdown`'s table (no intervals: those need the bench)."""
    from obliviate.grid.plots import ranked
    from obliviate.io import atomic_open

    svg = ranked(rows_from_table(markdown.read_text(encoding="utf-8")))
    image = markdown.with_name(markdown.stem + "_tradeoff.svg")
    with atomic_open(image) as handle:
        handle.write(svg)
    print(f"wrote {image}")


def _method_sets(pairs: list[str]) -> dict[str, list[str]]:
    """["eco:alpha=0.2", ...] -> {"eco": ["alpha=0.2"]}; a pair without METHOD: is refused in one line."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        method, sep, setting = pair.partition(":")
        if not sep or "=" not in setting:
            sys.exit(f"error: --set {pair!r}: give METHOD:KEY=VALUE, e.g. eco:alpha=0.2")
        out.setdefault(method.strip(), []).append(setting.strip())
    return out


def _cell_time(bench_dir: Path, spec) -> str:
    """The summed wall time of the bench's finished cells (kept from earlier runs too)."""
    from obliviate.grid.spec import RESULT, cell_state
    from obliviate.io import read_json

    seconds = sum(read_json(c.path(bench_dir) / RESULT).get("cell_seconds", 0.0) for c in spec.cells()
                  if cell_state(spec, c, bench_dir) == "complete")
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _gpu() -> str:
    import torch

    return f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
