"""`obliviate bench`: run a grid of cells, resumably, then write the leaderboard and the report.

Each cell runs in its own child process (`bench.cell.run_cell`), forked from this one after the
heavy modules are imported, so a cell starts in milliseconds, with its own peak memory, and a
crash in one method is that cell's error, not the bench's. Up to `jobs` cells run at once; a
method cell waits for the anchors cell of its (split, seed), whose oracle it is scored against.

Crash safety: a cell writes its results atomically into its own directory and its COMPLETE marker
last. On start, complete cells are kept and a half-written cell (no marker) is deleted and redone;
a stale one (finished with other settings) stops the bench unless `redo_stale` says to redo it.
Shared files (bench.json, the leaderboard, the report) are written atomically, so a bench killed at
any moment leaves no truncated file, and running the same command again finishes the grid. A lock
on the bench directory stops a second bench from working in it at the same time. The progress
display is refreshed from the main loop (no display thread), so the process is single-threaded
whenever it forks.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError
from obliviate.grid.spec import BENCH_FILE, ERROR, BenchSpec, Cell, cell_state
from obliviate.io import check_out_dir, read_json, write_json

POLL_SECONDS = 0.2
LOCK_WAIT_SECONDS = 5.0


@dataclass
class BenchOutcome:
    """What one invocation did: cells kept from before, run now, failed (label -> error line)."""

    root: Path
    total: int
    kept: int = 0
    ran: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)


def validate(spec: BenchSpec) -> None:
    """Check the inputs before any cell starts, so a typo fails in one line instead of in every cell."""
    from obliviate.methods import get_method

    for method in spec.methods:
        get_method(method)
    if spec.on_world:
        from obliviate.workflow import parse_world_spec
        from obliviate.world.config import get_preset

        ref = parse_world_spec(spec.world_spec(spec.seeds[0]))
        get_preset(ref.preset)
        return
    if spec.attacks:
        raise ConfigError("--attacks: the attacks take their facts from the built-in world; "
                          "run them in a --world bench")
    if spec.data is not None:  # the benchmark's files were read when the spec was made (api.studies.bench)
        if spec.model is None:
            raise ConfigError("--data needs --model: the model to unlearn")
        return
    if spec.model is None or spec.retain is None or not spec.forget_files:
        raise ConfigError("a bench on your own model needs --model, --forget and --retain")
    from obliviate.data import load_items

    for path in [*spec.forget_files.values(), spec.retain, *spec.utility.values(), spec.holdout]:
        if path is not None:
            load_items(path, "qa")  # raises a one-line DataError on a bad file


def run_bench(spec: BenchSpec, root: Path, jobs: int = 1, progress: bool = True,
              log: Callable[[str], None] | None = None, report: bool = True, redo_stale: bool = False,
              force: bool = False) -> BenchOutcome:
    """Run every cell of `spec` not already complete in `root`; write leaderboard.* and report.html.

    A cell finished with other settings (a changed `--set`, other data) is *stale*: redone with
    `redo_stale`, else the bench stops before touching anything, rather than delete finished work.
    A non-empty `root` that is not a bench is refused before any work, unless `force`.
    """
    check_out_dir(root, (BENCH_FILE,), force)
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    validate(spec)
    root = Path(root)
    cells = spec.cells()
    states = {cell: cell_state(spec, cell, root) for cell in cells}
    stale = [cell.label for cell in cells if states[cell] == "stale"]
    if stale and not redo_stale:
        raise ConfigError(f"{root}: {len(stale)} finished cells were made with other settings (e.g. {stale[0]}); "
                          "use another --out, or --redo-stale to redo them")
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):
        _write_bench_file(spec, root)
        import obliviate.grid.cell  # noqa: F401  (torch, transformers, the methods: loaded once, before forking)

        t0 = time.perf_counter()
        outcome = BenchOutcome(root, len(cells), kept=sum(s == "complete" for s in states.values()))
        todo = [cell for cell in cells if states[cell] != "complete"]
        if log and outcome.kept:
            log(f"{outcome.kept} of {len(cells)} cells already complete in {root}; running the other {len(todo)}")
        _Scheduler(spec, root, todo, jobs, outcome, progress, log).run()
        outcome.seconds = time.perf_counter() - t0
        outcome.files = finish(root, report=report)
    return outcome


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the bench directory; a second bench there fails at once, in one line."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    with open(root / ".lock", "w") as handle:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS  # the cells of a bench just killed take a moment to go
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"{root}: another bench is running in this directory; wait for it, or "
                                      "stop it and run the command again to resume") from None
                time.sleep(0.2)
        yield


def finish(root: Path, report: bool = True) -> dict[str, Path]:
    """Write the leaderboard files (and the report) from whatever cells are complete."""
    from obliviate.grid.leaderboard import build_leaderboard, write_leaderboard

    files = write_leaderboard(build_leaderboard(root), root)
    if report:
        from obliviate.grid.report import write_bench_report

        files["report"] = write_bench_report(root)
    return files


def _write_bench_file(spec: BenchSpec, root: Path) -> None:
    from obliviate.runs import versions

    for leftover in root.glob(".*.tmp"):  # an atomic write cut short by a kill; its target is intact
        leftover.unlink(missing_ok=True)
    path = root / BENCH_FILE
    previous = read_json(path) if path.is_file() else {}
    write_json(path, {"spec": spec.to_dict(), "command": command_line(), "versions": versions(),
                      "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
                      "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def command_line() -> list[str]:
    """sys.argv, with the program shown as `obliviate` when it is the obliviate command line."""
    program = Path(sys.argv[0]) if sys.argv else Path()
    if program.name == "obliviate" or (program.name == "__main__.py" and program.parent.name == "obliviate"):
        return ["obliviate", *sys.argv[1:]]
    return list(sys.argv)


def _fork_context():
    """fork on Linux: every cell shares the modules already imported. spawn elsewhere (fork is unsafe on
    macOS), and where this process has initialised CUDA, which a forked child cannot use."""
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") and not cuda_live else "spawn")


class _Scheduler:
    """Start cells as their anchors finish, up to `jobs` at once; track progress and the ETA."""

    def __init__(self, spec: BenchSpec, root: Path, todo: list[Cell], jobs: int, outcome: BenchOutcome,
                 progress: bool, log: Callable[[str], None] | None) -> None:
        self.spec, self.root, self.jobs, self.outcome, self.log = spec, root, jobs, outcome, log
        self.waiting = list(todo)
        self.running: dict[Cell, tuple[Any, float]] = {}
        self.durations: list[float] = []
        self.display = _Display(outcome.total) if progress else None

    def run(self) -> None:
        ctx = _fork_context()
        try:
            if self.display:
                self.display.start()
            while self.waiting or self.running:
                self._reap()
                self._start_ready(ctx)
                if self.display:
                    self.display.update(self.outcome, list(self.running), len(self.waiting), self.eta())
                time.sleep(POLL_SECONDS)
            if self.display:
                self.display.update(self.outcome, [], 0, 0.0, force=True)
        except BaseException:
            for proc, _ in self.running.values():  # Ctrl-C or a crash here: leave no cell running
                proc.kill()
                proc.join()
            raise
        finally:
            if self.display:
                self.display.stop()

    def _ready(self, cell: Cell) -> bool | None:
        """True when the cell can start, None when it never will (its anchors failed)."""
        if cell.is_anchor:
            return True
        anchor = self.spec.anchor_of(cell)
        if anchor in self.running or anchor in self.waiting:
            return False
        return True if cell_state(self.spec, anchor, self.root) == "complete" else None

    def _start_ready(self, ctx) -> None:
        from obliviate.grid.cell import run_cell

        for cell in list(self.waiting):
            if len(self.running) >= self.jobs:
                return
            ready = self._ready(cell)
            if ready is None:
                self.waiting.remove(cell)
                self._failed(cell, f"skipped: its anchors ({self.spec.anchor_of(cell).label}) failed")
            elif ready:
                self.waiting.remove(cell)
                path = cell.path(self.root)
                if path.exists():  # half-written or stale: redo from scratch
                    shutil.rmtree(path)
                proc = ctx.Process(target=run_cell, args=(self.spec.to_dict(), cell, str(self.root), os.getpid()),
                                   name=f"cell {cell.label}")
                proc.start()
                self.running[cell] = (proc, time.perf_counter())

    def _reap(self) -> None:
        for cell, (proc, started) in list(self.running.items()):
            if proc.is_alive():
                continue
            proc.join()
            del self.running[cell]
            seconds = time.perf_counter() - started
            self.durations.append(seconds)
            if proc.exitcode == 0 and cell_state(self.spec, cell, self.root) == "complete":
                self.outcome.ran += 1
                if self.log and not self.display:
                    self.log(f"done {cell.label} ({seconds:.0f}s)")
            else:
                self._failed(cell, _error_line(cell.path(self.root), proc.exitcode))

    def _failed(self, cell: Cell, why: str) -> None:
        self.outcome.failed[cell.label] = why
        if self.log:
            self.log(f"failed {cell.label}: {why}")

    def eta(self) -> float | None:
        """Seconds left: the mean cell time so far for each cell waiting, and for the rest of each running
        cell, over the parallel slots."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.perf_counter()
        running = sum(max(mean - (now - started), 0.0) for _, started in self.running.values())
        return (mean * len(self.waiting) + running) / self.jobs


def _error_line(path: Path, exitcode: int | None) -> str:
    try:
        return read_json(path / ERROR)["error"]
    except (OSError, ValueError, KeyError):
        return f"the cell's process ended with exit code {exitcode} (see {path / 'log.txt'})"


class _Display:
    """A rich progress bar: cells done (and kept from before), running, left, failed, and the ETA."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from obliviate.progress import make_progress

        self.progress = make_progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[status]}"), auto_refresh=False,
                                      console=Console(stderr=True), transient=False, label="bench")
        self.task = self.progress.add_task("bench", total=total, status="")
        self.last = 0.0

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.refresh()
        self.progress.stop()

    def update(self, outcome: BenchOutcome, running: list[Cell], waiting: int, eta: float | None,
               force: bool = False) -> None:
        if time.perf_counter() - self.last < 0.5 and not force:
            return
        self.last = time.perf_counter()
        done = outcome.kept + outcome.ran
        parts = [f"{done} done" + (f" ({outcome.kept} kept)" if outcome.kept else ""),
                 f"{len(running)} running" + (f": {', '.join(c.label for c in running)}" if running else ""),
                 f"{waiting} left"]
        if outcome.failed:
            parts.append(f"[red]{len(outcome.failed)} failed[/]")
        parts.append(f"ETA {_duration(eta)}")
        self.progress.update(self.task, completed=done + len(outcome.failed), status=" · ".join(parts))
        self.progress.refresh()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
