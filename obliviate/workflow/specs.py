"""Model specs: which model a string names.

- `world:PRESET[@SEED][:ARCH]`: the built-in world's target (built and cached on first use), e.g.
  `world:tiny`, `world:small@1`, `world:tiny@0:moe`; ARCH is llama (the default), gpt2 or moe;
- a run directory (has artifact.json): the model that run produced;
- a local HF model directory or a hub name;
- a `.gguf` file, `gguf:PATH` or `gguf:NAME` (a packaged model such as `smollm2`): converted once into a
  cached HF directory under `$OBLIVIATE_HOME/gguf` (`obliviate.models.gguf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.errors import ObliviateError, ObliviateWarning
from obliviate.io import read_json

if TYPE_CHECKING:
    from obliviate.models.prompts import PromptFormat


@dataclass
class WorldRef:
    preset: str
    seed: int
    split: str
    arch: str = "llama"

    def as_dict(self) -> dict[str, Any]:
        out = {"preset": self.preset, "seed": self.seed, "split": self.split}
        return out if self.arch == "llama" else {**out, "arch": self.arch}


def parse_world_spec(spec: str, split: str = "forget10") -> WorldRef | None:
    """`world:PRESET[@SEED][:ARCH]` -> WorldRef (preset default small, seed 0, arch llama); else None."""
    if not spec.startswith("world:"):
        return None  # (before importing the world, which loads its training code)
    from obliviate.world.config import ARCHS

    body, _, arch = spec.removeprefix("world:").partition(":")
    preset, _, seed = body.partition("@")
    if arch and arch not in ARCHS:
        raise ObliviateError(f"model spec '{spec}': unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    try:
        return WorldRef(preset or "small", int(seed) if seed else 0, split, arch or "llama")
    except ValueError:
        raise ObliviateError(f"model spec '{spec}': expected world:PRESET[@SEED][:ARCH]") from None


def world_models(ref: WorldRef, which=("target", "oracle"), progress: bool = True):
    from obliviate.world import build_world_models

    return build_world_models(ref.preset, ref.seed, ref.split, which=which, progress=progress, arch=ref.arch)


def load_model_spec(spec: str | Path, split: str = "forget10", progress: bool = True,
                    fmt: PromptFormat | None = None, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, WorldRef | None) for any model spec, with its prompt format set on the tokenizer.

    The format is `fmt` when given, else the one a run recorded, else plain; a tokenizer with a chat
    template used in plain format without asking gets a one-line `ObliviateWarning`.
    """
    import warnings

    from obliviate.models.loading import load_model
    from obliviate.models.prompts import format_of, use_format, warn_unused_chat_template
    from obliviate.runs import is_run_dir, load_run_model, recorded_format

    ref = parse_world_spec(str(spec), split)
    if ref is not None:
        models = world_models(ref, which=("target",), progress=progress)
        model, tok = load_model(models.target, device=device, dtype=dtype)
    elif is_run_dir(spec):
        model, tok = load_run_model(spec, device=device, dtype=dtype)
        cfg = read_json(Path(spec) / "config.json") if (Path(spec) / "config.json").exists() else {}
        world = cfg.get("world")
        ref = WorldRef(**world) if world else None
    else:
        from obliviate.models.gguf import resolve_gguf_spec

        model, tok = load_model(resolve_gguf_spec(str(spec), progress=progress), device=device, dtype=dtype)
    if fmt is not None:
        use_format(tok, fmt)
    elif ref is None and (not is_run_dir(spec) or recorded_format(spec) is None):
        line = warn_unused_chat_template(tok, format_of(tok))
        if line:
            warnings.warn(f"{spec}: {line}", ObliviateWarning, stacklevel=2)
    return model, tok, ref
