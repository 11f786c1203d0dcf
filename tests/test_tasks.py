"""The shipped `real_facts` task: its files read as QA items, are well formed, and answers match as intended."""

from __future__ import annotations

import pytest

from obliviate.data import load_items
from obliviate.data.tasks import (
    TASK_SPLITS,
    answer_matches,
    first_sentence,
    item_aliases,
    load_task,
    normalise_answer,
    task_dir,
)
from obliviate.errors import ConfigError

SPLITS = TASK_SPLITS["real_facts"]


@pytest.fixture(scope="module")
def sets():
    return {split: load_task("real_facts", split) for split in SPLITS}


def test_every_set_loads_with_the_full_qa_schema(sets):
    assert len(sets["forget"]) >= 15 and len(sets["neighbours"]) >= 8 and len(sets["general"]) >= 8
    for items in sets.values():
        for it in items:
            assert it.question and it.answer and it.paraphrased_answer and it.subject
            assert len(it.perturbed_answers) == 3 and it.answer not in it.perturbed_answers
            assert it.paraphrased_questions and it.paraphrased_questions[0] != it.question
            assert answer_matches(it.answer, item_aliases(it)), it.answer
            assert not any(answer_matches(p, [it.meta["short_answer"]]) for p in it.perturbed_answers), it.question


def test_forget_people_are_not_in_the_retain_sets(sets):
    forget = {it.subject for it in sets["forget"]}
    assert 2 <= len(forget) <= 3
    assert not forget & {it.subject for split in ("neighbours", "general") for it in sets[split]}
    questions = [it.question for items in sets.values() for it in items]
    assert len(questions) == len(set(questions))


def test_the_directory_reads_by_split_name_like_any_data_directory(sets):
    assert [it.question for it in load_items(task_dir("real_facts"), split="forget")] == \
        [it.question for it in sets["forget"]]


def test_unknown_task_or_split_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown task"):
        load_task("nope", "forget")
    with pytest.raises(ConfigError, match="splits: forget, neighbours, general"):
        load_task("real_facts", "retain")


@pytest.mark.parametrize(("said", "aliases", "ok"), [
    ("A spider has eight legs.", ["8"], True),
    ("Six.", ["6"], True),
    ("It has 18 legs.", ["8"], False),
    ("He was born in 18790.", ["1879"], False),
    ("The famous equation is E = mc².", ["E=mc^2"], True),
    ("Water is H₂O.", ["H2O"], True),
    ("Shakespeare was born in Stratford-upon-Avon.", ["Stratford-upon-Avon"], True),
    ("The capital of France is Lyon.", ["Paris"], False),
    ("The freezing point of water is -18.0°C.", ["0"], False),
    ("It costs 1,000 pounds.", ["1000"], True),
])
def test_answer_matches_normalised_whole_words(said, aliases, ok):
    assert answer_matches(said, aliases) is ok


def test_normalise_answer():
    assert normalise_answer("  Twelve Months!") == "12 months"
    assert normalise_answer("E = mc², -18.0°C") == "e mc2 18.0 c"


def test_first_sentence_stops_at_a_sentence_end_only():
    text = "Einstein won the Nobel Prize in 1921. It was awarded to Niels Bohr."
    assert first_sentence(text) == "Einstein won the Nobel Prize in 1921."
    assert first_sentence("It is 18.0 degrees. Really.") == "It is 18.0 degrees."
    assert first_sentence("E=mc². 2 more") == "E=mc²."
    assert first_sentence("Paris\nLyon. Nice.") == "Paris"
