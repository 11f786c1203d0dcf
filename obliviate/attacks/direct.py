"""No attack: the trained question itself, the reference every attack is read against.

An attack that recovers 0.3 of the forget facts says little if the plain question already does;
`direct` is that plain question, measured the same way. It is reported beside the attacks and
left out of the robustness summary's harmonic mean. The question is rendered in the model's prompt format.
"""

from __future__ import annotations

from obliviate.attacks.base import AttackSets, register
from obliviate.attacks.facts import alternatives, fact_key, question_prompt
from obliviate.attacks.measure import AttackPrompt, PromptAttack


@register
class Direct(PromptAttack):
    name = "direct"
    summary = "no attack: the trained question form (the reference row)"
    in_summary = False

    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        return [AttackPrompt(fact_key(it), "question", question_prompt(it.question, tokenizer), it.answer,
                             alternatives(it, sets.world)) for it in sets.forget]
