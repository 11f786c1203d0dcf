"""Running `obliviate` commands from the table scripts: one subprocess each, its --json output parsed."""

from __future__ import annotations

import json
import subprocess
import sys

OBLIVIATE = [sys.executable, "-m", "obliviate"]


class Failed(Exception):
    """A command that exited non-zero; the message is its last `error:` line."""


def run(cmd: list[str]) -> dict:
    """Run a CLI command with --json and return its parsed output; Failed carries its error line."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")] or ["failed"]
        raise Failed(lines[-1].removeprefix("error: "))
    return json.loads(proc.stdout[proc.stdout.index("{"):])
