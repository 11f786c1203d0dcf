"""Build (or reuse) the world's tokenizer, target and oracles in the model cache.

Layout, under `$OBLIVIATE_HOME` (default `$XDG_CACHE_HOME/obliviate`, else `~/.cache/obliviate`)::

    worlds/<preset>-seed<seed>-<key>/          a Llama world (the default architecture)
    worlds/<preset>-<arch>-seed<seed>-<key>/   a GPT-2 or mixture-of-experts world
        tokenizer/                 the world's BPE tokenizer
        target/                    trained on every trained person (all but the holdout)
        oracle-<split>/            trained on the retain people of <split> only
        oracle2-<split>/           the same data, another training seed (calibration)

`<key>` hashes the world config, the training recipe, the prompt format, `GENERATOR_VERSION` and,
for an architecture other than llama, its name and spec (`config.arch_key`), so a change to any of
them builds afresh instead of reusing a stale model. Every directory is an
ordinary Hugging Face directory (safetensors weights, config, tokenizer) plus `obliviate.json`
with the training summary.

Each directory is built under a temporary name and renamed into place, so a killed build never
leaves a half-written model that looks finished; a lock file stops two processes from training
the same model at once (the second waits, then reuses the first one's result).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from obliviate.errors import ConfigError
from obliviate.io import build_dir_atomic, file_lock, obliviate_home, stable_hash, write_json
from obliviate.models.loading import quiet_hf_progress
from obliviate.models.prompts import DEFAULT_FORMAT
from obliviate.world.config import GENERATOR_VERSION, arch_key, arch_recipe, check_arch, get_preset
from obliviate.world.generator import RETAIN_OF, World, get_world
from obliviate.world.tokenizer import train_tokenizer
from obliviate.world.train import train_model, training_examples

ROLES = ("target", "oracle", "oracle2")


@dataclass
class WorldModels:
    """Paths of a world's built models (None where not built) and the world itself."""

    world: World
    split: str
    root: Path
    tokenizer: Path
    target: Path | None = None
    oracle: Path | None = None
    oracle2: Path | None = None
    arch: str = "llama"


def cache_key(world: World, arch: str = "llama") -> str:
    """Hash of everything a trained world model depends on."""
    preset = get_preset(world.preset)
    return stable_hash({
        "version": GENERATOR_VERSION,
        "preset": preset.to_dict(),
        "seed": world.seed,
        "format": DEFAULT_FORMAT.state_v1(),
        **arch_key(arch),
    })


def world_dir(world: World, arch: str = "llama") -> Path:
    name = world.preset if arch == "llama" else f"{world.preset}-{check_arch(arch)}"
    return obliviate_home() / "worlds" / f"{name}-seed{world.seed}-{cache_key(world, arch)}"


def model_dir_name(role: str, split: str) -> str:
    return "target" if role == "target" else f"{role}-{split}"


def _trained_pids(world: World, role: str, split: str) -> list[str]:
    return world.splits["trained"] if role == "target" else world.retain_pids(split)


def _role_seed(world: World, role: str) -> int:
    return world.recipe.seed + (1 if role == "oracle2" else 0)


def build_world_models(
    preset: str = "small",
    seed: int = 0,
    split: str = "forget10",
    which: Sequence[str] = ("target", "oracle"),
    progress: bool = True,
    arch: str = "llama",
) -> WorldModels:
    """Build the requested models of a world (reusing the cache) and return their paths.

    `which` takes any of "target", "oracle", "oracle2"; `arch` one of `config.ARCHS`. Models
    already in the cache are returned without training, requested or not; the others are None.
    """
    check_arch(arch)
    unknown = set(which) - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown world model(s) {sorted(unknown)}; choose from {', '.join(ROLES)}")
    if split not in RETAIN_OF:
        raise ConfigError(f"unknown forget split {split!r}; choose one of {', '.join(RETAIN_OF)}")
    world = get_world(preset, seed)
    root = world_dir(world, arch)
    with file_lock(root / ".lock"):
        write_json(root / "world.json", {"preset": get_preset(preset).to_dict(), "seed": seed,
                                         "version": GENERATOR_VERSION, "splits": world.splits, **arch_key(arch)})
        tok_dir = build_dir_atomic(root / "tokenizer",
                                lambda tmp: train_tokenizer(world, world.recipe.vocab_size).save_pretrained(tmp))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir, trust_remote_code=False)
        paths: dict[str, Path | None] = {}
        for role in ROLES:
            final = root / model_dir_name(role, split)
            if role in which:
                build_dir_atomic(final, lambda tmp, role=role: _train_into(tmp, world, tokenizer, role, split, progress,
                                                                        arch))
            paths[role] = final if final.exists() else None
    return WorldModels(world=world, split=split, root=root, tokenizer=tok_dir, arch=arch, **paths)


def _train_into(out: Path, world: World, tokenizer, role: str, split: str, progress: bool, arch: str) -> None:
    pids = _trained_pids(world, role, split)
    examples = training_examples(world, tokenizer, pids)
    label = f"{world.preset}{'' if arch == 'llama' else '/' + arch}/seed{world.seed}: {model_dir_name(role, split)}"
    recipe = arch_recipe(world.recipe, arch)
    model, summary = train_model(examples, tokenizer, recipe, _role_seed(world, role), progress, label, arch=arch)
    with quiet_hf_progress():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(out / "obliviate.json", {
        "role": role, "split": None if role == "target" else split, "preset": world.preset, "arch": arch,
        "world_seed": world.seed, "people": len(pids), "version": GENERATOR_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "training": summary,
    })
