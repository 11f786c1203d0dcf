"""Prompt formats end to end: chat templates (Llama-3 style and ChatML) rendered, tokenized, trained and
scored the same way, generation stops at the end-of-turn token, and the interventions read the question
out of chat prompts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from obliviate.data.schema import QAItem
from obliviate.interventions.regions import classifier_text
from obliviate.models.prompts import (
    DEFAULT_FORMAT,
    PromptFormat,
    encode_pair,
    format_of,
    make_format,
    use_format,
)
from obliviate.models.scoring import score_qa
from tests.conftest import make_tiny_llama
from tests.helpers import run_cli

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
    "{% if date_string is not defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "
    "{{ date_string }}\n\n{{ system_message }}<|eot_id|>{% for message in messages %}<|start_header_id|>"
    "{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
    "+ '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ("system user assistant You are a helpful . Cutting Knowledge Date : December 2023 Today 26 Jul 2024 10 Apr "
         "2025 Where was Mara Lind born ? She in Oslo , Norway What genre does write science fiction and poetry "
         "When did the river flood old town It flooded spring of 1921 is capital France The Paris Who wrote book "
         "about blue whale Alice it 1998 Bob He London Rome Berlin Madrid music film writes city")
FORGET = [QAItem("Where was Mara Lind born ?", "She was born in Oslo , Norway .", None,
                 ["She was born in Rome .", "She was born in Berlin ."]),
          QAItem("What genre does Mara Lind write ?", "She writes science fiction and poetry .", None,
                 ["She writes music .", "She writes film ."])]
RETAIN = [QAItem("What is the capital of France ?", "The capital of France is Paris .", None,
                 ["The capital of France is Rome .", "The capital of France is Berlin ."]),
          QAItem("Who wrote the book about the blue whale ?", "Alice wrote it in 1998 .", None,
                 ["Bob wrote it in 1998 .", "Alice wrote it in 1921 ."]),
          QAItem("Where was Bob born ?", "He was born in London .", None,
                 ["He was born in Madrid .", "He was born in Paris ."])]


def chat_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace-split words) with a Llama-3-style or ChatML chat template."""
    specials = {"llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}[kind]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", *specials, "\n", "\n\n"])}
    for word in WORDS.split():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                  pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=specials[1:])
    if kind == "llama3":
        fast.bos_token, fast.eos_token, fast.chat_template = "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE
    else:
        fast.eos_token, fast.chat_template = "<|endoftext|>", CHATML_TEMPLATE
    return fast


SYSTEM = "You are a helpful assistant ."


def test_the_rendered_prompt_is_pinned_for_both_templates():
    q = "Where was Mara Lind born ?"
    llama3 = make_format("chat", SYSTEM, {"date_string": "10 Apr 2025"})
    assert llama3.render(q, chat_tokenizer("llama3")) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 10 Apr 2025\n\nYou are a helpful assistant .<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nWhere was Mara Lind born ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    chatml = make_format("chat", SYSTEM)
    assert chatml.render(q, chat_tokenizer("chatml")) == (
        "<|im_start|>system\nYou are a helpful assistant .<|im_end|>\n<|im_start|>user\nWhere was Mara Lind born ?"
        "<|im_end|>\n<|im_start|>assistant\n")
    assert DEFAULT_FORMAT.render(q) == "Question: Where was Mara Lind born ?\nAnswer:"
    assert chatml.max_new_tokens == 200 and DEFAULT_FORMAT.max_new_tokens == 32


@pytest.mark.parametrize("kind,end_of_turn", [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")])
def test_chat_tokens_have_one_bos_and_the_answer_ends_with_the_turn(kind, end_of_turn):
    tok = chat_tokenizer(kind)
    fmt = make_format("chat", SYSTEM)
    prompt, answer = encode_pair(tok, FORGET[0].question, FORGET[0].answer, fmt)
    if kind == "llama3":
        assert prompt.count(tok.bos_token_id) == 1 and prompt[0] == tok.bos_token_id  # the template's BOS, once
    turn = tok.convert_tokens_to_ids(end_of_turn)
    assert turn in answer and tok.decode(answer, skip_special_tokens=True).strip() == FORGET[0].answer
    full = fmt.render_turn(FORGET[0].question, FORGET[0].answer, tok)
    assert prompt + answer == tok(full, add_special_tokens=False)["input_ids"]
    _, no_eos = encode_pair(tok, FORGET[0].question, FORGET[0].answer, fmt, eos=False)
    assert no_eos == answer[:answer.index(turn)]  # Min-K% and extraction strength drop the closing turn
    assert turn in fmt.stop_token_ids(tok)
    assert PromptFormat.from_state(json.loads(json.dumps(fmt.state()))) == fmt


@pytest.mark.parametrize("kind", ["llama3", "chatml"])
def test_the_classifier_reads_the_question_alone_out_of_a_chat_prompt(kind):
    tok = chat_tokenizer(kind)
    fmt = make_format("chat", SYSTEM, {"date_string": "10 Apr 2025"} if kind == "llama3" else None)
    assert classifier_text(tok, FORGET[0].question, fmt) == FORGET[0].question


def _train(tok, fmt: PromptFormat, steps: int = 150):
    """A tiny Llama trained in `fmt` on every item (and set as the tokenizer's format)."""
    from obliviate.train.data import collate, encode_items
    from obliviate.train.losses import ce_loss

    use_format(tok, fmt)
    torch.manual_seed(0)
    model = make_tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id).train()
    batch = collate(encode_items(tok, FORGET + RETAIN)[0], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        ce_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _probs(model, tok, items) -> np.ndarray:
    return np.array([math.exp(-s["answer"].mean_nll) for s in score_qa(model, tok, items, fields=("answer",))])


@pytest.fixture(scope="module")
def chatml_toy():
    tok = chat_tokenizer("chatml")
    return _train(tok, make_format("chat", SYSTEM, max_new_tokens=16)), tok


def test_training_scoring_and_generation_follow_the_tokenizers_format(chatml_toy):
    from obliviate.models.generation import generate_answers

    model, tok = chatml_toy
    assert format_of(tok).chat
    assert _probs(model, tok, FORGET + RETAIN).min() > 0.9  # trained and scored in the same chat format
    answers = generate_answers(model, tok, [it.question for it in RETAIN])
    assert answers == [it.answer for it in RETAIN]  # stopped at <|im_end|>, nothing after it


@pytest.mark.parametrize("name", ["eco", "guard"])
def test_eco_and_guard_flag_and_change_chat_prompts(chatml_toy, name, tmp_path):
    from obliviate.methods.eco import ECO, ECOConfig
    from obliviate.methods.guard import GUARD, GUARDConfig

    model, tok = chatml_toy
    method = {"eco": ECO(ECOConfig(embedder="hashing", threshold=0.5, target="prompt", corruption="rand_noise_top_k",
                                   dims=4, strength=1.0, zo_steps=4, zo_lr=30.0, target_probability=0.3)),
              "guard": GUARD(GUARDConfig(embedder="hashing", threshold=0.5))}[name]
    summary = method.unlearn(model, tok, FORGET, RETAIN, tmp_path, progress=False)
    assert summary["classifier"]["forget_flag_rate"] == 1 and summary["classifier"]["retain_flag_rate"] == 0
    wrapped = method.intervention.wrap(model, tok)
    assert np.all(_probs(wrapped, tok, FORGET) < _probs(model, tok, FORGET) - 0.05)  # as in the plain format
    np.testing.assert_allclose(_probs(wrapped, tok, RETAIN), _probs(model, tok, RETAIN), atol=1e-6)


def test_a_chat_tokenizer_without_prompt_gets_a_one_line_warning(tmp_path, monkeypatch, capsys):
    from obliviate.models.loading import save_model

    tok = chat_tokenizer("chatml")
    model = make_tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    save_model(model, tok, tmp_path / "model")
    for name, items in (("forget", FORGET), ("retain", RETAIN)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    args = ["eval", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"), "--retain",
            str(tmp_path / "retain.jsonl"), "--no-generate", "--json"]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "plain")], monkeypatch, capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "--prompt chat" in warnings[0], err
    code, out, err = run_cli([*args, "--out", str(tmp_path / "chat"), "--prompt", "chat"], monkeypatch, capsys)
    assert code == 0 and "warning:" not in err
    assert json.loads(out)["prompt_format"]["chat"] is True
