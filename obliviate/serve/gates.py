"""The gates a durable-unlearning candidate must pass before it is published, and the scores they read.

Scores (one model, `score_model`), each a mean over items:
- `forget_probability`: P̄ = exp(-mean NLL of the answer tokens) on the request's QA pairs (TOFU's probability);
- `forget_rouge`: ROUGE-L recall of the greedy answer against the answer, on the same pairs (TOFU's ROUGE);
- `forget_text_probability`: exp(-mean NLL per token) of the request's texts;
- `utility`: on a fixed sample of the retain data, the harmonic mean of P̄ and ROUGE-L recall (QA), or the
  text probability (texts): what the forget set must not take with it.

Gates (`check_gates`), from the config's `gates`:
- each `forget_max[metric]`: the candidate's metric on the request's items is at most the bound (a metric
  the items do not have, e.g. ROUGE for texts only, is reported as not applicable);
- each `forget_min_drop[metric]`: live metric - candidate metric is at least the bound (the candidate must have
  moved what the request names, not only sit under a bound the live model may already meet);
- `utility_drop_max`: live utility - candidate utility is at most the bound (the live model is the one
  served now: the base, or the last published adapter);
- `attack_recovery_max`: every configured attack's recovery on the request's items is at most the bound.
A candidate passes when every applicable gate does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from obliviate.errors import ConfigError
from obliviate.serve.config import GatesConfig

FORGET_METRICS = ("forget_probability", "forget_rouge", "forget_text_probability")


def check_config(gates: GatesConfig) -> None:
    """Refuse gate metrics this module does not compute, and attacks that do not exist, before any work."""
    from obliviate.config import did_you_mean

    for key, names in (("forget_max", gates.forget_max), ("forget_min_drop", gates.forget_min_drop)):
        for name in names:
            if name not in FORGET_METRICS:
                raise ConfigError(f"gates.{key}: unknown metric '{name}' (choose from {', '.join(FORGET_METRICS)})"
                                  f"{did_you_mean(name, FORGET_METRICS)}")
    if gates.attacks:
        from obliviate.attacks import get_attack

        for name in gates.attacks:
            get_attack(name)


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.size else None


def _harmonic(a: float, b: float) -> float:
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def score_model(model, tokenizer, forget: Sequence, retain: Sequence, batch_size: int = 32) -> dict[str, float | None]:
    """The gate scores of `model` on the forget items (QAItem or TextPassage) and the retain sample."""
    from obliviate.data.schema import QAItem

    out: dict[str, float | None] = dict.fromkeys(FORGET_METRICS)
    qa = [it for it in forget if isinstance(it, QAItem)]
    texts = [it for it in forget if not isinstance(it, QAItem)]
    if qa:
        probability, rouge = _qa_scores(model, tokenizer, qa, batch_size)
        out["forget_probability"], out["forget_rouge"] = _mean(probability), _mean(rouge)
    if texts:
        out["forget_text_probability"] = _mean(_text_probability(model, tokenizer, texts, batch_size))
    retain_qa = [it for it in retain if isinstance(it, QAItem)]
    if retain_qa:
        probability, rouge = _qa_scores(model, tokenizer, retain_qa, batch_size)
        out["utility"] = _harmonic(_mean(probability), _mean(rouge))
    else:
        out["utility"] = _mean(_text_probability(model, tokenizer, list(retain), batch_size)) if retain else None
    return out


def _qa_scores(model, tokenizer, items: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from obliviate.evals.qa import score_set

    scores = score_set(model, tokenizer, items, "gate", "retain", batch_size=batch_size)
    return scores.probability, scores.rouge


def _text_probability(model, tokenizer, passages: Sequence, batch_size: int) -> np.ndarray:
    from obliviate.models.scoring import score_texts

    ids = [tokenizer(p.text)["input_ids"] for p in passages]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = score_texts(model, ids, batch_size=batch_size, pad_id=pad)
    return np.exp(-np.array([s.mean_nll for s in scores], dtype=float))


@dataclass
class Check:
    """One gate: the score before (live model) and after (candidate), the value held against the bound (the
    score after, or the utility's drop), the bound, and whether it passed."""

    gate: str
    after: float | None
    limit: float
    passed: bool | None  # None: not applicable to this request's items
    before: float | None = None
    value: float | None = None


@dataclass
class GateReport:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    def failed(self) -> list[str]:
        return [c.gate for c in self.checks if c.passed is False]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def check_gates(gates: GatesConfig, before: dict[str, float | None], after: dict[str, float | None],
                recovery: dict[str, float] | None = None) -> GateReport:
    """Compare the candidate's scores (`after`) and attacks' `recovery` with the gates; `before`: the live model."""
    checks = []
    for name, limit in gates.forget_max.items():
        value = after.get(name)
        checks.append(Check(f"{name} <= {limit}", value, limit, None if value is None else value <= limit,
                            before.get(name), value))
    for name, least in gates.forget_min_drop.items():
        was, now = before.get(name), after.get(name)
        moved = None if was is None or now is None else was - now
        checks.append(Check(f"{name} drop >= {least}", now, least, None if moved is None else moved >= least,
                            was, moved))
    live, candidate = before.get("utility"), after.get("utility")
    if live is not None and candidate is not None:
        drop = live - candidate
        checks.append(Check(f"utility drop <= {gates.utility_drop_max}", candidate, gates.utility_drop_max,
                            drop <= gates.utility_drop_max, live, drop))
    else:
        checks.append(Check(f"utility drop <= {gates.utility_drop_max}", candidate, gates.utility_drop_max, False,
                            live))
    if gates.attack_recovery_max is not None:
        for name in gates.attacks:
            value = (recovery or {}).get(name)
            ok = value is not None and not math.isnan(value) and value <= gates.attack_recovery_max
            checks.append(Check(f"{name} recovery <= {gates.attack_recovery_max}", value, gates.attack_recovery_max,
                                ok, None, value))
    passed = all(c.passed is not False for c in checks) and any(c.passed for c in checks)
    return GateReport(passed, checks)
