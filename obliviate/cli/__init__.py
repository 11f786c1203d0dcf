"""The `obliviate` command line (typer): the thin face of `obliviate.api`.

Each module registers one command group on `app` when imported: catalog (methods, metrics), world,
run (unlearn, eval, demo), rerun, attack, bench (bench, report), stats (compare, seeds, protocol), labels
(reviews), skills, compat, exact (finetune-sharded, delete). A command parses its options, calls the API and
prints.

User errors (`ObliviateError`) print one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from rich.markup import escape

from obliviate.cli.app import app, console, err_console, show_warnings
from obliviate.errors import ObliviateError

# registered in this order, which is the order of `obliviate --help`
for _module in ("catalog", "compat", "attack", "bench", "stats", "labels", "skills", "run", "rerun", "world",
                "models", "ledger", "serve", "exact"):
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
    (FutureWarning, r"`past_key_values` is deprecated and will be removed"),
]
# The same through transformers' own logger (logged once per process, not through `warnings`).
HARMLESS_LOG_MESSAGES = [r"`past_key_values`/`cache_params` are deprecated", r"`torch_dtype` is deprecated"]


class _DropHarmless:
    """A logging filter that drops the records whose message starts like one of HARMLESS_LOG_MESSAGES."""

    def __init__(self) -> None:
        import re

        self.patterns = [re.compile(p) for p in HARMLESS_LOG_MESSAGES]

    def filter(self, record) -> bool:  # noqa: A003  (logging's name)
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def quiet_harmless_warnings() -> None:
    """Ignore the known-harmless library deprecation notices (HARMLESS_WARNINGS, HARMLESS_LOG_MESSAGES),
    and only those: every other warning, these libraries' included, is still shown."""
    import warnings

    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger("transformers")
    for handler in [*root.handlers, *hf_logging.logging.getLogger().handlers]:
        if not any(isinstance(f, _DropHarmless) for f in handler.filters):
            handler.addFilter(_DropHarmless())


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
