"""The skill suite: accuracy per skill, for skill unlearning (`obliviate.world.skills`).

For each skill's test set (items the unlearning method never saw):

- `accuracy`: the share of greedy answers that equal the item's answer exactly (after stripping
  spaces and a final full stop): a sum is right or wrong, and a copy is exact or not;
- `abstention`: the share of greedy answers that are a refusal (`methods.snap.is_refusal`, against
  the project's refusal sentences): what an abstaining method (key_space_detection) says instead.

The forget skill's accuracy should fall towards 0 and the others' stay at the target's. Metrics
are `skill/<name>/accuracy` and `skill/<name>/abstention`, each with `higher_is_better` set for the
forget skill (lower accuracy is better) and the retained ones (higher is better).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from obliviate.data.schema import QAItem


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split())


def skill_scores(model, tokenizer, tests: Mapping[str, Sequence[QAItem]], max_new_tokens: int = 24,
                 batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """Per skill: accuracy and abstention rate of greedy answers, with the answers themselves."""
    from obliviate.methods.snap import is_refusal
    from obliviate.models.generation import generate_answers

    out: dict[str, dict[str, Any]] = {}
    for skill, items in tests.items():
        answers = generate_answers(model, tokenizer, [it.question for it in items], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        hits = np.array([_norm(a) == _norm(it.answer) for a, it in zip(answers, items, strict=True)])
        refused = np.array([is_refusal(a) for a in answers])
        out[skill] = {"accuracy": float(hits.mean()), "abstention": float(refused.mean()), "n": len(items),
                      "answers": answers}
    return out


def skill_aggregates(scores: Mapping[str, Mapping[str, Any]], forget_skill: str) -> dict[str, dict[str, Any]]:
    """`skill/<name>/accuracy` and `skill/<name>/abstention` as {"value", "higher_is_better"} (qa-suite style)."""
    out: dict[str, dict[str, Any]] = {}
    for skill, row in scores.items():
        forget = skill == forget_skill
        out[f"skill/{skill}/accuracy"] = {"value": row["accuracy"], "higher_is_better": not forget}
        out[f"skill/{skill}/abstention"] = {"value": row["abstention"], "higher_is_better": forget}
    return out
