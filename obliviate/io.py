"""Atomic writes and small serialisation helpers.

Every result file is written to a temporary sibling and moved into place with `os.replace`,
so a reader never sees a truncated file and a killed run leaves the previous version intact.
The temporary file is created private (mode 0600, `tempfile.mkstemp`) and given the mode an
ordinary `open` would have (0666 less the umask, typically 0644) before it is moved into place,
so results on a shared cluster are as readable as any other file their owner writes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from obliviate.errors import DataError, ObliviateError


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so the umask is never changed, even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode `mkdir` gives a new directory: 0777 less the umask."""
    return 0o777 & ~current_umask()


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterable[IO]:
    """Open a temporary file next to `path`; on success, fsync and rename it over `path`.

    The file gets the umask's mode (as `open` would give it), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, default=_default, allow_nan=True)
        handle.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, default=_default) + "\n")


class DamagedFileError(DataError, ValueError):
    """A run or cache file that cannot be read back: a one-line error naming the file and line.

    Also a `ValueError`, so code that treats an unparsable file as absent (a cache entry to rebuild,
    a bench cell to redo) keeps doing so.
    """


DAMAGED = "the file looks damaged: re-run the command that wrote it, or delete it"


def _read_text(path: str | Path) -> str:
    """The file's text; unreadable or non-UTF-8 bytes are a one-line `DataError` naming the file (and line)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFileError(path, f"not valid UTF-8; {DAMAGED}", data[: exc.start].count(b"\n") + 1) from None


def read_json(path: str | Path) -> Any:
    """A JSON file; a damaged one is a one-line `DataError` naming the file and line."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not valid JSON ({exc.msg}); {DAMAGED}", exc.lineno) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """A JSON Lines file, one object a line; a damaged line is a one-line `DataError` naming it."""
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DamagedFileError(path, f"not valid JSON ({exc.msg}); {DAMAGED}", number) from None
        if not isinstance(row, dict):
            raise DamagedFileError(path, f"expected a JSON object; {DAMAGED}", number)
        rows.append(row)
    return rows


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short sha256 of the canonical JSON of `obj`, for cache keys and data hashes."""
    blob = json.dumps(obj, sort_keys=True, default=_default).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block: one builder
    of a cache entry at a time, across processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def obliviate_home() -> Path:
    """The model cache: `$OBLIVIATE_HOME`, else `$XDG_CACHE_HOME/obliviate`, else `~/.cache/obliviate`."""
    if os.environ.get("OBLIVIATE_HOME"):
        return Path(os.environ["OBLIVIATE_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "obliviate"


def build_dir_atomic(final: Path, build) -> Path:
    """Run `build(tmp_dir)` in a temporary sibling and rename it to `final`, unless `final` already
    exists: a directory is never seen half-written."""
    final = Path(final)
    if final.exists():
        return final
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


OUT_MARKER = ".obliviate"  # written into every run directory as it starts, so the tool knows its own


def check_out_dir(path: str | Path, ours: Iterable[str] = (OUT_MARKER,), force: bool = False,
                  flag: str = "--out") -> Path:
    """Refuse an output directory the tool must not write into, before any work is done.

    A path that is a file, or lies inside a file, is refused; so is a non-empty directory holding
    none of `ours` (the files by which the tool knows a run or bench of its own), unless `force`.
    Returns the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ObliviateError(f"{flag} {path}: is a file, not a directory; give a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ObliviateError(f"{flag} {path}: {parent} is a file, not a directory")
            break
    if path.is_dir() and not force and not any((path / name).exists() for name in ours):
        try:
            empty = next(path.iterdir(), None) is None
        except OSError as exc:
            raise ObliviateError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
        if not empty:
            raise ObliviateError(f"{flag} {path}: a non-empty directory this tool did not write; give a new "
                                 "or empty directory, or --force to write into it")
    return path


def mark_out_dir(path: str | Path) -> None:
    """Create `path` and mark it as the tool's own (`OUT_MARKER`), so later runs may write into it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OUT_MARKER).touch()
