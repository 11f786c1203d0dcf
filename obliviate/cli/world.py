"""CLI commands `world build|check|export`: the built-in synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from obliviate.cli.app import JsonOpt, console, print_json, world_app

Preset = Annotated[str, typer.Option(help="world preset: tiny, small or full")]
Seed = Annotated[int, typer.Option(help="world seed")]
Split = Annotated[str, typer.Option(help="forget split: forget01, forget05 or forget10")]
Arch = Annotated[str, typer.Option(help="world model architecture: llama, gpt2 or moe (Mixtral-style)")]


@world_app.command("build")
def world_build(preset: Preset = "small", seed: Seed = 0, split: Split = "forget10",
                oracle2: Annotated[bool, typer.Option(help="also train the second oracle")] = False,
                arch: Arch = "llama") -> None:
    """Generate the world and train (or reuse) its target and oracle models."""
    from obliviate.world import build_world_models

    which = ("target", "oracle", "oracle2") if oracle2 else ("target", "oracle")
    models = build_world_models(preset, seed, split, which=which, progress=True, arch=arch)
    console.print(f"target: {models.target}\noracle: {models.oracle}" + (f"\noracle2: {models.oracle2}"
                                                                         if models.oracle2 else ""))


@world_app.command("check")
def world_check(preset: Preset = "small", seed: Seed = 0, split: Split = "forget10", as_json: JsonOpt = False,
                arch: Arch = "llama") -> None:
    """Print the world's calibration table (pass/fail per line); exit 1 if any line fails."""
    from obliviate.world.check import check_world, format_check_table

    rows = check_world(preset, seed, split, arch=arch)
    if as_json:
        print_json([r.__dict__ for r in rows])
    else:
        console.print(format_check_table(rows))
    if not all(r.passed for r in rows):
        raise typer.Exit(1)


@world_app.command("export")
def world_export(out: Path, preset: Preset = "small", seed: Seed = 0, split: Split = "forget10") -> None:
    """Write the world's forget/retain/holdout/utility sets as JSONL files."""
    from obliviate.world import get_world

    get_world(preset, seed).export(out, split)
    console.print(f"wrote {out}")


