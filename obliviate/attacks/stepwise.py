"""stepwise: approach the fact in steps, through the model's own earlier answers (after Sleek).

Sleek (2025, "Step-by-Step Reasoning Attack: Revealing 'Erased' Knowledge in Large Language
Models") finds that facts an unlearned model will not state directly leak out when it reasons
towards them step by step. Two black-box scaffolds, built from the model's own greedy outputs, so
no ground truth is ever put in the prompt:

- `self_chain` (direct steps): the model first answers `chain` other questions about the same
  subject, each answer appended to the transcript, then the forget question;
- `recall_first` (indirect): the model first writes what it recalls about the subject (a greedy
  continuation of the subject's name, up to `recall_tokens`), then is asked the question after
  its own recollection.

The scaffold depends on the model, so each model builds its own prompts from its own answers;
the oracle's scaffold is its own invention.

In a chat format the steps are earlier turns of one conversation, and the recollection answers
"What do you know about SUBJECT?". Both scaffolds need items that name their subject; on data
without subjects the attack says so in one line.
"""

from __future__ import annotations

from pydantic import Field

from obliviate.attacks.base import AttackConfig, AttackSets, register
from obliviate.attacks.facts import (
    alternatives,
    by_subject,
    dialogue,
    encode_texts,
    fact_key,
    has_subjects,
    is_chat,
    person_name,
)
from obliviate.attacks.measure import AttackPrompt, PromptAttack, greedy
from obliviate.data.schema import QAItem, subject_name


class StepwiseConfig(AttackConfig):
    chain: int = Field(2, description="questions the model answers itself before the forget question", ge=1)
    recall_tokens: int = Field(48, description="tokens of free recall before the question", ge=1)


@register
class Stepwise(PromptAttack):
    name = "stepwise"
    summary = "the model's own answers to related questions, or its own recollection, before the question"
    paper = "Sleek (step-by-step reasoning attack, 2025)"
    Config = StepwiseConfig

    def lacks(self, sets: AttackSets) -> dict[str, str]:
        if has_subjects(sets.forget):
            return {}
        return {"self_chain": "self_chain, recall_first: the items name no subject to approach the fact through"}

    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        if not has_subjects(sets.forget):
            return []
        return [*self._chains(model, tokenizer, sets), *self._recalls(model, tokenizer, sets)]

    def _greedy(self, model, tokenizer, prompts: list[str], max_new_tokens: int | None) -> list[str]:
        return greedy(model, tokenizer, encode_texts(tokenizer, prompts), max_new_tokens, self.config.batch_size)

    def _chains(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        """Conversations grown one self-answered step at a time, all facts in one batch per step."""
        subjects = by_subject(sets.forget)
        steps = [_neighbours(subjects[it.subject or ""], it, self.config.chain) for it in sets.forget]
        turns: list[list[tuple[str, str]]] = [[] for _ in sets.forget]
        for depth in range(self.config.chain):
            live = [i for i, s in enumerate(steps) if depth < len(s)]
            asks = [dialogue(tokenizer, turns[i], steps[i][depth].question) for i in live]
            answers = self._greedy(model, tokenizer, asks, self.config.max_new_tokens)
            for i, ans in zip(live, answers, strict=True):
                turns[i].append((steps[i][depth].question, ans))
        return [AttackPrompt(fact_key(it), "self_chain", dialogue(tokenizer, turns[i], it.question), it.answer,
                             alternatives(it, sets.world))
                for i, it in enumerate(sets.forget) if steps[i]]

    def _recalls(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        """One free recollection per subject, then each of its questions after it."""
        subjects = by_subject(sets.forget)
        name = {s: person_name(sets.world, items[0]) for s, items in subjects.items()}
        if is_chat(tokenizer):  # a chat model recalls when asked; a free continuation is no turn of its template
            name = dict.fromkeys(name)
        starts = {s: name[s] or dialogue(tokenizer, [], _recall_question(items[0])) for s, items in subjects.items()}
        recalls = self._greedy(model, tokenizer, list(starts.values()), self.config.recall_tokens)
        context = {}
        for (s, start), text in zip(starts.items(), recalls, strict=True):
            context[s] = (f"{start} {text}\n", []) if name[s] else ("", [(_recall_question(subjects[s][0]), text)])
        return [AttackPrompt(fact_key(it), "recall_first", context[it.subject or ""][0]
                             + dialogue(tokenizer, context[it.subject or ""][1], it.question),
                             it.answer, alternatives(it, sets.world))
                for it in sets.forget]


def _neighbours(items: list[QAItem], item: QAItem, n: int) -> list[QAItem]:
    """The next `n` other facts of the same subject, cyclically after `item`."""
    k = next(i for i, it in enumerate(items) if it is item)
    return [items[(k + j) % len(items)] for j in range(1, len(items))][:n]


def _recall_question(item: QAItem) -> str:
    """The question that asks a model for its recollection of the item's subject."""
    return f"What do you know about {subject_name(item)}?"
