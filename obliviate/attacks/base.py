"""The attack interface, the one recovery measure every attack reports, and the attack registry.

An attack asks the same question of three models, with the same settings and the same items:

- the **unlearned** model (the run being judged),
- the **oracle**, trained without the forget set (it never knew the facts),
- the **target**, trained with it and not unlearned (it knows them).

The oracle is optional (see "Without an oracle" below).

`Attack.run(model, tokenizer, sets)` returns per-item rows for one model; `Attack.compare` lines
the three up. A row is one attacked question about one forget fact (`key`), in one form of the
attack (`variant`), with the per-item measures of `obliviate.attacks.measure`:

- `knows`: the true answer is ranked first among itself and its wrong alternatives (recognition);
- `answers`: the greedy answer states it (recall), where the attack generates.

**Recovery** (defined here once, used by every attack). With s the mean of `knows` over an
attack's items,

    recovery = (s_unlearned - s_oracle) / (s_target - s_oracle)

0 means the attack gets no more out of the unlearned model than out of a model that never saw the
facts; 1 means as much as out of the model before unlearning. Subtracting the oracle removes what
the attack itself supplies (a hint, a list of options, the chance of a guess): an attack that also
"recovers" facts from the oracle is measuring leakage from the attack, not residual knowledge.
Dividing by the target's gap puts attacks of different difficulty on one scale. The value is not
clipped, so sampling noise can take it below 0 or above 1.

**Without an oracle** (a run unlearned from the user's data has none; `--oracle` gives one), the
baseline is chance, and the recovery is relative to the target:

    recovery = (s_unlearned - s_chance) / (s_target - s_chance)

the share of the target's above-chance knowledge that the attack gets out of the unlearned model
(0: the unlearned model only guesses, 1: it knows what the target knows). s_chance is what a
guessing model scores on the same items: 1/(k+1) for an item with k wrong alternatives under
`knows`, 0 under `answers`. Unlike the oracle, chance does not absorb what the attack itself gives
away (a hint in the context, the options listed in the prompt), so without an oracle a recovery
can also count what a model works out from the attack; read it as an upper bound.

**Measure.** `knows` needs wrong alternatives (the items' perturbed answers); on data without any,
the headline measure is `answers` (the greedy answer states the true answer).

**Informative forms.** A form whose target-minus-oracle gap is below `MIN_GAP`, or whose gap's
95% CI reaches 0 (a handful of items), cannot tell a model that knows from one that does not (a
reverse query, for example, which models trained in one direction rarely answer even for facts they
know). It is reported, but left out of the attack's headline, and when no form is informative the
recovery is None with that reason, never a number. The choice looks only at the target and the
oracle, never at the unlearned model, so it does not bias the recovery. `reference_variants` (the
unquantised model, relearning step 0) are reported beside the attack and never pooled into it.

**Uncertainty.** A 95% percentile bootstrap over facts: all rows of a fact are resampled together,
and the same resample is applied to the three models, so the interval is paired.

**Robustness** = 1 - clip(recovery, 0, 1): 1 is as robust as the oracle, 0 gives everything back.
`obliviate.attacks.summary` takes the harmonic mean of the attacks' robustness, so one attack that
recovers everything pulls the summary to 0 (a harmonic mean of the recoveries themselves would do
the opposite and hide it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from obliviate.config import StrictConfig
from obliviate.data.schema import QAItem
from obliviate.io import read_json

MIN_GAP = 0.2  # least target-minus-oracle gap for a form to count as able to detect knowledge
N_BOOT = 1000
ROLES = ("unlearned", "oracle", "target")
MEASURES = ("knows", "answers")
RELATIVE_TO_TARGET = ("no oracle: recovery relative to the target, (unlearned - chance) / (target - chance), the "
                      "share of the target's above-chance knowledge that the attack gets out of the unlearned model")


# ---------------------------------------------------------------------------------------------
# What an attack judges, and on which facts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """The run an attack judges: how its model was made decides which attacks make sense."""

    spec: str  # RUN as given on the command line
    kind: str = "weights"  # artifact kind (obliviate.runs): weights, adapter or intervention
    method: str | None = None
    path: Path | None = None  # the run directory; None for a plain model spec

    @property
    def inference_time(self) -> bool:
        """Whether the weights are the original model's (an intervention wraps them)."""
        return self.kind == "intervention"


def run_info(spec: str | Path) -> RunInfo:
    """RunInfo of a run directory (from its artifact.json), or of a plain model spec."""
    from obliviate.runs import is_run_dir

    if is_run_dir(spec):
        artifact = read_json(Path(spec) / "artifact.json")
        return RunInfo(str(spec), artifact.get("kind", "weights"), artifact.get("method"), Path(spec))
    return RunInfo(str(spec))


@dataclass
class AttackSets:
    """The facts under attack.

    `forget` holds one evaluation item per forget fact; `retain` the facts every model keeps (the
    probe trains on them; few-shot hints come from them); `forget_train` the forget facts in every
    trained question form (relearning data; `forget` stands in when None). `world` is the built-in
    world when the facts come from it: forms that need its structure (biography templates, reverse
    queries) are skipped without it.
    """

    forget: list[QAItem]
    retain: list[QAItem]
    forget_train: list[QAItem] | None = None
    world: Any = None
    split: str | None = None


class AttackConfig(StrictConfig):
    """Settings every attack has; the same values are used on all three models."""

    seed: int = Field(0, description="seed for option order, splits and initialisation")
    batch_size: int = Field(32, description="prompts per forward pass when scoring and generating", ge=1)
    max_new_tokens: int | None = Field(None, description="greedy tokens generated per answer (default: the prompt "
                                       "format's budget, 32 plain, 200 chat)", ge=1)
    generate: bool = Field(True, description="also generate answers (the 'answers' measure); off: scoring only")


# ---------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------


class Attack(ABC):
    """A robustness attack. Subclasses set the class fields and implement `run`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    reference_variants: ClassVar[tuple[str, ...]] = ()
    in_summary: ClassVar[bool] = True  # False: a reference row, left out of the harmonic mean

    def __init__(self, config: AttackConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def applies_to(self, run: RunInfo) -> tuple[bool, str]:
        """(whether the attack's premise holds for `run`, the reason when it does not)."""
        return True, ""

    def lacks(self, sets: AttackSets) -> dict[str, str]:
        """{form: one line} for the forms that need what the facts lack (they are left out; the rest runs)."""
        return {}

    @abstractmethod
    def run(self, model, tokenizer, sets: AttackSets, progress: bool = False) -> dict[str, Any]:
        """Attack one model: {"rows": [per-item dicts], "extra": {attack-specific details}}."""

    def compare(self, outputs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """The report of the attack from each role's `run` output (keys among ROLES)."""
        report = compare_rows({role: out["rows"] for role, out in outputs.items()}, self.reference_variants,
                              seed=self.config.seed)
        extras = {role: out.get("extra") for role, out in outputs.items() if out.get("extra")}
        if extras:
            report["extra"] = extras
        return report


ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add an attack to the table `obliviate attack` reads."""
    ATTACKS[cls.name] = cls
    return cls


# ---------------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------------


def recovery(unlearned: float, oracle: float, target: float, min_gap: float = MIN_GAP) -> float | None:
    """(s_u - s_o) / (s_t - s_o); None when the target beats the oracle by less than `min_gap`."""
    gap = target - oracle
    if not np.isfinite(gap) or gap < min_gap:
        return None
    return float((unlearned - oracle) / gap)


def robustness(rec: float | None) -> float | None:
    """1 - clip(recovery, 0, 1): 1 as robust as the oracle, 0 everything recovered."""
    return None if rec is None else float(1.0 - min(max(rec, 0.0), 1.0))


def harmonic_mean(values: Sequence[float]) -> float | None:
    """n / sum(1/v); 0 if any value is 0; None for no values."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    if min(vals) <= 0:
        return 0.0
    return float(len(vals) / sum(1.0 / v for v in vals))


def _aligned(rows_by_role: Mapping[str, Sequence[dict]], variants: Sequence[str], measure: str):
    """(values per role, fact keys) over the rows of `variants` where every role has `measure`."""
    index = {role: {(r["variant"], r.get("item", r["key"])): r for r in rows} for role, rows in rows_by_role.items()}
    first = next(iter(rows_by_role.values()))
    keys, values = [], {role: [] for role in rows_by_role}
    for row in first:
        if row["variant"] not in variants:
            continue
        ident = (row["variant"], row.get("item", row["key"]))
        found = [index[role].get(ident) for role in rows_by_role]
        vals = [None if r is None else r.get(measure) for r in found]
        if any(v is None or not np.isfinite(v) for v in vals):
            continue
        keys.append(row["key"])
        for role, v in zip(rows_by_role, vals, strict=True):
            values[role].append(float(v))
    return {role: np.array(v, dtype=np.float64) for role, v in values.items()}, np.array(keys, dtype=object)


def pooled(values: Mapping[str, np.ndarray], keys: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
           baseline: str = "oracle") -> dict:
    """Levels per role, recovery and the unlearned-minus-baseline leak, with paired fact-bootstrap CIs.

    `baseline` is the role the recovery is measured from: the oracle, or without one "chance" (base.py).
    """
    if len(keys) == 0:
        return {"n": 0, "n_facts": 0, "levels": {}, "recovery": None, "recovery_ci": None, "leak": None,
                "leak_ci": None}
    facts, inv = np.unique(keys.astype(str), return_inverse=True)
    counts = np.bincount(inv, minlength=len(facts)).astype(np.float64)
    sums = {role: np.bincount(inv, weights=v, minlength=len(facts)) for role, v in values.items()}
    levels = {role: float(s.sum() / counts.sum()) for role, s in sums.items()}
    idx = np.random.default_rng(seed).integers(0, len(facts), size=(n_boot, len(facts)))  # (B, K)
    n = counts[idx].sum(1)
    boot = {role: s[idx].sum(1) / n for role, s in sums.items()}  # (B,) per role
    out: dict[str, Any] = {"n": int(counts.sum()), "n_facts": len(facts), "levels": levels}
    out["recovery"] = out["recovery_ci"] = out["leak"] = out["leak_ci"] = out["gap"] = out["gap_ci"] = None
    base = baseline
    if "target" in levels and base in levels:
        out["gap"] = levels["target"] - levels[base]
        out["gap_ci"] = _ci(boot["target"] - boot[base])
    if "unlearned" in levels and base in levels:
        out["leak"] = levels["unlearned"] - levels[base]
        out["leak_ci"] = _ci(boot["unlearned"] - boot[base])
    if "target" in levels and base in levels and "unlearned" in levels:
        out["recovery"] = recovery(levels["unlearned"], levels[base], levels["target"])
        if out["recovery"] is not None:
            gap = boot["target"] - boot[base]
            ratio = np.where(gap > 1e-9, (boot["unlearned"] - boot[base]) / np.where(gap > 1e-9, gap, 1), np.nan)
            out["recovery_ci"] = _ci(ratio)
    return out


def _ci(samples: np.ndarray) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    return [float(x) for x in np.percentile(finite, [2.5, 97.5])]


def chance_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows of a model that guesses, for the same items: `knows` = the row's `chance`, `answers` = 0."""
    out = []
    for row in rows:
        guess = {"key": row["key"], "variant": row["variant"], "item": row.get("item", row["key"])}
        if "chance" in row:
            guess["knows"] = row["chance"]
        if "answers" in row:
            guess["answers"] = 0.0
        out.append(guess)
    return out


def compare_rows(rows_by_role: Mapping[str, Sequence[dict]], reference: Sequence[str] = (),
                 n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The per-form table and the pooled headline (see the module docstring for the rules).

    Without an oracle the baseline is chance (`chance_rows` of the target's rows), and the recovery
    is relative to the target. The headline measure is `knows`, or `answers` where no item has
    alternatives to rank the answer against.
    """
    roles = [r for r in ROLES if r in rows_by_role]
    rows_by_role = {r: rows_by_role[r] for r in roles}
    baseline = "oracle"
    if "oracle" not in rows_by_role and "target" in rows_by_role:
        baseline = "chance"
        rows_by_role["chance"] = chance_rows(rows_by_role["target"])
    first = next(iter(rows_by_role.values()))
    order = list(dict.fromkeys(r["variant"] for r in first))
    judged = "target" in rows_by_role and baseline in rows_by_role
    candidates = [v for v in order if v not in reference]
    measure = "knows" if len(_aligned(rows_by_role, candidates, "knows")[1]) else "answers"
    variants: dict[str, Any] = {}
    for variant in order:
        entry: dict[str, Any] = {"reference": variant in reference}
        for name in MEASURES:
            vals, keys = _aligned(rows_by_role, [variant], name)
            if len(keys):
                entry[name] = pooled(vals, keys, n_boot=n_boot, seed=seed, baseline=baseline)
        entry["informative"] = judged and measure in entry and _separates(entry[measure])
        if judged and measure in entry and not entry["informative"]:
            entry["note"] = _uninformative(entry[measure], baseline)
        variants[variant] = entry
    headline = [v for v in candidates if variants[v]["informative"]] if judged else candidates
    report: dict[str, Any] = {"roles": roles, "baseline": baseline, "measure": measure, "headline_variants": headline,
                              "variants": variants}
    for name in MEASURES:
        vals, keys = _aligned(rows_by_role, headline, name)
        if len(keys):
            report[name] = pooled(vals, keys, n_boot=n_boot, seed=seed, baseline=baseline)
    head = report.get(measure)
    report["recovery"] = head["recovery"] if head else None
    report["recovery_ci"] = head["recovery_ci"] if head else None
    report["robustness"] = robustness(report["recovery"])
    if baseline == "chance":
        report["recovery_definition"] = RELATIVE_TO_TARGET
    if report["recovery"] is None:
        report["note"] = _no_recovery_reason(judged, headline, candidates, baseline)
    return report


def _separates(pooled_knows: dict) -> bool:
    """The target beats the oracle by at least MIN_GAP, and the gap's 95% CI excludes 0."""
    gap, ci = pooled_knows.get("gap"), pooled_knows.get("gap_ci")
    return gap is not None and gap >= MIN_GAP and ci is not None and ci[0] > 0


def _uninformative(pooled_knows: dict, baseline: str = "oracle") -> str:
    gap, ci = pooled_knows.get("gap") or 0.0, pooled_knows.get("gap_ci") or [0.0, 0.0]
    return (f"uninformative: under this form the target beats {_the(baseline)} by {gap:.2f} (95% CI {ci[0]:.2f} "
            f"to {ci[1]:.2f}; needs >= {MIN_GAP} and a CI above 0), so it cannot show whether knowledge is left")


def _the(baseline: str) -> str:
    return "the oracle" if baseline == "oracle" else "chance"


def _no_recovery_reason(judged: bool, headline: Sequence[str], candidates: Sequence[str],
                        baseline: str = "oracle") -> str:
    if not judged:
        return "no target to compare with: recovery needs the target (levels and leak are reported)"
    if not headline:
        return (f"no form of this attack separates the target from {_the(baseline)} by >= {MIN_GAP}: "
                f"it cannot detect knowledge on these models ({', '.join(candidates) or 'no forms'})")
    return f"the target beats {_the(baseline)} by < {MIN_GAP} over the pooled forms"
