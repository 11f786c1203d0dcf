"""Two sets of defaults per method, as data: the paper's (7B-scale models) and the world's (tuned here).

A method's config fields default to the built-in world's values, tuned on its tiny models. Its
`paper_defaults` (a class attribute) overrides them with the values from the paper's code, for
real models: TOFU's fine-tuning recipe (Maini et al. 2024; open-unlearning's `finetune` defaults)
is lr 1e-5, 5 epochs, batch 4 × 4 accumulation, weight decay 0.01, one epoch of warm-up, and each
method adds what its own paper changes (NPO: 10 epochs; RMU: WMDP's recipe; SSD: α = 10).

`--defaults auto` (the default) means world for `world:` models and paper for every other model: the
world's learning rates are 20-200× the papers', which would wreck a 7B model silently.
"""

from __future__ import annotations

from typing import Any, Literal

from obliviate.errors import ConfigError

Defaults = Literal["paper", "world", "auto"]
DEFAULT_MODES = ("paper", "world", "auto")

# TOFU's fine-tuning recipe for 7B models: every fine-tuning method starts from it.
TOFU_FINETUNE: dict[str, Any] = {"lr": 1e-5, "epochs": 5, "batch_size": 4, "grad_accum": 4, "weight_decay": 0.01,
                                 "warmup_ratio": 0.2}


def resolve_mode(mode: str, model_spec: str) -> str:
    """"paper" or "world": `auto` picks world for the built-in world's models, paper for any other."""
    if mode not in DEFAULT_MODES:
        raise ConfigError(f"--defaults {mode!r}: choose paper, world or auto")
    if mode != "auto":
        return mode
    return "world" if str(model_spec).startswith("world:") or _is_world_run(model_spec) else "paper"


def _is_world_run(spec: str) -> bool:
    from pathlib import Path

    from obliviate.io import read_json

    config = Path(spec) / "config.json"
    return (Path(spec) / "artifact.json").is_file() and config.is_file() and bool(read_json(config).get("world"))


def paper_values(method_cls) -> dict[str, Any]:
    """The paper's defaults of a method, restricted to its config's fields."""
    fields = method_cls.Config.model_fields
    return {k: v for k, v in getattr(method_cls, "paper_defaults", {}).items() if k in fields}


def default_values(method_cls, mode: str) -> dict[str, Any]:
    """The values `mode` ("paper" or "world") sets before the user's config file and --set."""
    return paper_values(method_cls) if mode == "paper" else {}


def differences_from_paper(method_cls, config) -> dict[str, dict[str, Any]]:
    """{field: {"value": used, "paper": the paper's}} for every field whose value is not the paper's."""
    paper = paper_values(method_cls)
    used = config.model_dump()
    return {k: {"value": used[k], "paper": v} for k, v in paper.items() if used.get(k) != v}


def describe_defaults(method_cls, mode: str, config) -> str:
    """One line: which set of defaults a run used and what differs from the paper."""
    paper = paper_values(method_cls)
    if not paper:
        return f"defaults: {mode} ({method_cls.name} has no separate paper defaults)"
    diff = differences_from_paper(method_cls, config)
    shown = ", ".join(f"{k} {_short(d['value'])} (paper {_short(d['paper'])})" for k, d in diff.items())
    head = f"defaults: {mode} (" + ", ".join(f"{k} {_short(v)}" for k, v in paper.items() if k in ("lr", "epochs"))
    return head + ")" + (f"; differs from the paper: {shown}" if shown else "; every value is the paper's")


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
