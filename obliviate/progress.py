"""Progress displays that work on a terminal and in a log.

`make_progress` returns a rich `Progress` when its console is a terminal, and otherwise a
`PlainProgress` with the same small API (`add_task`, `update`, `advance`, used as a context manager)
that prints one plain line per task every few seconds to stderr, so a SLURM or CI log shows how far
a run has come instead of the blank lines a live display leaves in a file:

    forget10 · target: 120/480 (25%) · loss 2.913 · 14s elapsed, ~42s left

`OBLIVIATE_PROGRESS_SECONDS` sets the interval (default 5).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Any

DEFAULT_SECONDS = 5.0


def plain_interval() -> float:
    """Seconds between two plain progress lines of one task (`OBLIVIATE_PROGRESS_SECONDS`, default 5)."""
    try:
        return max(0.0, float(os.environ.get("OBLIVIATE_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, fields: dict[str, Any]) -> None:
        self.description, self.total, self.completed, self.fields = description, total, completed, fields
        self.start = time.monotonic()
        self.start_completed = completed
        self.last_print = -math.inf  # the first update prints at once
        self.finished_printed = False


class PlainProgress:
    """rich.progress.Progress's small API, printing plain lines to `stream` at most every `interval` seconds."""

    def __init__(self, label: str = "", interval: float | None = None, stream: IO[str] | None = None,
                 disable: bool = False) -> None:
        self.label, self.disable = label, disable
        self.interval = plain_interval() if interval is None else interval
        self.stream = stream
        self.tasks: dict[int, _Task] = {}

    # -- rich's API ------------------------------------------------------------------------------------
    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def stop(self) -> None:
        for task in self.tasks.values():
            if not task.finished_printed and task.completed > task.start_completed:
                self._print(task)

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description, total, completed, fields)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        fields.pop("refresh", None)
        fields.pop("visible", None)
        task.fields.update(fields)
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if (done and not task.finished_printed) or now - task.last_print >= self.interval:
            self._print(task)
            task.finished_printed = done

    # -- the line ------------------------------------------------------------------------------------
    @staticmethod
    def _plain(text: str) -> str:
        """`text` without rich markup ("[red]2 failed[/]" -> "2 failed")."""
        from rich.errors import MarkupError
        from rich.text import Text

        try:
            return Text.from_markup(text).plain
        except MarkupError:
            return text

    def _print(self, task: _Task) -> None:
        task.last_print = time.monotonic()
        if self.disable:
            return
        elapsed = task.last_print - task.start
        description = self._plain(task.description)
        if self.label and not description.startswith(self.label):
            head = f"{self.label} · {description}" if description and description != "train" else self.label
        else:
            head = description or "progress"
        parts = [head]
        if task.total:
            parts[0] += f": {task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        else:
            parts[0] += f": {task.completed:g}"
        for key, value in task.fields.items():
            text = f"{value:.3f}" if isinstance(value, float) else self._plain(str(value))
            if text and text != "nan":
                parts.append(text if key in ("loss", "status") and not text[0].isdigit() else f"{key} {text}")
        timing = f"{_duration(elapsed)} elapsed"
        rate_done = task.completed - task.start_completed
        if task.total and 0 < rate_done and task.completed < task.total:
            timing += f", ~{_duration(elapsed / rate_done * (task.total - task.completed))} left"
        parts.append(timing)
        stream = self.stream or sys.stderr
        print(" · ".join(parts), file=stream, flush=True)


def is_terminal(console: Any = None) -> bool:
    """Whether a live display can be drawn: the console's (by default stdout's) stream is a terminal."""
    if console is not None:
        return bool(getattr(console, "is_terminal", False))
    from rich.console import Console

    return Console().is_terminal


def make_progress(*columns: Any, label: str = "", disable: bool = False, console: Any = None,
                  **kwargs: Any) -> Any:
    """A rich `Progress(*columns, **kwargs)` on a terminal; a `PlainProgress` (plain lines) otherwise.

    `label` starts each plain line (the model or run name); on a terminal it belongs in the columns.
    """
    if disable:
        from rich.progress import Progress

        return Progress(*columns, disable=True)
    if is_terminal(console):
        from rich.progress import Progress

        return Progress(*columns, console=console, **kwargs) if console is not None else Progress(*columns, **kwargs)
    return PlainProgress(label)
