"""In-Context Unlearning (ICUL) and the instruction-prompt baseline.

Pawelczyk, Neel & Lakkaraju 2024, *In-Context Unlearning: Language Models as Few-Shot Unlearners*
(code `MartinPawel/In-Context-Unlearning`). Nothing is trained: every query is preceded by a
context built from the forget set,

    [x_f1] [flipped y_f1] ... [x_fK] [flipped y_fK] [x_1] [y_1] ... [x_s] [y_s] [query]

- labelled texts: each forget point with a label other than its own (drawn at random from the
  labels of the data), then s correctly labelled retain points; every point in the label format
  (`### Text: ... ### Sentiment: y`), separated by a blank line;
- QA items: each forget question with a refusal (`refusal_for(i, seed)`) instead of its answer,
  then s retain questions with their answers, in the QA prompt format.

The paper sweeps s ∈ {2, 4, 6, 8} and decodes greedily; s = 4 is the default here. The context
is tokenised once, with the tokenizer's BOS, and the query follows it without its own BOS, so
the model reads one document (`interventions/prefix.py`). It is run once into a KV cache that every
query continues.

`prompt` baseline: the context is one instruction, "If the question asks about {subject}, say
that you do not know.", naming the forget set's subjects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import Field

from obliviate.data.refusals import refusal_for
from obliviate.data.schema import LabelledText
from obliviate.errors import ConfigError
from obliviate.interventions.prefix import InContextPrefix
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import LABELLED_OR_QA, InterventionMethod, item_kind
from obliviate.methods.spul import SENTIMENT_TEMPLATE, LabelFormat
from obliviate.models.prompts import DEFAULT_FORMAT


def _qa_text(question: str, answer: str) -> str:
    return DEFAULT_FORMAT.render(question) + DEFAULT_FORMAT.answer_text(answer)


def icul_context(forget: Sequence, retain: Sequence, n_correct: int, label_fmt: LabelFormat, separator: str,
                 seed: int) -> str:
    """The ICUL context text: forget points with flipped labels / refusals, then s correct points."""
    rng = random.Random(seed)
    labelled = bool(forget) and isinstance(forget[0], LabelledText)
    if labelled:
        labels = sorted({it.label for it in [*forget, *retain]})
        if len(labels) < 2:
            raise ConfigError("icul: flipping a label needs at least two distinct labels in the data")
        blocks = [label_fmt.render(it.text) + label_fmt.label_prefix + rng.choice([y for y in labels if y != it.label])
                  for it in forget]
    else:
        blocks = [_qa_text(it.question, refusal_for(i, seed)) for i, it in enumerate(forget)]
    chosen = rng.sample(range(len(retain)), min(n_correct, len(retain)))
    for j in chosen:
        it = retain[j]
        blocks.append(label_fmt.render(it.text) + label_fmt.label_prefix + it.label if labelled
                      else _qa_text(it.question, it.answer))
    return separator.join(blocks) + separator


def context_prefix(model, tokenizer, context: str, reserve: int = 64) -> InContextPrefix:
    """The context as an `InContextPrefix`; an error if it leaves fewer than `reserve` positions."""
    prefix = InContextPrefix.from_text(tokenizer, context)
    n = prefix.prefix_length
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and n + reserve > limit:
        raise ConfigError(f"the in-context prefix has {n} tokens; with {reserve} for the query it exceeds "
                          f"the model's {limit} positions (use fewer forget/correct examples)")
    return prefix


class ICULConfig(MethodConfig):
    n_correct: int = Field(4, ge=0, description="s, correct retain examples after the forget points")
    max_forget: int | None = Field(None, ge=1, description="use only the first N forget items in the context")
    separator: str = Field("\n\n", description="text between examples (and before the query)")
    label_template: str = Field(SENTIMENT_TEMPLATE, description="labelled texts: the prompt, with {text}")


class ICUL(InterventionMethod):
    name = "icul"
    paper = "Pawelczyk, Neel & Lakkaraju 2024, In-Context Unlearning: Language Models as Few-Shot Unlearners"
    summary = "prepend the forget points with flipped labels (QA: refusals) and s correct examples"
    Config = ICULConfig
    uses_retain = True

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        kinds = {item_kind(forget, self.name, LABELLED_OR_QA), item_kind(retain, self.name, LABELLED_OR_QA)} - {None}
        if not forget:
            raise ConfigError("icul: the forget set is empty")
        if len(kinds) > 1:
            raise ConfigError("icul: forget and retain must be the same kind of item (QA or labelled text)")
        forget = list(forget)[: cfg.max_forget] if cfg.max_forget else list(forget)
        context = icul_context(forget, list(retain), cfg.n_correct, LabelFormat(cfg.label_template), cfg.separator,
                               cfg.seed)
        prefix = context_prefix(model, tokenizer, context)
        return prefix, {"context_tokens": prefix.prefix_length, "forget_in_context": len(forget)}


class PromptBaselineConfig(MethodConfig):
    template: str = Field("If the question asks about {subject}, say that you do not know.",
                          description="the instruction; {subject} becomes the subjects, 'A, B or C'")
    subjects: list[str] | None = Field(None, description="subjects to name (default: the forget items' subjects)")
    separator: str = Field("\n\n", description="text between the instruction and the query")


def join_subjects(subjects: Sequence[str]) -> str:
    """'A', 'A or B', 'A, B or C'."""
    subjects = list(subjects)
    return subjects[0] if len(subjects) == 1 else ", ".join(subjects[:-1]) + " or " + subjects[-1]


class PromptBaseline(InterventionMethod):
    name = "prompt"
    paper = "Instruction-prompt baseline (e.g. Pawelczyk et al. 2024; Lynch et al. 2024)"
    summary = "prepend an instruction to say 'I do not know' about the forget subjects"
    Config = PromptBaselineConfig

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        subjects = cfg.subjects
        if subjects is None:
            subjects = list(dict.fromkeys(it.subject for it in forget if getattr(it, "subject", None)))
        if not subjects:
            raise ConfigError("prompt: the forget items name no subject; set subjects=[...]")
        context = cfg.template.format(subject=join_subjects(subjects)) + cfg.separator
        prefix = context_prefix(model, tokenizer, context)
        return prefix, {"context_tokens": prefix.prefix_length, "subjects": len(subjects)}
