"""The `obliviate` command line (typer): the thin face of `obliviate.api`.

Each module registers one command group on `app` when imported: catalog (methods, metrics), world,
run (unlearn, eval, demo), rerun, attack, bench (bench, report), stats (compare, seeds, protocol), labels
(reviews), compat. A command parses its options, calls the API and prints.

User errors (`ObliviateError`) print one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from rich.markup import escape

from obliviate.cli.app import app, console, err_console, show_warnings
from obliviate.errors import ObliviateError

# registered in this order, which is the order of `obliviate --help`
for _module in ("catalog", "compat", "attack", "bench", "stats", "labels", "run", "rerun", "world", "models"):
    importlib.import_module(f"obliviate.cli.{_module}")

__all__ = ["app", "console", "main"]


# Deprecation notices from transformers and peft about their own internals, raised on calls obliviate
# makes correctly, that say nothing a user can act on: (category, start of the message). Any other
# warning, these libraries' included, is still shown.
HARMLESS_WARNINGS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (FutureWarning, r"`torch_dtype` is deprecated"),
    (DeprecationWarning, r"`torch_dtype` is deprecated"),
    (UserWarning, r"Already found a `peft_config` attribute in the model"),
    (FutureWarning, r"The `use_cache` argument is deprecated"),
]


def quiet_harmless_warnings() -> None:
    """Ignore the known-harmless library deprecation notices (HARMLESS_WARNINGS), and only those."""
    import warnings

    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def main() -> None:
    """The console script's entry point."""
    from transformers.utils import logging as hf_logging

    quiet_harmless_warnings()
    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    show_warnings()
    try:
        app()
    except ObliviateError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
