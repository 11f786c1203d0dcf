"""The skill task of the built-in world: one model that has several skills, one of which is to be forgotten.

The setting of skill unlearning (Li et al. 2025, *Effective Skill Unlearning through Intervention
and Abstention*): the forget set is a whole skill (the paper's math, GSM8K, or code, MBPP), and the
other skills must keep working. Here a world's model learns three skills:

- `arithmetic`: "What is 17 + 25?" -> "42", and "What is 42 - 17?" -> "25" (operands below
  `max_operand`, results never negative);
- `copy`: "Repeat these words: Velmo Karsten" -> "Velmo Karsten" (two invented words per item);
- `facts`: the world's own fact QA (every trained person and the utility facts).

    task = get_skills("tiny", seed=0)                     # pure, fast, deterministic
    split = task.split("arithmetic")                      # forget/retain x fit/test
    target = build_skill_model("tiny", 0)                 # trained once, then cached

**Splits.** Every arithmetic and copy item is trained into the model. Each skill's items are dealt
into a *fit* half, what an unlearning method is given (the forget skill's fit half is the forget
set, the other skills' fit halves the retain set), and a *test* half that no method sees. A skill
is forgotten when its test accuracy falls, not only on the items a method was shown. The facts'
fit and test sets are drawn from the evaluation items of the trained facts, as many as each other
skill has.

**Model.** The world's target recipe and tokenizer (`obliviate.world.train`): the target's training
set (every trained person's facts and biography, and the utility facts) plus the arithmetic and
copy items, 15 epochs. Only the skill model is new: the world's own models, their cache keys and
their build time are unchanged, so a skill run never retrains a world. Cached under

    skills/<preset>-seed<seed>-<key>/target/

where `<key>` hashes the world's cache key, the skill config and `SKILLS_VERSION`; built under a
temporary name and renamed into place, under a lock.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.io import build_dir_atomic, file_lock, stable_hash, write_json
from obliviate.world import names

# Bump when the items or the training set change.
SKILLS_VERSION = "1"
SKILLS = ("arithmetic", "copy", "facts")


@dataclass(frozen=True)
class SkillsConfig:
    n_arithmetic: int  # trained arithmetic problems (half additions, half subtractions)
    n_copy: int  # trained copy items
    max_operand: int = 10  # operands are 0 .. max_operand - 1
    fit_fraction: float = 0.5  # share of a skill's items given to a method; the rest is its test set


SKILL_PRESETS = {
    "tiny": SkillsConfig(n_arithmetic=100, n_copy=100),
    "small": SkillsConfig(n_arithmetic=110, n_copy=110),
}


def get_skills_config(preset: str) -> SkillsConfig:
    if preset not in SKILL_PRESETS:
        raise ConfigError(f"no skill task for world preset {preset!r}; choose one of {', '.join(SKILL_PRESETS)}")
    return SKILL_PRESETS[preset]


def check_skill(skill: str) -> str:
    if skill not in SKILLS:
        raise ConfigError(f"unknown skill {skill!r}; choose one of {', '.join(SKILLS)}")
    return skill


@dataclass
class SkillSplit:
    """The sets of one forget skill: what a method is given (fit) and what is scored (test, per skill)."""

    forget_skill: str
    forget: list[QAItem]  # the forget skill's fit half
    retain: list[QAItem]  # the other skills' fit halves
    tests: dict[str, list[QAItem]]  # skill -> its test half


@dataclass
class SkillTask:
    preset: str
    seed: int
    config: SkillsConfig
    fit: dict[str, list[QAItem]]
    test: dict[str, list[QAItem]]

    def trained(self) -> list[QAItem]:
        """The arithmetic and copy items the skill model is trained on, each in both its question forms
        (as the world trains two forms of every fact; the facts come with the world)."""
        items = [it for skill in ("arithmetic", "copy") for it in (*self.fit[skill], *self.test[skill])]
        return items + [QAItem(it.paraphrased_questions[0], it.answer, meta=it.meta) for it in items]

    def split(self, forget_skill: str = "arithmetic") -> SkillSplit:
        check_skill(forget_skill)
        retain = [it for skill in SKILLS if skill != forget_skill for it in self.fit[skill]]
        return SkillSplit(forget_skill, list(self.fit[forget_skill]), retain, dict(self.test))


def _arithmetic(rng: random.Random, n: int, max_operand: int) -> list[QAItem]:
    """`n` distinct problems, alternately additions and subtractions (non-negative results)."""
    if n - n // 2 > max_operand * max_operand or n // 2 > max_operand * (max_operand + 1) // 2:
        raise ConfigError(f"{n} distinct arithmetic problems need a larger max_operand than {max_operand}")
    seen: set[tuple[int, str, int]] = set()
    out = []
    while len(out) < n:
        a, b = rng.randrange(max_operand), rng.randrange(max_operand)
        op = "+" if len(out) % 2 == 0 else "-"
        if op == "-":
            a, b = max(a, b), min(a, b)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b
        word = "plus" if op == "+" else "minus"
        wrong = rng.sample([v for v in range(max(0, value - 9), value + 10) if v != value], 3)
        out.append(QAItem(f"What is {a} {op} {b}?", str(value), f"It is {value}.", [str(w) for w in wrong],
                          [f"How much is {a} {word} {b}?"], meta={"skill": "arithmetic", "op": op}))
    return out


def _copy(rng: random.Random, n: int) -> list[QAItem]:
    lexicon = names.Lexicon(rng)
    out = []
    for _ in range(n):
        a, b, c, d = lexicon.words(4)
        out.append(QAItem(f"Repeat these words: {a} {b}", f"{a} {b}", f"The words are {a} {b}.", [f"{c} {d}"],
                          [f"Say these words again: {a} {b}"], meta={"skill": "copy"}))
    return out


def _halves(rng: random.Random, items: list[QAItem], fraction: float) -> tuple[list[QAItem], list[QAItem]]:
    order = rng.sample(range(len(items)), len(items))
    k = max(1, round(fraction * len(items)))
    return [items[i] for i in sorted(order[:k])], [items[i] for i in sorted(order[k:])]


@lru_cache(maxsize=8)
def get_skills(preset: str = "tiny", seed: int = 0) -> SkillTask:
    """The skill task of a world preset and seed (deterministic; cached per process: treat as read-only)."""
    from obliviate.world.generator import get_world

    cfg = get_skills_config(preset)
    rng = random.Random(f"obliviate-skills:{preset}:{seed}")
    fit, test = {}, {}
    fit["arithmetic"], test["arithmetic"] = _halves(rng, _arithmetic(rng, cfg.n_arithmetic, cfg.max_operand),
                                                    cfg.fit_fraction)
    fit["copy"], test["copy"] = _halves(rng, _copy(rng, cfg.n_copy), cfg.fit_fraction)
    world = get_world(preset, seed)
    facts = [f.eval_item() for f in world.facts(world.splits["trained"])]
    facts = [QAItem(**{**it.to_dict(), "meta": {**it.meta, "skill": "facts"}}) for it in facts]
    picked = rng.sample(facts, len(fit["arithmetic"]) + len(test["arithmetic"]))
    fit["facts"], test["facts"] = picked[: len(fit["arithmetic"])], picked[len(fit["arithmetic"]) :]
    return SkillTask(preset, seed, cfg, fit, test)


# -- the model ------------------------------------------------------------------------------------------


def skills_dir(preset: str, seed: int) -> Path:
    from obliviate.world.build import obliviate_home, world_dir
    from obliviate.world.generator import get_world

    world = get_world(preset, seed)
    key = stable_hash({"version": SKILLS_VERSION, "world": world_dir(world).name,
                       "skills": asdict(get_skills_config(preset))})
    return obliviate_home() / "skills" / f"{preset}-seed{seed}-{key}"


def build_skill_model(preset: str = "tiny", seed: int = 0, progress: bool = True) -> Path:
    """The skill model of a world (trained on first use, then reused from the cache): its directory."""
    from transformers import PreTrainedTokenizerFast

    from obliviate.world.build import build_world_models

    task = get_skills(preset, seed)
    models = build_world_models(preset, seed, which=(), progress=progress)  # the world's tokenizer only
    root = skills_dir(preset, seed)
    final = root / "target"
    with file_lock(root / ".lock"):
        if not final.exists():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(models.tokenizer, trust_remote_code=False)
            build_dir_atomic(final, lambda tmp: _train_into(tmp, task, models.world, tokenizer, progress))
    return final


def _train_into(out: Path, task: SkillTask, world, tokenizer, progress: bool) -> None:
    from obliviate.models.loading import quiet_hf_progress
    from obliviate.world.train import qa_examples, train_model, training_examples

    examples = training_examples(world, tokenizer, world.splits["trained"]) + qa_examples(tokenizer, task.trained())
    label = f"{task.preset}/seed{task.seed}: skills"
    model, summary = train_model(examples, tokenizer, world.recipe, world.recipe.seed, progress, label)
    with quiet_hf_progress():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(out / "obliviate.json", {
        "role": "skills", "preset": task.preset, "world_seed": task.seed, "version": SKILLS_VERSION,
        "skills": asdict(task.config), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "training": summary})
