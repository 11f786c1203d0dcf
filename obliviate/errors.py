"""One exception type for user errors.

The CLI turns an `ObliviateError` into a single line on stderr and exit code 2, never a traceback.
`assert` is kept for internal invariants only.
"""

from __future__ import annotations

from pathlib import Path


class ObliviateError(Exception):
    """A user-facing error: bad input, bad config, missing file."""

    exit_code: int = 2


class DataError(ObliviateError):
    """A problem in an input file, located as `path:line: message`."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(ObliviateError):
    """An unknown method, an unknown or ill-typed config key, or an impossible option."""


class ObliviateWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one line."""


class NotFound(ObliviateError, KeyError):
    """No such record (e.g. a forget request id the ledger does not hold)."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""
