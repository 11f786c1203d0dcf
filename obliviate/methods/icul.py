"""In-Context Unlearning (ICUL) and the instruction-prompt baseline.

Pawelczyk, Neel & Lakkaraju 2024, *In-Context Unlearning: Language Models as Few-Shot Unlearners*
(code `MartinPawel/In-Context-Unlearning`). Nothing is trained: a query is preceded by a context
built from the forget set,

    [x_f1] [flipped y_f1] ... [x_fk] [flipped y_fk] [x_1] [y_1] ... [x_s] [y_s] [query]

- labelled texts: each forget point with a label other than its own (drawn at random from the
  labels of the data), then s correctly labelled retain points; every point in the label format
  (`### Text: ... ### Sentiment: y`), separated by a blank line;
- QA items: each forget question with a refusal (`refusal_for(i, seed)`) instead of its answer,
  then s retain questions with their answers, in the QA prompt format.

**How many examples.** The paper unlearns a deletion request of k points, all of them flipped in
every query's context; its main experiments use k = 1 (`--batch_sizes 1` in its code) and sweep
s ∈ {2, 4, 6, 8}, decoding greedily. A forget set is far larger than a deletion request and rarely
fits a model's positions, so each query here gets the k forget examples nearest to it (cosine
similarity of prompt embeddings, with the classifier's embedder): a forget query sees its own
point flipped, as in the paper. The s correct examples are a fixed seeded sample of the retain set.
Defaults: k = 1 (`n_forget`), s = 4 (`n_correct`). The context must leave `reserve_tokens`
positions for the query: when the k longest forget examples and the s correct ones do not fit the
model's positions, fewer correct examples are used, then fewer forget examples; it is an error only
when one forget example alone cannot fit. With k ≥ |forget| every query gets the whole forget set.
Each example is tokenised on its own (no BOS) and the context is [BOS] + examples; the query
follows without its own BOS, so the model reads one document (`interventions/prefix.py`).

**Gate.** With `gate=classifier` (the default) only prompts that the forget-prompt classifier of
ECO and GUARD flags get the context; the others run the bare model. The paper's ICUL puts the
context before every query (`gate=none`). On a model trained only on documents that start at the
BOS (the built-in world's), any prefix is out of distribution and wrecks every answer, so the
ungated method takes utility to zero there; gated, a forget query is unlearned by the same damage,
not by the model reading the examples.

`prompt` baseline: the context is one instruction, "If the question asks about {subject}, say
that you do not know.", naming the forget set's subjects; gated the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import Field

from obliviate.data.refusals import refusal_for
from obliviate.data.schema import LabelledText, subject_name
from obliviate.errors import ConfigError
from obliviate.interventions.classifier import get_embedder
from obliviate.interventions.detector import fit_detector, item_prompts
from obliviate.interventions.prefix import tokenizer_bos
from obliviate.interventions.prefix_kinds import InContextExamples, InContextPrefix
from obliviate.interventions.regions import PromptReader, classifier_text
from obliviate.methods.eco import GateConfig
from obliviate.methods.inference import LABELLED_OR_QA, InterventionMethod, item_kind
from obliviate.methods.spul import SENTIMENT_TEMPLATE, LabelFormat
from obliviate.models.prompts import DEFAULT_FORMAT, PromptFormat, format_of


def _qa_text(question: str, answer: str) -> str:
    return DEFAULT_FORMAT.render(question) + DEFAULT_FORMAT.answer_text(answer)


def icul_examples(forget: Sequence, retain: Sequence, n_correct: int, label_fmt: LabelFormat, separator: str,
                  seed: int) -> tuple[list[str], list[str]]:
    """(forget examples with flipped labels / refusals, s correct examples), each ending with `separator`."""
    rng = random.Random(seed)
    labelled = bool(forget) and isinstance(forget[0], LabelledText)
    if labelled:
        labels = sorted({it.label for it in [*forget, *retain]})
        if len(labels) < 2:
            raise ConfigError("icul: flipping a label needs at least two distinct labels in the data")
        flipped = [label_fmt.render(it.text) + label_fmt.label_prefix + rng.choice([y for y in labels if y != it.label])
                   for it in forget]
    else:
        flipped = [_qa_text(it.question, refusal_for(i, seed)) for i, it in enumerate(forget)]
    chosen = rng.sample(range(len(retain)), min(n_correct, len(retain)))
    correct = [label_fmt.render(retain[j].text) + label_fmt.label_prefix + retain[j].label if labelled
               else _qa_text(retain[j].question, retain[j].answer) for j in chosen]
    return [b + separator for b in flipped], [b + separator for b in correct]


def icul_context(forget: Sequence, retain: Sequence, n_correct: int, label_fmt: LabelFormat, separator: str,
                 seed: int) -> str:
    """The whole ICUL context as text: every forget point flipped, then s correct points."""
    flipped, correct = icul_examples(forget, retain, n_correct, label_fmt, separator, seed)
    return "".join(flipped + correct)


def position_limit(model) -> int | None:
    """The model's positions (None when its config names no limit)."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def fit_examples(forget_lengths: Sequence[int], correct_lengths: Sequence[int], n_forget: int, limit: int | None,
                 reserve: int, bos: int) -> tuple[int, int]:
    """(k, s): forget examples per query and correct examples that fit `limit` positions in the worst case.

    The worst case is the k longest forget examples; `bos` (0 or 1) and `reserve` positions are kept.
    """
    longest = sorted(forget_lengths, reverse=True)
    k = min(n_forget, len(longest))
    if limit is None:
        return k, len(correct_lengths)
    budget = limit - reserve - bos
    while k and sum(longest[:k]) > budget:
        k -= 1
    if k == 0:
        raise ConfigError(f"icul: a forget example of {longest[0]} tokens, with {bos} for the BOS and {reserve} for "
                          f"the query, exceeds the model's {limit} positions (lower reserve_tokens)")
    used, s = sum(longest[:k]), 0
    for n in correct_lengths:
        if used + n > budget:
            break
        used, s = used + n, s + 1
    return k, s


class ICULConfig(GateConfig):
    n_forget: int = Field(1, ge=1, description="k, forget examples (flipped) in each query's context: the k nearest "
                          "to the query; the paper's deletion requests have k = 1")
    n_correct: int = Field(4, ge=0, description="s, correct retain examples after the forget points")
    max_forget: int | None = Field(None, ge=1, description="use only the first N forget items")
    reserve_tokens: int = Field(64, ge=1, description="positions kept free for the query after the context")
    separator: str = Field("\n\n", description="text between examples (and before the query)")
    label_template: str = Field(SENTIMENT_TEMPLATE, description="labelled texts: the prompt, with {text}")


def prompt_format(kinds: set[type], label_template: str, tokenizer=None) -> PromptFormat:
    """The format a query of these items is rendered in: the model's QA format or the label template."""
    return LabelFormat(label_template).prompt_format() if LabelledText in kinds else format_of(tokenizer)


class ICUL(InterventionMethod):
    name = "icul"
    paper = "Pawelczyk, Neel & Lakkaraju 2024, In-Context Unlearning: Language Models as Few-Shot Unlearners"
    summary = "prepend the nearest forget points with flipped labels (QA: refusals) and s correct examples"
    Config = ICULConfig
    uses_retain = True
    variants = {"gate": {"gate": "classifier"}}  # this project's gated form, `NAME+gate`

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        kinds = {item_kind(forget, self.name, LABELLED_OR_QA), item_kind(retain, self.name, LABELLED_OR_QA)} - {None}
        if not forget:
            raise ConfigError("icul: the forget set is empty")
        if len(kinds) > 1:
            raise ConfigError("icul: forget and retain must be the same kind of item (QA or labelled text)")
        forget = list(forget)[: cfg.max_forget] if cfg.max_forget else list(forget)
        fmt = prompt_format(kinds, cfg.label_template, tokenizer)
        flipped, correct = icul_examples(forget, list(retain), cfg.n_correct, LabelFormat(cfg.label_template),
                                         cfg.separator, cfg.seed)
        encode = lambda texts: [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
        forget_ids, correct_ids = encode(flipped), encode(correct) if correct else []
        bos = tokenizer_bos(tokenizer)
        k, s = fit_examples([len(x) for x in forget_ids], [len(x) for x in correct_ids], cfg.n_forget,
                            position_limit(model), cfg.reserve_tokens, int(bos is not None))
        queries = [classifier_text(tokenizer, item_prompts(it)[0][0], fmt) for it in forget]
        keys = get_embedder(cfg.embedder).encode(queries)  # (n, d), unit norm
        detector, report = None, None
        if cfg.gate == "classifier":
            detector, report = fit_detector(tokenizer, forget, retain, **cfg.detector_kwargs(), fmt=fmt,
                                            method=self.name)
        reader = detector.reader if detector else PromptReader.for_items(tokenizer, fmt, queries)
        prefix = InContextExamples(forget_ids, [t for ids in correct_ids[:s] for t in ids], keys, cfg.embedder, k,
                                   reader, bos, detector, flipped + correct[:s])
        summary = {"context_tokens": prefix.prefix_length, "forget_per_query": k, "forget_examples": len(forget),
                   "correct_examples": s, "gate": cfg.gate}
        return prefix, {**summary, **({"classifier": report} if report else {})}


class PromptBaselineConfig(GateConfig):
    template: str = Field("If the question asks about {subject}, say that you do not know.",
                          description="the instruction; {subject} becomes the subjects, 'A, B or C'")
    subjects: list[str] | None = Field(None, description="subjects to name (default: the forget items' subjects)")
    separator: str = Field("\n\n", description="text between the instruction and the query")
    reserve_tokens: int = Field(64, ge=1, description="positions kept free for the query after the instruction")


def join_subjects(subjects: Sequence[str]) -> str:
    """'A', 'A or B', 'A, B or C'."""
    subjects = list(subjects)
    return subjects[0] if len(subjects) == 1 else ", ".join(subjects[:-1]) + " or " + subjects[-1]


class PromptBaseline(InterventionMethod):
    name = "prompt"
    paper = "Instruction-prompt baseline (e.g. Pawelczyk et al. 2024; Lynch et al. 2024)"
    summary = "prepend an instruction to say 'I do not know' about the forget subjects"
    Config = PromptBaselineConfig
    uses_retain = True  # the gate's classifier trains on retain prompts
    variants = {"gate": {"gate": "classifier"}}  # this project's gated form, `NAME+gate`

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        subjects = cfg.subjects
        if subjects is None:
            subjects = list(dict.fromkeys(filter(None, map(subject_name, forget))))
        if not subjects:
            raise ConfigError("prompt: the forget items name no subject; set subjects=[...]")
        context = cfg.template.format(subject=join_subjects(subjects)) + cfg.separator
        detector, report = None, None
        if cfg.gate == "classifier":
            item_kind(forget, self.name)
            detector, report = fit_detector(tokenizer, forget, retain, **cfg.detector_kwargs(), method=self.name)
        prefix = InContextPrefix.from_text(tokenizer, context, detector)
        limit = position_limit(model)
        if limit is not None and prefix.prefix_length + cfg.reserve_tokens > limit:
            raise ConfigError(f"prompt: the instruction has {prefix.prefix_length} tokens; with {cfg.reserve_tokens} "
                              f"for the query it exceeds the model's {limit} positions (name fewer subjects)")
        summary = {"context_tokens": prefix.prefix_length, "subjects": len(subjects), "gate": cfg.gate}
        return prefix, {**summary, **({"classifier": report} if report else {})}
