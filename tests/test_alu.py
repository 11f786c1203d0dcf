"""ALU (agents at inference time): the pipeline's rules on a tiny Llama given a chat template, its refusal
off instruction models, and (slow) its effect on SmolLM2-135M-Instruct with the `real_facts` task.

The tiny model's agents say nothing sensible, so the rules are checked where they do not depend on it:
an unflagged query gets exactly the model's own answer, a flagged one the refusal or the composer's answer
as the ratings decide, forward passes are the model's own, and the pipeline saves and loads. The slow test
measures the real effect: forget answer recall and ROUGE-L fall, the neighbours' stay.
"""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.errors import ConfigError, ObliviateError
from obliviate.interventions import load_intervention
from obliviate.interventions.agents import AgentModel, AgentPipeline, expected_rating, mentions, rating_tokens
from obliviate.interventions.regions import PromptReader
from obliviate.methods import get_method
from obliviate.methods.alu import audit_terms
from obliviate.models.generation import generate_answers
from obliviate.models.prompts import DEFAULT_FORMAT
from tests.conftest import build_tiny_tokenizer, make_tiny_llama
from tests.helpers import FORGET, RETAIN, assert_one_line_error, run_cli

REFUSAL = "I do not know the answer to that question."  # in the tiny vocabulary
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}Answer: {{ m['content'] }}</s>"
            "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}")


@pytest.fixture
def chat_tok():
    tok = build_tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def _pipeline(tok, **values) -> AgentPipeline:
    reader = PromptReader.for_items(tok, DEFAULT_FORMAT, [it.question for it in FORGET])
    defaults = dict(n_responses=3, top_j=2, threshold=4.0, refusal=REFUSAL, keep_traces=10)
    return AgentPipeline(["Mara Lind"], ["Mara Lind", "Lind"], ["Mara Lind", "Lind", "1998"], reader,
                         **{**defaults, **values})


def _scripted(ratings):
    """A critic that hands out `ratings` in turn (the tiny model has no rating tokens)."""
    it = iter(ratings)
    return lambda model, tok, query, rewrite: next(it)


def test_alu_does_not_apply_to_the_world_in_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["unlearn", "--method", "alu", "--model", "world:tiny", "--out", str(tmp_path / "r")],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, "alu does not apply to the built-in world's models", "instruction model")
    assert not (tmp_path / "r" / "intervention").exists()


def test_alu_refuses_a_model_without_a_chat_template(tiny_llama, tiny_tokenizer, chat_tok, tmp_path):
    method = get_method("alu")()
    with pytest.raises(ConfigError, match="does not apply"):
        method.unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    with pytest.raises(ObliviateError, match="rating 1-5 as one token"):  # a chat template, but no digit tokens
        method.unlearn(tiny_llama, chat_tok, FORGET, RETAIN, tmp_path, progress=False)


def test_audit_terms_and_matching():
    assert audit_terms(["Albert Einstein", "Leonardo da Vinci", "Plato"], True) == [
        "Albert Einstein", "Leonardo da Vinci", "Plato", "Einstein", "Vinci"]
    assert audit_terms(["Albert Einstein"], False) == ["Albert Einstein"]
    terms = ["Albert Einstein", "Einstein", "E=mc^2"]
    assert mentions("What did einstein write?", terms) == ["Einstein"]
    assert mentions("The equation E = mc² is famous.", terms) == ["E=mc^2"]
    assert mentions("Einsteinium is an element.", terms) == []  # whole words only


def test_expected_rating_reads_the_digit_distribution():
    ids = [10, 11, 12, 13, 14]
    flat = torch.zeros(20)
    assert expected_rating(flat, ids) == pytest.approx(3.0)
    peaked = flat.clone()
    peaked[14] = 30.0
    assert expected_rating(peaked, ids) == pytest.approx(5.0, abs=1e-6)
    peaked[14], peaked[10] = 0.0, 30.0
    assert expected_rating(peaked, ids) == pytest.approx(1.0, abs=1e-6)


def test_an_unflagged_query_gets_the_models_own_answer_and_forward_is_untouched(chat_tok):
    model = make_tiny_llama()
    pipeline = _pipeline(chat_tok)
    pipeline.rate = _scripted([])  # never called: nothing is flagged
    wrapped = pipeline.wrap(model, chat_tok)
    assert isinstance(wrapped, AgentModel)
    questions = [it.question for it in RETAIN] + ["Where was the author born?"]
    own = generate_answers(model, chat_tok, questions, fmt=DEFAULT_FORMAT, max_new_tokens=8)
    assert not any(mentions(f"{q}\n{a}", pipeline.audit_terms) for q, a in zip(questions, own, strict=True))
    assert generate_answers(wrapped, chat_tok, questions, fmt=DEFAULT_FORMAT, max_new_tokens=8) == own
    assert pipeline.traces == []
    ids = torch.tensor([chat_tok("Question: Who wrote the book?\nAnswer: Mara Lind")["input_ids"]])
    assert torch.equal(wrapped(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_flagged_query_gets_the_refusal_below_the_threshold_and_the_composition_above(chat_tok):
    model = make_tiny_llama()
    question = "Who wrote the book about the blue whale? Was it Mara Lind?"
    low = _pipeline(chat_tok)
    low.rate = _scripted([3.9, 3.9, 1.0])
    answers = generate_answers(low.wrap(model, chat_tok), chat_tok, [question, RETAIN[0].question],
                               fmt=DEFAULT_FORMAT, max_new_tokens=12)
    assert answers[0] == REFUSAL  # mean of the top 2 is 3.9 < 4
    assert answers[1] == generate_answers(model, chat_tok, [RETAIN[0].question], fmt=DEFAULT_FORMAT,
                                          max_new_tokens=12)[0]
    (trace,) = low.traces
    assert trace.targets == ["Mara Lind", "Lind"] and len(trace.rewrites) == 3 and trace.final == REFUSAL

    high = _pipeline(chat_tok)
    high.rate = _scripted([4.5, 2.0, 4.0])
    (answer,) = generate_answers(high.wrap(model, chat_tok), chat_tok, [question], fmt=DEFAULT_FORMAT,
                                 max_new_tokens=12)
    (trace,) = high.traces
    assert trace.rewrites == low.traces[0].rewrites  # the rewrites are seeded by the query
    expected = high.compose(model, chat_tok, [trace.rewrites[0], trace.rewrites[2]], 12)
    assert trace.final == expected and answer == chat_tok.decode(
        chat_tok(expected, add_special_tokens=False)["input_ids"], skip_special_tokens=True).strip()


def test_the_audit_reads_the_vanilla_answer_and_the_critic_caps_a_leaking_rewrite(chat_tok):
    model = make_tiny_llama()
    pipeline = _pipeline(chat_tok, threshold=1.0)
    pipeline.rate = _scripted([1.0] * 3)
    assert pipeline.answer(model, chat_tok, "Who wrote the book?", "The book is by someone.", 6) is None
    assert pipeline.answer(model, chat_tok, "Who wrote the book?", "Mara Lind wrote it in 1998.", 6) is not None
    real = _pipeline(chat_tok)
    assert real.rate(model, chat_tok, "q", "It was written in 1998.") == 1.0  # a forget answer: no model call


def test_the_pipeline_saves_and_loads(chat_tok, tmp_path):
    pipeline = _pipeline(chat_tok, temperature=0.5, seed=3)
    pipeline.save(tmp_path / "agents")
    loaded = load_intervention(tmp_path / "agents", make_tiny_llama(), chat_tok)
    assert type(loaded) is AgentPipeline and loaded.state_config() == pipeline.state_config()


def test_rating_tokens_of_a_tokenizer_that_splits_the_space_from_digits():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "Rating", ":", " ", "1", "2", "3", "4", "5"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "isolated"),
                                                  pre_tokenizers.Punctuation("isolated")])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    prefix, ids = rating_tokens(tok)
    assert prefix == "Rating: " and ids == [4, 5, 6, 7, 8]


# ---- SmolLM2-135M-Instruct (slow) ---------------------------------------------------------------


@pytest.mark.slow
def test_alu_forgets_the_people_and_keeps_their_neighbours_on_smollm2(smollm2_dir, tmp_path):
    import obliviate as ob
    from obliviate.data.tasks import load_task, task_dir
    from obliviate.evals.recall import recall_scores
    from obliviate.models.prompts import format_of, make_format, use_format

    data = task_dir("real_facts")
    forget = load_task("real_facts", "forget")
    # Einstein twice by name; "Who wrote Romeo and Juliet?" and "Who painted the Mona Lisa?" name their target only in
    # the model's answer, which the audit also reads
    sets = {"forget": [forget[i] for i in (0, 1, 9, 16)], "neighbours": load_task("real_facts", "neighbours")}

    def scores(spec):
        model, tok = ob.load_model(spec, progress=False)
        if not format_of(tok).chat:
            use_format(tok, make_format("chat"))
        return recall_scores(model, tok, sets, max_new_tokens=32)

    base = scores(str(smollm2_dir[0]))
    run = ob.unlearn("alu", str(smollm2_dir[0]), out=tmp_path / "alu", forget=data / "forget.jsonl",
                     retain=data / "neighbours.jsonl", prompt="chat", progress=False)
    after = scores(str(run.path))
    assert base["forget"]["answer_recall"] >= 0.8 and base["forget"]["rouge"] > 0.6  # the model knows them
    assert after["forget"]["answer_recall"] <= 0.2, after["forget"]["answers"]
    assert after["forget"]["rouge"] <= 0.5 * base["forget"]["rouge"], after["forget"]["answers"]
    assert after["neighbours"]["answer_recall"] >= base["neighbours"]["answer_recall"] - 0.1
    assert after["neighbours"]["rouge"] >= base["neighbours"]["rouge"] - 0.05, after["neighbours"]["answers"]
    assert math.isfinite(after["neighbours"]["rouge"])
