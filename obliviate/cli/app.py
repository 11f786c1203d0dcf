"""The typer app, its sub-apps, the consoles and the `--json` option that every command module shares."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a language model forget chosen data, and prove that it did.")
world_app = typer.Typer(no_args_is_help=True, help="The built-in synthetic world.")
compat_app = typer.Typer(no_args_is_help=True, help="Score other tools' evaluation logs.")


def device_line() -> str:
    """The device a run would use: CUDA (with the GPU's name), MPS or the CPU."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"cuda ({torch.cuda.get_device_name(0)}" + (f", {count} devices)" if count > 1 else ")")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return f"cpu ({torch.get_num_threads()} threads)"


def version_text() -> str:
    """`obliviate --version`: obliviate's version (and commit), torch, transformers and the device."""
    import torch
    import transformers

    from obliviate.runs import git_commit
    from obliviate.version import __version__

    git = git_commit()
    commit = f" (git {git['commit'][:12]}{', modified' if git['dirty'] else ''})" if git else ""
    return (f"obliviate {__version__}{commit}\ntorch {torch.__version__}\ntransformers {transformers.__version__}\n"
            f"device {device_line()}")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the versions of obliviate, torch, transformers "
                                                     "and the device, then exit")] = False,
          trust_remote_code: Annotated[bool, typer.Option(
              "--trust-remote-code", help="let a model directory's own Python code (and lm-eval's !function) run "
                                          "when it loads (off: such a model or task is refused)")] = False) -> None:
    """Make a language model forget chosen data, and prove that it did."""
    from obliviate.models.loading import allow_remote_code

    allow_remote_code(trust_remote_code)


app.add_typer(world_app, name="world")
app.add_typer(compat_app, name="compat")

console = Console()
if not console.is_terminal:
    console = Console(width=160)  # piped output: do not wrap tables at 80 columns
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]
ReportToOpt = Annotated[str | None, typer.Option(
    "--report-to", metavar="TRACKERS", help="log losses, the method's logs, the config and the final metrics to "
    "experiment trackers: tensorboard, wandb, mlflow (comma-separated)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="write into a non-empty --out this tool did not write "
                                                        "(else refused, before any work): files named as the "
                                                        "tool's own are written over, nothing else is touched; "
                                                        "with unlearn --resume, resume a checkpoint written with "
                                                        "another config")]

# How questions become prompts (obliviate.models.prompts); a run records its format, eval and attack reuse it.
PromptOpt = Annotated[str | None, typer.Option(
    "--prompt", help="prompt format: plain ('Question: ...\\nAnswer:') or chat (the tokenizer's chat template); "
    "default: the run's, else plain")]
SystemPromptOpt = Annotated[str | None, typer.Option("--system-prompt", help="with --prompt chat: a system turn")]
ChatKwargsOpt = Annotated[list[str] | None, typer.Option(
    "--chat-kwargs", help="with --prompt chat: a template variable KEY=VALUE, e.g. date_string='10 Apr 2025'")]
MaxNewTokensOpt = Annotated[int | None, typer.Option(
    "--max-new-tokens", help="generation budget (default: 32 plain, 200 chat as TOFU)")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", help="a benchmark: world:SPLIT, tofu:forget01|05|10[@DIR], muse:news|books[@DIR], rwku[@DIR] or "
    "wmdp[@DIR] (a local copy, else the hub; see docs/benchmarks.md)")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")]


def print_json(obj: Any) -> None:
    """Print `obj` as indented JSON (numpy values and paths included)."""
    from obliviate.io import _default

    typer.echo(json.dumps(obj, indent=2, default=_default))


def warn(line: str) -> None:
    """A one-line warning on the console."""
    console.print(f"[yellow]warning:[/] {line}", highlight=False)


def prompt_format(prompt: str | None, system_prompt: str | None, chat_kwargs: list[str] | None,
                  max_new_tokens: int | None):
    """The PromptFormat the prompt options name, or None when none is given (the run's or plain)."""
    from obliviate.errors import ConfigError
    from obliviate.models.prompts import make_format, parse_chat_kwargs

    if prompt is None:
        if system_prompt is not None or chat_kwargs:
            raise ConfigError("--system-prompt and --chat-kwargs need --prompt chat")
        if max_new_tokens is None:
            return None
        prompt = "plain"
    return make_format(prompt, system_prompt, parse_chat_kwargs(chat_kwargs), max_new_tokens)


def show_warnings() -> None:
    """Print obliviate's own warnings as one line each on stderr: `warning: ...`."""
    import warnings

    from obliviate.errors import ObliviateWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ObliviateWarning):
            err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
