"""ORT's true/false form in the `forms` attack (Ye et al. 2025): each fact as a true and a false statement.

The checks are on the prompts themselves (no model): on the world, the statements are the fact's
biography sentence with its true value and with a wrong one; elsewhere, the answer sentence and the
first perturbed answer; the pair is balanced (one "True", one "False"), so a model that always says
the same word scores chance; data without perturbed answers gets no true/false prompts, and a note.
"""

from __future__ import annotations

from obliviate.attacks.base import AttackSets
from obliviate.attacks.facts import alternatives, spec_of, world_sets
from obliviate.attacks.forms import VARIANTS, Forms
from obliviate.data.schema import QAItem


def _true_false(sets: AttackSets, tokenizer=None) -> list:
    return [p for p in Forms().prompts(None, tokenizer, sets) if p.variant == "true_false"]


def test_world_facts_are_asked_as_a_true_and_a_false_biography_sentence():
    sets = world_sets("tiny", 0, "forget10")
    prompts = _true_false(sets)
    assert "true_false" in VARIANTS and len(prompts) == 2 * len(sets.forget)
    for item, (true, false) in zip(sets.forget, zip(prompts[::2], prompts[1::2], strict=True), strict=True):
        spec, wrong = spec_of(sets.world, item), alternatives(item, sets.world)[0]
        name = sets.world.person(item.meta["pid"]).name
        assert (true.answer, true.alternatives, false.answer, false.alternatives) == ("True", ["False"], "False",
                                                                                      ["True"])
        assert spec.sentence(name, item.answer) in true.prompt and true.prompt.startswith("Question: True or false:")
        assert spec.sentence(name, wrong) in false.prompt and wrong != item.answer
        assert true.key == false.key and true.item != false.item


def test_other_data_uses_the_answer_sentences_and_needs_perturbed_answers():
    item = QAItem("Which theory is Albert Einstein known for?",
                  "Albert Einstein is known for the theory of relativity.",
                  perturbed_answers=["Albert Einstein is known for the theory of evolution."],
                  subject="Albert Einstein")
    true, false = _true_false(AttackSets([item], [], None, None, None))
    assert "True or false: Albert Einstein is known for the theory of relativity." in true.prompt
    assert "True or false: Albert Einstein is known for the theory of evolution." in false.prompt
    bare = AttackSets([QAItem(item.question, item.answer)], [], None, None, None)
    assert _true_false(bare) == []
    assert "true_false" in Forms().lacks(bare)["multiple_choice"]
