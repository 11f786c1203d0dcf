"""Shared by the table scripts: run `obliviate` commands (one subprocess each, --json output parsed) and
put a regenerated table into its doc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def replace_block(doc: Path, begin: str, end: str, block: str, title: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of that block in `doc`,
    atomically; a missing doc is started with `title` and the block."""
    from obliviate.io import atomic_open

    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# {title}\n\n{begin}\n{end}\n"
    start, stop = text.index(begin), text.index(end) + len(end)
    with atomic_open(doc) as handle:
        handle.write(text[:start] + block + text[stop:])


def cell(agg: dict, key: str, ks: bool = False) -> str:
    """One aggregate as a table cell: the value, then its 95% CI; forget quality in scientific notation
    below 0.01, and with `ks` its KS statistic and item count in place of a CI."""
    a = agg.get(key)
    if not a:
        return "—"
    v = a["value"]
    text = f"{v:.2e}" if key == "forget_quality" and v < 0.01 else f"{v:.3f}"
    if ks and key == "forget_quality":
        text += f" (KS {a['ks_statistic']:.3f}, n {a['n']})"
    elif "ci_low" in a:
        text += f" [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"
    return text
