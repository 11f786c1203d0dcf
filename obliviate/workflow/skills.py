"""Skill unlearning as a workflow: the skill task's spec, evaluating a model on it, and a small bench.

A skill task is named `PRESET[@SEED][/SKILL]` (e.g. `tiny@0/arithmetic`): the world preset and seed
of `obliviate.world.skills`, and the skill to forget (default arithmetic).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError
from obliviate.io import write_json

RESULTS = "skill_results.json"


@dataclass(frozen=True)
class SkillRef:
    preset: str = "tiny"
    seed: int = 0
    skill: str = "arithmetic"

    def __str__(self) -> str:
        return f"{self.preset}@{self.seed}/{self.skill}"


def parse_skill_spec(spec: str) -> SkillRef:
    """`PRESET[@SEED][/SKILL]` -> SkillRef; a one-line error for anything else."""
    from obliviate.world.skills import check_skill, get_skills_config

    body, _, skill = spec.partition("/")
    preset, _, seed = body.partition("@")
    try:
        ref = SkillRef(preset or "tiny", int(seed) if seed else 0, skill or "arithmetic")
    except ValueError:
        raise ConfigError(f"skill task {spec!r}: expected PRESET[@SEED][/SKILL], e.g. tiny@0/arithmetic") from None
    get_skills_config(ref.preset)
    check_skill(ref.skill)
    return ref


def load_skill_target(spec: str, ref: SkillRef, progress: bool = True):
    """(model, tokenizer) for `skills` (the task's skill model) or any other model spec (a run, a directory)."""
    from obliviate.models.loading import load_model
    from obliviate.workflow.specs import load_model_spec
    from obliviate.world.skills import build_skill_model

    if spec == "skills":
        return load_model(build_skill_model(ref.preset, ref.seed, progress=progress))
    model, tok, _ = load_model_spec(spec, progress=progress)
    return model, tok


def evaluate_skills(model, tokenizer, ref: SkillRef, out: Path | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy and abstention per skill on the task's test halves; written to `out/skill_results.json`."""
    from obliviate.evals.skills import skill_aggregates, skill_scores
    from obliviate.world.skills import get_skills

    scores = skill_scores(model.eval(), tokenizer, get_skills(ref.preset, ref.seed).split(ref.skill).tests)
    payload = {"suite": "skill", "task": str(ref), "forget_skill": ref.skill, **(extra or {}),
               "aggregates": skill_aggregates(scores, ref.skill),
               "skills": {k: {m: v for m, v in row.items() if m != "answers"} for k, row in scores.items()},
               "answers": {k: row["answers"] for k, row in scores.items()}}
    if out is not None:
        write_json(Path(out) / RESULTS, payload)
    return payload


def skill_bench(ref: SkillRef, methods: list[str], out: Path, overrides: dict[str, dict[str, Any]] | None = None,
                progress: bool = True, defaults: str = "world") -> dict[str, dict[str, Any]]:
    """The skill model and each method (its `defaults`, world or paper, plus `overrides[name]`) on the task.

    Returns name -> payload.
    Each method unlearns the forget skill's fit half against the other skills' fit halves; every
    payload scores the test halves. Written to `out/<name>/skill_results.json` and `out/skill_bench.json`.
    """
    from obliviate.config import build_config
    from obliviate.methods import get_method
    from obliviate.methods.defaults import default_values
    from obliviate.world.skills import get_skills

    if defaults not in ("world", "paper"):
        raise ConfigError(f"--defaults {defaults!r}: choose world or paper")
    split = get_skills(ref.preset, ref.seed).split(ref.skill)
    model, tok = load_skill_target("skills", ref, progress)
    rows = {"target": evaluate_skills(model, tok, ref, out / "target")}
    for name in methods:
        cls = get_method(name)
        if cls.family != "inference-time":
            raise ConfigError(f"skills bench: {name} changes weights; the bench runs training-free methods only")
        values = {**default_values(cls, defaults), **(overrides or {}).get(name, {})}
        method = cls(build_config(cls.Config, values))
        start = time.perf_counter()
        summary = method.unlearn(model, tok, split.forget, split.retain, out / name, progress=progress)
        wrapped = method.intervention.wrap(model, tok)
        rows[name] = evaluate_skills(wrapped, tok, ref, out / name, extra={
            "method": name, "config": method.config.model_dump(), "summary": summary,
            "seconds": round(time.perf_counter() - start, 2)})
    write_json(out / "skill_bench.json", {"task": str(ref), "defaults": defaults, "rows": {
        name: {"aggregates": p["aggregates"], **({"summary": p["summary"]} if "summary" in p else {})}
        for name, p in rows.items()}})
    return rows


def parse_method_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`["neuron_adjust:percent=3"]` -> `{"neuron_adjust": {"percent": "3"}}` (pydantic coerces the strings)."""
    from obliviate.config import parse_overrides

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        method, sep, rest = pair.partition(":")
        if not sep or not method.strip():
            raise ConfigError(f"--set {pair!r}: expected METHOD:KEY=VALUE")
        out.setdefault(method.strip(), {}).update(parse_overrides([rest]))
    return out
