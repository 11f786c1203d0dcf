"""Benchmarks of many methods at once: the grid runner, the leaderboard and the HTML report.

    spec = BenchSpec(methods=["ga", "graddiff"], splits=["forget10"], seeds=[0, 1], world="tiny")
    outcome = run_bench(spec, Path("bench/demo"))      # resumable: run it again to finish a stopped bench
    write_report(Path("bench/demo"))                   # or a run directory, or a protocol directory
"""

from obliviate.grid.leaderboard import build_leaderboard, t_interval, write_leaderboard
from obliviate.grid.report import write_report
from obliviate.grid.runner import BenchOutcome, run_bench
from obliviate.grid.spec import BenchSpec, Cell

__all__ = ["BenchOutcome", "BenchSpec", "Cell", "build_leaderboard", "run_bench", "t_interval",
           "write_leaderboard", "write_report"]
