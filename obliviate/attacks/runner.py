"""Running attacks: the three models, the facts, the same settings for each model, the reports.

`load_models` resolves what `obliviate attack` is given: RUN (a run directory or any model spec,
see `obliviate.workflow`), the facts, the target and the oracle.

- **Facts**: `--data SPEC` or `--forget FILE [--retain FILE]` when given; else what the run was
  unlearned from (its recorded data spec, or its forget and retain files); else its world (or
  `--world PRESET@SEED`).
- **Target** (the model before unlearning): `--target`; else the world's target for the world's
  facts; else the run's base model (artifact.json's `base_model` for adapter and intervention runs,
  config.json's `model` otherwise).
- **Oracle**: `--oracle`; else the world's exact retrain for the world's facts; else none, and
  the recovery is relative to the target (base.py).

Every model is used in RUN's prompt format (the run's recorded one, or `fmt`).
`run_attacks` runs each attack on each model and compares them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from obliviate.attacks import ORDER, get_attack
from obliviate.attacks.base import ROLES, AttackSets, RunInfo, run_info
from obliviate.attacks.facts import data_sets, world_sets
from obliviate.config import build_config
from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import read_json
from obliviate.progress import make_progress


@dataclass
class Subjects:
    """What the attacks judge: the run, the models by role (model, tokenizer), the facts."""

    run: RunInfo
    models: dict[str, tuple[Any, Any]]
    sets: AttackSets
    sources: dict[str, str] = field(default_factory=dict)  # role -> where the model came from
    world: Any = None  # the WorldRef, when the facts come from the built-in world
    facts: str = ""  # where the facts come from, in words


def run_config(spec: str | Path) -> dict[str, Any]:
    """A run directory's config.json ({} for a plain model spec or a run without one)."""
    path = Path(spec) / "config.json"
    return read_json(path) if (Path(spec) / "artifact.json").is_file() and path.is_file() else {}


def base_model(spec: str | Path) -> str | None:
    """The model a run started from: artifact.json's `base_model` (adapter, intervention runs), else
    config.json's `model`; None when `spec` is not a run directory."""
    if not (Path(spec) / "artifact.json").is_file():
        return None
    artifact = read_json(Path(spec) / "artifact.json")
    return artifact.get("base_model") or run_config(spec).get("model")


def _facts(spec: str, ref, data: str | None, forget: str | None, retain: str | None, mapping: Sequence[str],
           world_given: bool):
    """(AttackSets, WorldRef of the world they come from or None, a description of where they come from)."""
    from obliviate.workflow import parse_world_spec

    if data is not None and forget is not None:
        raise ConfigError("give --data or --forget/--retain, not both")
    if data is not None and data.startswith("world:"):
        if ref is None:
            raise ConfigError(f"--data {data}: the world's facts need a world model (RUN from world:PRESET or "
                              "--world PRESET)")
        ref = parse_world_spec(f"world:{ref.preset}@{ref.seed}:{ref.arch}", data.removeprefix("world:"))
    elif data is not None or forget is not None:
        return data_sets(data, forget, retain, mapping), None, data or f"{forget}" + (f", {retain}" if retain else "")
    elif not world_given:
        config = run_config(spec)
        if config.get("data"):
            return data_sets(data=config["data"]), None, config["data"]
        if config.get("forget"):
            recorded = config["forget"], config.get("retain")
            return (data_sets(None, recorded[0], recorded[1], mapping), None,
                    recorded[0] + (f", {recorded[1]}" if recorded[1] else ""))
    if ref is None:
        raise ObliviateError(f"{spec}: no facts to attack: pass --forget FILE [--retain FILE], --data SPEC or "
                             "--world PRESET[@SEED] (the run records no data and no world)")
    return world_sets(ref.preset, ref.seed, ref.split), ref, f"world:{ref.preset}@{ref.seed} {ref.split}"


def load_models(spec: str, oracle: str | None = None, target: str | None = None, world: str | None = None,
                split: str = "forget10", progress: bool = True, data: str | None = None, forget: str | None = None,
                retain: str | None = None, mapping: Sequence[str] = (), fmt=None) -> Subjects:
    """Load RUN, the facts, its target and its oracle if any (see the module docstring).

    `fmt` (a PromptFormat) overrides the run's prompt format for every model.
    """
    from obliviate.models.loading import load_model
    from obliviate.models.prompts import format_of, use_format
    from obliviate.workflow import load_model_spec, parse_world_spec, world_models

    info = run_info(spec)
    model, tok, ref = load_model_spec(spec, split, progress=progress, fmt=fmt)
    fmt = format_of(tok)
    if world is not None:
        ref = parse_world_spec(f"world:{world}", ref.split if ref else split)
    sets, ref, facts = _facts(str(spec), ref, data, forget, retain, mapping, world is not None)
    models = {"unlearned": (model, tok)}
    sources = {"unlearned": str(spec)}
    if ref is None and target is None:
        target = base_model(spec)
        if target is None:
            raise ObliviateError(f"{spec}: not a run directory, so its model before unlearning is unknown; pass "
                                 "--target MODEL")
    built = None
    if ref is not None:
        which = tuple(r for r, s in (("target", target), ("oracle", oracle)) if s is None)
        built = world_models(ref, which=which, progress=progress)
    for role, given in (("oracle", oracle), ("target", target)):
        default = getattr(built, role, None) if built is not None else None
        if given is not None:
            m, t, _ = load_model_spec(given, ref.split if ref else split, progress=False, fmt=fmt)
        elif role == "target" and str(spec).startswith("world:"):
            m, t = model, tok  # RUN is the world's target itself: one model, two roles
        elif default is not None:
            m, t = load_model(default)
            use_format(t, fmt)
        else:
            continue  # no oracle: the recovery is relative to the target
        models[role], sources[role] = (m, t), str(given or default or spec)
    return Subjects(info, models, sets, sources, ref, facts)


def attack_configs(names: Sequence[str], pairs: Sequence[str]) -> dict[str, Any]:
    """Each attack's config from `--set key=value` (every attack with that field) or `attack.key=value`."""
    from obliviate.config import parse_overrides

    values: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in parse_overrides(pairs).items():
        scope, dot, field_name = key.rpartition(".")
        if dot and scope not in values:
            raise ConfigError(f"--set {key}: '{scope}' is not among the attacks run ({', '.join(names)})")
        targets = [scope] if dot else [n for n in names if field_name in get_attack(n).Config.model_fields]
        if not targets:
            raise ConfigError(f"--set {key}: no attack run here has a field '{field_name}'")
        for name in targets:
            values[name][field_name] = value
    return {n: build_config(get_attack(n).Config, v, source=f"--set ({n})") for n, v in values.items()}


@dataclass
class AttackRun:
    """Reports by attack, and the per-item rows behind them (attack -> role -> rows)."""

    reports: dict[str, dict[str, Any]]
    rows: dict[str, dict[str, list[dict]]]


def applicable(names: Sequence[str], run: RunInfo, configs: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{attack: reason} for the attacks whose premise does not hold for `run` (no model needed)."""
    reasons = {}
    for name in names:
        ok, reason = get_attack(name)((configs or {}).get(name)).applies_to(run)
        if not ok:
            reasons[name] = reason
    return reasons


def run_attacks(names: Sequence[str], subjects: Subjects | RunInfo, configs: Mapping[str, Any] | None = None,
                progress: bool = True, stop_on_error: bool = False) -> AttackRun:
    """Run each attack on each model with the same config; an attack that cannot run is reported with why.

    `subjects` may be a bare RunInfo when no attack applies (nothing is loaded then).
    """
    names = sorted(dict.fromkeys(names), key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    run = subjects if isinstance(subjects, RunInfo) else subjects.run
    skip = applicable(names, run, configs)
    if isinstance(subjects, RunInfo) and set(names) - set(skip):
        raise ValueError("attacks that apply need the models: pass Subjects, not a RunInfo")
    roles = [r for r in ROLES if r in getattr(subjects, "models", {})]
    out = AttackRun({}, {})
    with _threads(getattr(subjects, "sets", None)):
        _run_all(names, subjects, roles, skip, configs, progress, stop_on_error, out)
    return out


def _threads(sets: AttackSets | None):
    """The world's small models run fastest on one thread (obliviate.world.train.default_threads)."""
    if sets is None or sets.world is None:
        return contextlib.nullcontext()
    from obliviate.world.train import cpu_threads, default_threads

    return cpu_threads(default_threads(sets.world.recipe))


def _run_all(names, subjects, roles, skip, configs, progress, stop_on_error, out: AttackRun) -> None:
    run = subjects if isinstance(subjects, RunInfo) else subjects.run
    who = f"{Path(run.spec).name or run.spec} · attacks"  # the run's name on the bar
    bar = make_progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), disable=not progress)
    with bar:
        task = bar.add_task(escape(who), total=len(names) * len(roles))
        for name in names:
            attack = get_attack(name)((configs or {}).get(name))
            if name in skip:
                out.reports[name] = {"attack": name, "status": "not applicable", "reason": skip[name]}
                bar.advance(task, len(roles))
                continue
            missing = list(attack.lacks(subjects.sets).values())
            t0, outputs, done = time.perf_counter(), {}, {}
            try:
                for role in roles:
                    bar.update(task, description=escape(f"{who} · {name}: {role}"))
                    model, tok = subjects.models[role]
                    if id(model) not in done:  # one model in two roles is attacked once
                        done[id(model)] = attack.run(model, tok, subjects.sets)
                    outputs[role] = done[id(model)]
                    bar.advance(task)
            except ObliviateError as exc:
                if stop_on_error:
                    raise
                out.reports[name] = {"attack": name, "status": "cannot judge", "reason": str(exc),
                                     **({"missing": missing} if missing else {})}
                bar.update(task, completed=(names.index(name) + 1) * len(roles))
                continue
            report = attack.compare(outputs)
            out.reports[name] = {"attack": name, "status": "ok", **report, "config": attack.config.model_dump(),
                                 "seconds": time.perf_counter() - t0, **({"missing": missing} if missing else {})}
            out.rows[name] = {role: o["rows"] for role, o in outputs.items()}
