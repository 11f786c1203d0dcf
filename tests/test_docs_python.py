"""Every fenced Python block in docs/python.md and the README runs, in order, on the tiny world.

The blocks of one page share a namespace, as a reader's session would, and run in a fresh directory.
A failing block is reported by its page and first line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block of `page`."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def run_page(page: Path) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page):
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{page.name}, the block at line {line} failed: {exc!r}") from exc


def test_the_pages_have_python_blocks():
    assert len(python_blocks(ROOT / "docs" / "python.md")) >= 8
    assert python_blocks(ROOT / "README.md"), "the README shows the Python API"


def test_a_failing_block_is_reported_by_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"page.md, the block at line 10 failed"):
        run_page(page)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["docs/python.md", "README.md"])
def test_every_python_block_runs(page, tmp_path, monkeypatch, world_home):
    monkeypatch.chdir(tmp_path)
    run_page(ROOT / page)
