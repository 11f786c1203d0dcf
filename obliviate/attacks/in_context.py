"""in_context: a hint about the forgotten fact in the context (UnUnlearning).

Shumailov et al. (2024, "UnUnlearning") argue that knowledge removed from the weights can come back
through the context: a model that still has related knowledge can use a hint that a model which
never knew cannot. Each forget fact is asked after

- `related_facts`: other facts about the same subject as question-answer pairs (up to
  `n_context`, the asked fact excluded), as an attacker who knows some facts would supply them;
- `candidates`: the question followed by "It is one of: ..." (the answer and its alternatives in a
  seeded order): the model only has to recognise the fact;
- `few_shot`: answered questions of the same kind about retained subjects (in-context examples,
  RWKU's in-context probe).

The oracle gets the same hints: whatever it answers from them is what the hint gives away, and the
recovery counts only what the unlearned model adds beyond it.

In a chat format the answered questions are earlier turns of the conversation. `related_facts`
needs items that name their subject, `candidates` perturbed answers and `few_shot` retain facts;
on data without them the form is skipped with a one-line note.
"""

from __future__ import annotations

from pydantic import Field

from obliviate.attacks.base import AttackConfig, AttackSets, register
from obliviate.attacks.facts import alternatives, by_subject, dialogue, fact_key, has_subjects, lacking
from obliviate.attacks.forms import shuffled_options
from obliviate.attacks.measure import AttackPrompt, PromptAttack
from obliviate.data.schema import QAItem


class InContextConfig(AttackConfig):
    n_context: int = Field(4, description="question-answer pairs in the context of each hint", ge=1)


def ask_after(tokenizer, items: list[QAItem], question: str) -> str:
    """`question` asked after `items` answered (a few-shot prompt; in a chat format, earlier turns)."""
    return dialogue(tokenizer, [(it.question, it.answer) for it in items], question)


@register
class InContext(PromptAttack):
    name = "in_context"
    summary = "related facts, answer candidates or same-kind examples in the context"
    paper = "UnUnlearning (Shumailov et al. 2024); RWKU in-context probes"
    Config = InContextConfig

    def lacks(self, sets: AttackSets) -> dict[str, str]:
        out = {}
        if not has_subjects(sets.forget):
            out["related_facts"] = "related_facts: the items name no subject, so no facts about the same one are known"
        if lacking(sets.forget, "perturbed_answers"):
            out["candidates"] = "candidates: the data has no perturbed answers to list beside the answer"
        if not sets.retain:
            out["few_shot"] = "few_shot: no retain facts to take the examples from"
        return out

    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        n = self.config.n_context
        subjects = by_subject(sets.forget) if has_subjects(sets.forget) else {}
        kinds = _by_kind(sets.retain)
        out = []
        for item in sets.forget:
            key, alts = fact_key(item), alternatives(item, sets.world)
            related = [it for it in subjects.get(item.subject or "", []) if it is not item][:n]
            if related:
                out.append(AttackPrompt(key, "related_facts", ask_after(tokenizer, related, item.question), item.answer,
                                        alts))
            if alts:  # listing the answer alone would give it away
                listed = ", ".join(shuffled_options(item, alts, self.config.seed))
                out.append(AttackPrompt(key, "candidates", ask_after(tokenizer, [], f"{item.question} It is one of: "
                                                                                    f"{listed}."), item.answer, alts))
            shots = kinds.get(_kind(item), [])[:n]
            if shots:
                out.append(AttackPrompt(key, "few_shot", ask_after(tokenizer, shots, item.question), item.answer, alts))
        order = ("related_facts", "candidates", "few_shot")
        return sorted(out, key=lambda p: order.index(p.variant))


def _kind(item: QAItem) -> str:
    return item.meta.get("attribute", "")


def _by_kind(items: list[QAItem]) -> dict[str, list[QAItem]]:
    """Items grouped by attribute, one per subject (spread-out examples; items without a subject each count)."""
    groups: dict[str, list[QAItem]] = {}
    seen: set[tuple[str, str]] = set()
    for it in items:
        mark = (_kind(it), it.subject or it.question)
        if mark not in seen:
            seen.add(mark)
            groups.setdefault(_kind(it), []).append(it)
    return groups
