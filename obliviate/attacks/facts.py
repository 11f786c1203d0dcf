"""The forget facts as attacks see them: where they come from, keys, answer alternatives, prompts.

The facts come from the built-in world (`world_sets`), from a data spec such as `tofu:forget10@DIR`
or from the user's QA files (`data_sets`). A world fact's perturbed answers are stored in its
paraphrase template ("in the city of Grathym"); the attacks compare bare values ("Grathym" against
"Punak"), so `alternatives` strips the template again. Items from elsewhere keep their perturbed
answers as they are.

Prompts follow the model's prompt format (`obliviate.models.prompts`, set on its tokenizer): a
question is rendered by `question_prompt`, answered turns before it by `dialogue` (in a chat
format, real conversation turns of the template), and prompt texts become token ids through
`encode_texts`, which adds no BOS where a chat template already wrote one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from obliviate.attacks.base import AttackSets
from obliviate.data.schema import QAItem
from obliviate.errors import ObliviateError
from obliviate.models.prompts import encode_prompts, format_of


def fact_key(item: QAItem) -> str:
    """"subject/attribute" for a world fact, else "subject/question"."""
    what = item.meta.get("attribute") or item.question
    return f"{item.subject}/{what}" if item.subject else what


def question_prompt(question: str, tokenizer=None) -> str:
    """The prompt of `question` in the model's format (`format_of(tokenizer)`; plain without a tokenizer)."""
    return format_of(tokenizer).render(question, tokenizer)


def is_chat(tokenizer) -> bool:
    """Whether the model's prompts are rendered by a chat template."""
    return format_of(tokenizer).chat


def dialogue(tokenizer, turns: Sequence[tuple[str, str]], question: str, preamble: str = "") -> str:
    """A prompt that asks `question` after the answered `turns` (question, answer), ending where the answer starts.

    Plain format: each turn as "Question: q\nAnswer: a" and a blank line, then the question, with
    `preamble` (a line of context) in front. Chat format: the turns as user and assistant messages of
    the template (after its system turn, if the format has one), the preamble leading the first user
    message, then the question as the last user message and the generation prompt.
    """
    fmt = format_of(tokenizer)
    if not fmt.chat:
        head = f"{preamble}\n" if preamble else ""
        return head + "".join(f"{fmt.render(q)} {a}\n\n" for q, a in turns) + fmt.render(question)
    messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt is not None else []
    for q, a in turns:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    if preamble:
        messages[first] = {"role": "user", "content": f"{preamble}\n{messages[first]['content']}"}
    if not getattr(tokenizer, "chat_template", None):
        raise ObliviateError("the prompt format is chat, but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **dict(fmt.chat_kwargs))


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of attack prompts in the model's format: a chat template's BOS is not doubled."""
    return encode_prompts(tokenizer, list(texts), format_of(tokenizer))


def answer_separator(prompt: str) -> str:
    """What goes between a prompt and an answer option: a space, unless the prompt ends in whitespace.

    "...Answer:" is followed by " Oslo"; a chat template's generation prompt ends in a newline, and its
    answers start at once ("Oslo"), as the model was trained.
    """
    return "" if prompt[-1:].isspace() else " "


def world_sets(preset: str, seed: int, split: str) -> AttackSets:
    """The forget, retain and forget-training facts of a built-in world split."""
    from obliviate.world import get_world

    world = get_world(preset, seed)
    return AttackSets(world.forget_set(split), world.retain_set(split), world.forget_train(split), world, split)


def data_sets(data: str | None = None, forget: str | None = None, retain: str | None = None,
              mapping: Sequence[str] = ()) -> AttackSets:
    """The facts of a data spec (`tofu:forget10@DIR`) or of QA files (`forget`, optional `retain`).

    A benchmark's evaluation items are attacked (TOFU's `forgetNN_perturbed`, with its paraphrased
    questions and perturbed answers), its training items are relearnt. QA files are both.
    """
    if data is not None:
        from obliviate.workflow.data import eval_sets, parse_data_spec, train_sets

        spec = parse_data_spec(data)
        evaluated = eval_sets(spec)
        train = [it for it in train_sets(spec)[0] if isinstance(it, QAItem)] or None  # text corpora: relearn the facts
        return AttackSets(list(evaluated.forget), list(evaluated.retain), train, split=str(spec))
    if forget is None:
        raise ObliviateError("no forget facts to attack: pass --forget FILE (and --retain FILE) or --data SPEC")
    from obliviate.data import load_items, parse_mapping

    cols = parse_mapping(list(mapping)) if mapping else None
    return AttackSets(list(load_items(forget, "qa", cols)), list(load_items(retain, "qa", cols)) if retain else [])


def spec_of(world, item: QAItem):
    """The world's AttributeSpec of a person fact, or None (no world, or not a person fact)."""
    if world is None or item.meta.get("source") != "person":
        return None
    return {s.key: s for s in world.attributes}.get(item.meta.get("attribute"))


@lru_cache(maxsize=64)
def _template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{value\}|\{a\})", template)
    regex = "".join("(.+)" if p == "{value}" else "(?:a|an)" if p == "{a}" else re.escape(p) for p in parts)
    return re.compile(regex)


def raw_value(template: str, text: str) -> str:
    """The value inside a paraphrase-template answer ("in the city of X" -> "X"), else `text`."""
    match = _template_pattern(template).fullmatch(text)
    return match.group(1) if match else text


def alternatives(item: QAItem, world=None) -> list[str]:
    """Wrong answers of the item's kind, as bare values when the world's template is known."""
    spec = spec_of(world, item)
    if spec is None:
        return list(item.perturbed_answers)
    return [raw_value(spec.para, p) for p in item.perturbed_answers]


def person_name(world, item: QAItem) -> str | None:
    """The name of the person a world fact is about (None outside the world)."""
    if world is None or "pid" not in item.meta:
        return None
    return world.person(item.meta["pid"]).name


def subject_name(sets: AttackSets, item: QAItem) -> str:
    """A name to address the subject by: the world's person name, else the item's subject."""
    from obliviate.data.schema import subject_name as written_name

    return person_name(sets.world, item) or written_name(item) or "this subject"


def has_subjects(items: Sequence[QAItem]) -> bool:
    """Whether the items name their subjects (facts can be grouped by whom they are about)."""
    return bool(items) and all(it.subject for it in items)


def lacking(items: Sequence[QAItem], field: str) -> bool:
    """Whether no item has `field` (paraphrased_questions, perturbed_answers): forms that need it cannot run."""
    return not any(getattr(it, field) for it in items)


def by_subject(items: list[QAItem]) -> dict[str, list[QAItem]]:
    """Items grouped by subject, in their order."""
    groups: dict[str, list[QAItem]] = {}
    for item in items:
        groups.setdefault(item.subject or "", []).append(item)
    return groups
