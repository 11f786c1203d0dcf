"""The README tour: every command of README.md, in the order shown, runs on the tiny world.

The commands are read from README.md itself, so the tour cannot drift from the page. The page names
the `small` world; here it is `tiny`, and a few flags keep each step short (FAST: the same commands,
fewer training steps, no generation, fewer seeds), but nothing else changes: each command must exit 0
with the files the earlier ones made. Two commands need what a test cannot have (SKIP: the network,
TOFU's own log files), and only those are left out. The README's Python block makes nothing the
commands use, and tests/test_docs_python.py runs it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {"--lm-eval": "lm-evaluation-harness downloads its tasks", "compat tofu-legacy": "needs TOFU's own logs"}
TINY = [("world:small", "world:tiny"), ("--preset small", "--preset tiny"), ("--world small", "--world tiny")]
FAST = {  # the command's first word(s) -> flags appended (a repeated option takes the last value)
    "demo": ["--preset", "tiny", "--out", "runs/demo", "--set", "max_steps=3"],
    "unlearn": ["--set", "max_steps=3"],
    "eval": ["--no-generate"],
    "seeds": ["--n", "2", "--set", "max_steps=2", "--no-generate", "--max-retain", "12"],
    "protocol": ["--splits", "forget05,forget10", "--max-items", "12", "--no-generate", "--no-references",
                 "--set", "max_steps=2"],
    "bench": ["--forget", "forget10", "--seeds", "1", "--set", "max_steps=2", "--no-generate", "--max-retain", "12"],
    "attack": ["--set", "relearn.steps=2"],
}


def tour() -> list[tuple[str, str]]:
    """("bash", command) and ("python", code) in README order; continuation lines joined, comments dropped."""
    steps = []
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        if lang == "python":
            steps.append(("python", body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith("obliviate "):
                steps.append(("bash", command))
    return steps


def test_the_tour_reads_the_readme():
    commands = [c for kind, c in tour() if kind == "bash"]
    assert commands[0] == "obliviate demo" and any(c.startswith("obliviate compare runs/gd runs/npo") for c in commands)
    npo = next(i for i, c in enumerate(commands) if c.startswith("obliviate unlearn --method npo"))
    assert npo < commands.index("obliviate compare runs/gd runs/npo")  # runs/npo is made before it is compared
    skipped = [c for c in commands if any(s in c for s in SKIP)]
    assert len(skipped) == len(SKIP)  # nothing else is left out


def _args(command: str) -> list[str]:
    for old, new in TINY:
        command = command.replace(old, new)
    args = shlex.split(command)[1:]
    return args + FAST.get(args[0], [])


@pytest.mark.slow
def test_readme_tour_runs_in_order(world_home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for kind, step in tour():
        if kind == "python" or any(s in step for s in SKIP):
            continue
        code, _, err = run_cli(_args(step), monkeypatch, capsys)
        assert code == 0, f"{step}: {err[-2000:]}"
    assert (tmp_path / "bench" / "b1" / "report.html").is_file()
    assert (tmp_path / "runs" / "mine" / "results.json").is_file()
