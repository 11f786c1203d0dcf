"""The lean greedy loop and known greedy prefixes (obliviate.models.generation).

The lean loop must give `model.generate`'s tokens, row for row, while finished rows leave the batch;
tokens known from a teacher-forced pass (the scored answer's top tokens) must change nothing but the work.
The chat model of tests/fixtures/ou-tiny answers in 1 to 25 tokens and stops at its end-of-turn token,
so its rows finish at different steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import obliviate.models.generation as G
from obliviate.data.adapters.tofu import load_tofu
from obliviate.evals import open_unlearning as ou
from obliviate.models.batching import ContinuationScores
from obliviate.models.prompts import encode_prompts
from obliviate.models.scoring import score_qa

FIXTURE = Path(__file__).parent / "fixtures" / "ou-tiny"


@pytest.fixture(scope="module")
def chat():
    model = AutoModelForCausalLM.from_pretrained(FIXTURE / "tiny-model", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(FIXTURE / "tiny-model")
    fmt = ou.preset_format()
    data = load_tofu(FIXTURE / "TOFU", "forget10")
    items = [*data.forget[:16], *data.retain[:12], *data.utility["real_authors"][:4]]
    prompts = encode_prompts(tok, [fmt.render(it.question, tok) for it in items], fmt)
    return model, tok, fmt, items, prompts


def hf_tokens(model, tok, fmt, prompts, batch_size, budget):
    """`model.generate`'s new tokens per prompt, cut after the first stop token."""
    stops, out = set(fmt.stop_token_ids(tok)), []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s:s + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in batch])[:, None]).long()
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=sorted(stops))
        for row in gen[:, width:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def test_lean_loop_gives_generates_tokens_while_finished_rows_leave(chat):
    model, tok, fmt, _, prompts = chat
    assert G.plain_decoding(model)
    want = hf_tokens(model, tok, fmt, prompts, 8, 40)
    assert len({len(w) for w in want}) > 5  # rows finish at many different steps
    stops = set(fmt.stop_token_ids(tok))
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: batch_sizes.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        for s in range(0, len(prompts), 8):
            batch = prompts[s:s + 8]
            got = G._decode(model, batch, [[] for _ in batch], tok.pad_token_id,
                            lambda t: G._done(tok, t, 40, stops, (), 2))
            assert got == want[s:s + 8]
    finally:
        hook.remove()
    assert min(batch_sizes) < 8  # finished rows left their batch
    texts = G.generate_greedy(model, tok, prompts, 40, 8, fmt.stop_strings(), sorted(stops))
    assert texts == G._generate_hf(model, tok, prompts, 40, 8, fmt.stop_strings(), sorted(stops), tok.pad_token_id)


def test_known_greedy_prefixes_change_the_work_not_the_answers(chat):
    model, tok, fmt, items, prompts = chat
    stops = sorted(fmt.stop_token_ids(tok))
    plain = G.generate_greedy(model, tok, prompts, 200, 8, (), stops)
    scored = score_qa(model, tok, items, fmt=fmt, fields=("answer",))
    known = [s["answer"].greedy_prefix() for s in scored]
    ended = [k for k in known if k and k[-1] in stops]
    assert 0 < len(ended) < len(known)  # some answers are the model's own, some part from it
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        assert G.generate_greedy(model, tok, prompts, 200, 8, (), stops, known=known) == plain
    finally:
        hook.remove()
    assert calls and max(calls) <= len(known) - len(ended)  # prompts with a finished known answer are not decoded
    # a budget shorter than the known tokens cuts them, as decoding would
    short = G.generate_greedy(model, tok, prompts, 3, 8, (), stops, known=known)
    assert short == G.generate_greedy(model, tok, prompts, 3, 8, (), stops)


def test_greedy_prefix_stops_at_the_first_token_the_model_would_not_choose():
    def scores(top, match):
        return ContinuationScores(np.zeros(len(top), np.float32), np.array(match), argmax=np.array(top))

    assert scores([5, 6, 9, 8], [True, True, False, True]).greedy_prefix() == [5, 6, 9]
    assert scores([5, 6, 7], [True, True, True]).greedy_prefix() == [5, 6, 7]
    assert scores([4, 6], [False, True]).greedy_prefix() == [4]
    assert ContinuationScores(np.zeros(2, np.float32), np.ones(2, bool)).greedy_prefix() == []


def test_logits_altering_settings_keep_model_generate(tiny_llama, tiny_tokenizer):
    assert G.plain_decoding(tiny_llama)
    tiny_llama.generation_config.repetition_penalty = 1.3
    assert not G.plain_decoding(tiny_llama)
    prompts = ["Question: What is the capital of France?\nAnswer:", "one two"]
    got = G.generate_greedy(tiny_llama, tiny_tokenizer, prompts, max_new_tokens=8, stop_at=())
    ids = [tiny_tokenizer(p)["input_ids"] for p in prompts]
    assert got == G._generate_hf(tiny_llama, tiny_tokenizer, ids, 8, 32, [], tiny_tokenizer.eos_token_id, 0)
