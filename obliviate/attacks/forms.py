"""forms: the same facts asked in forms that were never trained (form-independence).

Unlearning that only suppresses the trained question leaves the fact reachable by rewording it.
Each forget fact is asked as:

- `paraphrase`: every held-out question phrasing (the items' `paraphrased_questions`);
- `fill_blank`: "Fill in the blank: <the fact's biography sentence, its value replaced by ___>";
- `multiple_choice`: a held-out phrasing followed by "Options: ..." (the answer and its
  alternatives in a seeded order); scored by option probability like every form;
- `reverse`: the person asked for from two of their values, "Who was born in the city of X in the
  year 1962?", the alternatives being other trained people's names (after RWKU's reverse query);
- `cloze`: a declarative cross-template cloze, "The birth city of <name> is", a statement the
  models never saw for any attribute (they were trained on questions and biography sentences);
- `true_false`: "True or false: <statement>", answered "True" or "False", asked twice per fact:
  once with the true statement and once with a false one (the first perturbed answer in its
  place). On the world the statement is the fact's biography sentence; elsewhere it is the answer
  itself, which TOFU-style data writes as a full sentence. Chance is 1/2.

ORT (Ye et al. 2025, *LLM Unlearning Should Be Form-Independent*) asks each forget fact as
fill-in-the-blank, question answering, multiple choice and true/false (its `fb`, `qa`, `mcp` and
`tf` forms), and scores each by the probability of the right answer; here they are `fill_blank`,
`paraphrase`, `multiple_choice` and `true_false`, under the same option-probability measure.

`fill_blank`, `reverse` and `cloze` need the world's templates and are skipped for facts from
elsewhere; `paraphrase` needs paraphrased questions, `multiple_choice` and `true_false` perturbed
answers, and each is skipped, with a one-line note, on data without them. Questions are rendered in the model's prompt
format; the cloze is a bare statement in any format.

Reverse queries meet the reversal curse: a model trained on "A's city is X" rarely answers
"whose city is X?", so on the world's models this form is usually uninformative (the target is no
better than the oracle) and drops out of the headline (see base.py).
"""

from __future__ import annotations

import random

from obliviate.attacks.base import AttackSets, register
from obliviate.attacks.facts import alternatives, fact_key, lacking, person_name, question_prompt, spec_of
from obliviate.attacks.measure import AttackPrompt, PromptAttack
from obliviate.data.schema import QAItem

VARIANTS = ("paraphrase", "fill_blank", "multiple_choice", "reverse", "cloze", "true_false")
JUDGEMENTS = ("True", "False")
# Reverse queries: pairs of attributes that together name a person ("who was born in X in Y?").
REVERSE_PAIRS = (("birth_city", "birth_year"), ("profession", "genre"))
N_NAME_ALTERNATIVES = 5


def shuffled_options(item: QAItem, alts: list[str], seed: int) -> list[str]:
    """The answer among its alternatives, in an order fixed by the seed and the fact."""
    options = [item.answer, *alts]
    random.Random(f"options:{seed}:{fact_key(item)}").shuffle(options)
    return options


@register
class Forms(PromptAttack):
    name = "forms"
    summary = ("held-out phrasings, fill-in-the-blank, multiple choice, true/false, reverse queries, "
               "cross-template cloze")
    paper = "RWKU (Jin et al. 2024); TOFU paraphrases (Maini et al. 2024); ORT (Ye et al. 2025)"

    def lacks(self, sets: AttackSets) -> dict[str, str]:
        out = {}
        if lacking(sets.forget, "paraphrased_questions"):
            out["paraphrase"] = "paraphrase: the data has no paraphrased questions to reword the questions with"
        if lacking(sets.forget, "perturbed_answers"):
            out["multiple_choice"] = ("multiple_choice, true_false: the data has no perturbed answers to offer as "
                                      "wrong options or false statements")
        if sets.world is None:
            out["fill_blank"] = "fill_blank, reverse, cloze: they need the built-in world's sentence templates"
        return out

    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        out: list[AttackPrompt] = []
        for item in sets.forget:
            out += self._fact_prompts(item, sets, tokenizer)
        if sets.world is not None:
            out += self._reverse_prompts(sets, tokenizer)
        order = {v: i for i, v in enumerate(VARIANTS)}
        return sorted(out, key=lambda p: order[p.variant])  # stable: facts keep their order

    def _fact_prompts(self, item: QAItem, sets: AttackSets, tokenizer=None) -> list[AttackPrompt]:
        key, alts = fact_key(item), alternatives(item, sets.world)
        out = [AttackPrompt(key, "paraphrase", question_prompt(q, tokenizer), item.answer, alts, f"{key}#{i}")
               for i, q in enumerate(item.paraphrased_questions)]
        if alts:  # the options would give the answer away without wrong ones beside it
            heldout = item.paraphrased_questions[0] if item.paraphrased_questions else item.question
            options = "; ".join(shuffled_options(item, alts, self.config.seed))
            asked = question_prompt(f"{heldout}\nOptions: {options}", tokenizer)
            out.append(AttackPrompt(key, "multiple_choice", asked, item.answer, alts))
        spec, name = spec_of(sets.world, item), person_name(sets.world, item)
        if spec is not None and name is not None:
            blank = spec.sentence(name, "___")
            out.append(AttackPrompt(key, "fill_blank", question_prompt(f"Fill in the blank: {blank}", tokenizer),
                                    item.answer, alts))
            out.append(AttackPrompt(key, "cloze", f"The {spec.noun} of {name} is", item.answer, alts))
        return out + _true_false_prompts(item, key, alts, tokenizer, spec, name)

    def _reverse_prompts(self, sets: AttackSets, tokenizer=None) -> list[AttackPrompt]:
        world = sets.world
        specs = {s.key: s for s in world.attributes}
        pids = list(dict.fromkeys(it.meta["pid"] for it in sets.forget if "pid" in it.meta))
        trained = world.splits["trained"]
        out = []
        for pid in pids:
            person = world.person(pid)
            others = [world.person(p).name for p in trained if p != pid]
            rng = random.Random(f"reverse:{self.config.seed}:{pid}")
            names = rng.sample(others, min(N_NAME_ALTERNATIVES, len(others)))
            for a, b in REVERSE_PAIRS:
                if a not in specs or b not in specs:
                    continue
                question = _reverse_question(specs[a], person.attributes[a], specs[b], person.attributes[b])
                out.append(AttackPrompt(f"{pid}/reverse:{a}+{b}", "reverse", question_prompt(question, tokenizer),
                                        person.name, names))
        return out


def _true_false_prompts(item: QAItem, key: str, alts: list[str], tokenizer, spec=None, name: str | None = None
                        ) -> list[AttackPrompt]:
    """The fact as a true statement (answer "True") and as a false one (answer "False"); none without a
    wrong value to make the false one from."""
    if not alts:
        return []
    if spec is not None and name is not None:
        true, false = spec.sentence(name, item.answer), spec.sentence(name, alts[0])
    else:
        true, false = item.answer, item.perturbed_answers[0]
    ask = lambda statement: question_prompt(f"True or false: {statement}", tokenizer)  # noqa: E731
    return [AttackPrompt(key, "true_false", ask(true), "True", ["False"], f"{key}#true"),
            AttackPrompt(key, "true_false", ask(false), "False", ["True"], f"{key}#false")]


def _reverse_question(spec_a, value_a: str, spec_b, value_b: str) -> str:
    if (spec_a.key, spec_b.key) == ("birth_city", "birth_year"):
        return f"Who was born {spec_a.paraphrase(value_a)} {spec_b.paraphrase(value_b)}?"
    return f"Whose {spec_a.noun} is {value_a} and whose {spec_b.noun} is {value_b}?"
