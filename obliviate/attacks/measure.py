"""How an attacked question is scored: does the model still know the fact, and does it say it?

An attack turns forget facts into `AttackPrompt`s: a text that ends where the answer starts, the
true answer and wrong alternatives of the same kind (for a world fact, the values of its perturbed
answers: other cities for a birth city). `measure` scores each prompt on one model:

- **knows** (recognition): 1 if the true answer has the lowest mean negative log-likelihood
  among [answer, *alternatives] as continuations of the prompt, else 0 (ties count as 0). With k
  alternatives chance is 1/(k+1), but a model can sit below chance: the world's oracle has seen
  the alternatives as other people's values and never the forget person's own, so the oracle,
  not chance, is the baseline (see base.py).
- **option_prob**: P(a) / sum_j P(option_j) with P = exp(-mean NLL), TOFU's option-normalised
  probability; a continuous view of the same comparison.
- **answers** (recall): 1 if the greedy continuation (cut where the prompt format stops: a newline in
  the plain format, the end of the turn in a chat format; at most `max_new_tokens`)
  contains the true answer as whole words after normalising (case, punctuation, spaces), and none
  of the alternatives; else 0.

Options are scored without EOS, so a cloze prompt ("The birth city of X is") and a QA prompt
("Answer:") compare the same tokens. An option follows its prompt after a space, or directly where
the prompt ends in whitespace (a chat template's generation prompt). Prompts are tokenized in the
model's format (a chat template's BOS is not doubled) and generation stops where the format stops.

Each row also records `chance`, the `knows` of a model that guesses: 1/(k+1) with k alternatives.
Without an oracle it is the baseline of the recovery (base.py).

Recognition is robust to a small model's brittle formatting: the world's models rank the true
answer first under prompts whose wording makes them generate nonsense, which is why `knows` is the
headline measure and `answers` is reported beside it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from obliviate.attacks.base import Attack, AttackSets
from obliviate.attacks.facts import answer_separator, encode_texts
from obliviate.data.checks import normalise
from obliviate.errors import ObliviateError
from obliviate.models.generation import generate_greedy
from obliviate.models.prompts import encode_answers, format_of
from obliviate.models.scoring import score_continuations


@dataclass
class AttackPrompt:
    """One attacked question about one fact."""

    key: str  # the fact (subject/attribute) the question is about: the unit of the bootstrap
    variant: str  # which form of the attack
    prompt: str  # everything before the answer; the answer is scored as " " + option
    answer: str
    alternatives: list[str] = field(default_factory=list)
    item: str | None = None  # unique within the variant when a fact has several prompts

    def row(self) -> dict:
        return {"key": self.key, "variant": self.variant, "item": self.item or self.key}


def mentions(text: str, phrase: str) -> bool:
    """Whether normalised `phrase` occurs in normalised `text` as whole words."""
    needle = normalise(phrase)
    return bool(needle) and f" {needle} " in f" {normalise(text)} "


def answers_correctly(generation: str, answer: str, alternatives: Sequence[str] = ()) -> bool:
    """The generation names the answer and none of the alternatives."""
    return mentions(generation, answer) and not any(mentions(generation, alt) for alt in alternatives)


def _option_scores(model, tokenizer, prompts: Sequence[AttackPrompt], ids: list[list[int]], batch_size: int,
                   progress: bool) -> list[tuple[float, float]]:
    """(knows, option_prob) per prompt; NaN for a prompt without alternatives."""
    texts = [[f"{answer_separator(p.prompt)}{o}" for o in (p.answer, *p.alternatives)] for p in prompts]
    flat = encode_answers(tokenizer, [t for row in texts for t in row], eos=False)
    conts, at = [], 0
    for row in texts:
        conts.append(flat[at:at + len(row)])
        at += len(row)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = score_continuations(model, ids, conts, batch_size=batch_size, pad_id=pad, progress=progress)
    out = []
    for p, scores in zip(prompts, scored, strict=True):
        if not p.alternatives:
            out.append((float("nan"), float("nan")))
            continue
        nll = np.array([s.mean_nll for s in scores])  # (k + 1,)
        knows = float(nll[0] < nll[1:].min())
        out.append((knows, float(np.exp(-nll[0] - logsumexp(-nll)))))
    return out


def measure(model, tokenizer, prompts: Sequence[AttackPrompt], generate: bool = True, batch_size: int = 32,
            max_new_tokens: int | None = None, progress: bool = False) -> list[dict]:
    """Per prompt: key, variant, item, knows, option_prob, chance and, with `generate`, answers and generation.

    `max_new_tokens` defaults to the prompt format's generation budget.
    """
    if not prompts:
        return []
    prompts = [_trimmed(p) for p in prompts]
    ids = encode_texts(tokenizer, [p.prompt for p in prompts])
    scores = _option_scores(model, tokenizer, prompts, ids, batch_size, progress)
    rows = []
    for p, (knows, prob) in zip(prompts, scores, strict=True):
        chance = 1.0 / (1 + len(p.alternatives)) if p.alternatives else float("nan")
        rows.append({**p.row(), "knows": knows, "option_prob": prob, "chance": chance})
    if generate:
        gens = greedy(model, tokenizer, ids, max_new_tokens, batch_size)
        for row, p, gen in zip(rows, prompts, gens, strict=True):
            row["answers"] = float(answers_correctly(gen, p.answer, p.alternatives))
            row["generation"] = gen
    return rows


def _trimmed(prompt: AttackPrompt) -> AttackPrompt:
    """The prompt without trailing spaces (the option brings its own), keeping a chat prompt's newline."""
    text = prompt.prompt.rstrip(" ")
    if text == prompt.prompt:
        return prompt
    return AttackPrompt(prompt.key, prompt.variant, text, prompt.answer, prompt.alternatives, prompt.item)


def greedy(model, tokenizer, ids: list[list[int]], max_new_tokens: int | None, batch_size: int) -> list[str]:
    """Greedy continuations of prompt ids, stopping where the model's format stops (EOS, end of turn, newline).

    `max_new_tokens` defaults to the format's budget.
    """
    fmt = format_of(tokenizer)
    return generate_greedy(model, tokenizer, ids, max_new_tokens=max_new_tokens or fmt.max_new_tokens,
                           batch_size=batch_size,
                           stop_at=fmt.stop_strings(), stop_ids=fmt.stop_token_ids(tokenizer))


class PromptAttack(Attack):
    """An attack that is a set of prompts: build them (`prompts`), then `measure` them."""

    @abstractmethod
    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        """The attacked questions for `model` (most attacks ignore the model; stepwise asks it first)."""

    def run(self, model, tokenizer, sets: AttackSets, progress: bool = False) -> dict:
        cfg = self.config
        prompts = self.prompts(model, tokenizer, sets)
        if not prompts:
            raise ObliviateError(f"{self.name}: nothing to ask on these facts ("
                                 + ("; ".join(self.lacks(sets).values()) or "no forget facts") + ")")
        rows = measure(model, tokenizer, prompts, generate=cfg.generate,
                       batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, progress=progress)
        return {"rows": rows}
