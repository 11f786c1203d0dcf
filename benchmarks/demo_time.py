"""Cold and warm wall time of `obliviate demo`.

Cold: an empty model cache (a fresh $OBLIVIATE_HOME), so the world's target and oracle are trained.
Warm: the same cache again, so only the unlearning and the unlearned model's evaluation run.
Targets on a 2-core CPU machine: cold ≤ 300 s, warm ≤ 60 s.

    python benchmarks/demo_time.py [--preset small]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"cold": 300.0, "warm": 60.0}


def run_demo(home: Path, preset: str, out: Path) -> float:
    env = {**os.environ, "OBLIVIATE_HOME": str(home)}
    cmd = [sys.executable, "-m", "obliviate", "demo", "--preset", preset, "--out", str(out), "--json"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, out = Path(tmp) / "home", Path(tmp) / "run"
        times = {"cold": run_demo(home, args.preset, out), "warm": run_demo(home, args.preset, out)}
    for kind, seconds in times.items():
        ratio = seconds / TARGETS[kind]
        verdict = "ok" if ratio <= 1 else "over target"
        print(f"demo {kind:4s} ({args.preset}): {seconds:7.1f} s   target {TARGETS[kind]:.0f} s   "
              f"ratio {ratio:.2f}  {verdict}")


if __name__ == "__main__":
    main()
