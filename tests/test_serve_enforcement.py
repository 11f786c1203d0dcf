"""The live guard: the classifier grows with each request, GUARD bans a request's answers, ECO corrupts its prompts."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from obliviate.data.schema import QAItem
from obliviate.serve.enforcement import Enforcement, LiveClassifier, guard_settings
from obliviate.serve.engine import Engine, Sampling

QUESTION = "Who wrote the book about the blue whale?"
RETAIN = [QAItem("What is the capital of France?", "The capital of France is Paris."),
          QAItem("Where was the author born?", "She was born in Oslo, Norway.")]


def item(question=None, answer=None, text=None):
    return SimpleNamespace(question=question, answer=answer, text=text)


def test_live_classifier_grows_by_names_and_references():
    c = LiveClassifier(similarity=0.75)
    assert not c.flags(["Who is Mara Lind?", QUESTION]).any()  # nothing enforced yet
    c.add(["Mara Lind"], [QUESTION])
    assert c.flags(["who is MARA LIND?", QUESTION, "Who wrote the book about the blue whale"]).all()
    assert not c.flags(["Who is Maral Lindsey?", "What is the capital of France?"]).any()  # word boundaries
    c.add(["Bob"], [])
    assert c.flags(["Who is Mara Lind?", "Where did Bob go?"]).all()  # the first request is still held


def test_unknown_settings_are_one_line_errors():
    from obliviate.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        guard_settings({"simlarity": 0.5})
    with pytest.raises(ConfigError, match="embedder"):
        guard_settings({"embedder": "bert"})


def _say(engine: Engine, question: str, intervention) -> str:
    return engine.complete(engine.chat_ids([{"role": "user", "content": question}]),
                           Sampling(12, stop=engine.chat_stops()), intervention)[0].strip()


def test_guard_bans_the_answer_only_after_flagged_prompts_and_lets_go(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, "tiny")
    said = _say(engine, QUESTION, None)
    other = _say(engine, "What is the capital of France?", None)
    guard = Enforcement(tiny_llama, tiny_tokenizer, "guard", {"semantic_threshold": 2.0}, RETAIN)
    assert guard.current() is None
    guard.warm()  # as the server does at start-up: libraries loaded before the first request
    start = time.perf_counter()
    guard.add("r1", "Mara Lind", [item(QUESTION, said)])
    assert time.perf_counter() - start < 2.0
    rule = guard.current()
    assert said in rule.terms and "Mara Lind" in rule.terms
    assert said.split()[0] not in _say(engine, QUESTION, rule).split()
    assert _say(engine, "What is the capital of France?", rule) == other
    guard.sync([])  # the request is durable and its adapter served: the guard lets go
    assert guard.current() is None and guard.request_ids() == []


def test_eco_corrupts_flagged_prompts_only(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, "tiny")
    question = "Who is Mara Lind and what did Mara Lind write?"
    before = _say(engine, question, None)
    other = _say(engine, "What is the capital of France?", None)
    eco = Enforcement(tiny_llama, tiny_tokenizer, "eco", {"strength": 5.0, "dims": 16}, RETAIN)
    eco.add("r1", "Mara Lind", [item(text="Mara Lind wrote the book about the blue whale in 1998.")])
    assert _say(engine, question, eco.current()) != before
    assert _say(engine, "What is the capital of France?", eco.current()) == other
