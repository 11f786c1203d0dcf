"""Model loading, batched scoring and batched generation against unbatched references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from transformers import MistralConfig, MistralForCausalLM

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError, ObliviateError
from obliviate.models.generation import cut_at_stop, generate_answers, generate_greedy, hidden_states
from obliviate.models.loading import ensure_pad_token, load_model, resolve_device, resolve_dtype, save_model
from obliviate.models.prompts import DEFAULT_FORMAT, PromptFormat, encode_pair
from obliviate.models.scoring import ContinuationScores, score_continuations, score_qa, score_texts

ATOL = 1e-4


def make_tiny_mistral(sliding_window: int) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=sliding_window, max_position_embeddings=256,
    )
    return MistralForCausalLM(config).eval()


MODELS = {
    "llama": make_tiny_llama,
    "llama-eager": lambda: make_tiny_llama(attn_implementation="eager"),
    "gpt2": make_tiny_gpt2,
    "mistral-window": lambda: make_tiny_mistral(sliding_window=6),
}


# ---------------------------------------------------------------------------------------------
# Unbatched references
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_scores(model, prefix: list[int], tokens: list[int]) -> dict[str, np.ndarray]:
    """Scores of `tokens` after `prefix` from one unpadded forward pass over prefix + tokens."""
    logits = model(torch.tensor([prefix + tokens])).logits[0].double()  # (T, V)
    logp = logits.log_softmax(-1)[len(prefix) - 1 : len(prefix) + len(tokens) - 1]  # (n, V)
    target = torch.tensor(tokens)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    return {
        "logprobs": logp.gather(-1, target[:, None]).squeeze(-1).numpy(),
        "argmax_match": (logp.argmax(-1) == target).numpy(),
        "mu": mu.numpy(),
        "var": ((p * logp**2).sum(-1) - mu**2).numpy(),
    }


@torch.no_grad()
def greedy_tokens(model, prefix: list[int], n: int) -> list[int]:
    ids = list(prefix)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prefix) :]


def assert_matches(got: ContinuationScores, ref: dict[str, np.ndarray], token_stats: bool) -> None:
    assert got.logprobs.dtype == np.float32 and got.argmax_match.dtype == bool
    np.testing.assert_allclose(got.logprobs, ref["logprobs"], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got.argmax_match, ref["argmax_match"])
    if token_stats:
        np.testing.assert_allclose(got.mu, ref["mu"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got.var, ref["var"], atol=ATOL, rtol=0)
    else:
        assert got.mu is None and got.var is None


def random_batch(model, seed: int, n_prompts: int = 7):
    """Prompts of 1-14 tokens, each with 0-7 continuations of 1-9 tokens.

    The first continuation of each prompt is the model's own greedy output (then one random
    token), so argmax matches are exercised in both directions.
    """
    g = torch.Generator().manual_seed(seed)

    def rand_ids(lo: int, hi: int) -> list[int]:
        return torch.randint(4, 300, (int(torch.randint(lo, hi, (), generator=g)),), generator=g).tolist()

    prompts = [rand_ids(1, 15) for _ in range(n_prompts)]
    continuations = []
    for i, p in enumerate(prompts):
        conts = [rand_ids(1, 10) for _ in range(int(torch.randint(0, 8, (), generator=g)))]
        if i % 3 != 2:  # some prompts keep no continuation at all
            conts.insert(0, greedy_tokens(model, p, 4) + rand_ids(1, 2))
        continuations.append(conts)
    return prompts, continuations


# ---------------------------------------------------------------------------------------------
# score_continuations / score_texts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("token_stats", [False, True])
def test_score_continuations_matches_unbatched_forward(arch, token_stats):
    model = MODELS[arch]()
    prompts, continuations = random_batch(model, seed=1)
    # batch_size 3 splits prompts with up to 8 continuations over several cached passes
    got = score_continuations(model, prompts, continuations, batch_size=3, token_stats=token_stats)
    assert [len(r) for r in got] == [len(c) for c in continuations]
    matches = []
    for i, p in enumerate(prompts):
        for j, c in enumerate(continuations[i]):
            ref = reference_scores(model, p, c)
            assert_matches(got[i][j], ref, token_stats)
            matches.extend(ref["argmax_match"])
    assert any(matches) and not all(matches)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prompt_and_concatenated_paths_agree(arch):
    model = MODELS[arch]()
    prompts, continuations = random_batch(model, seed=2, n_prompts=5)
    shared = score_continuations(model, prompts, continuations, batch_size=4, token_stats=True)
    concat = score_continuations(model, prompts, continuations, batch_size=4, token_stats=True, share_prompt=False)
    for a_row, b_row in zip(shared, concat, strict=True):
        for a, b in zip(a_row, b_row, strict=True):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=ATOL)
            np.testing.assert_allclose(a.var, b.var, atol=ATOL)


def test_shared_prompt_feeds_each_prompt_once(tiny_llama):
    """The optimisation itself: prompt tokens go through the model once, not once per continuation."""
    prompts = [list(range(10, 30))] * 4
    continuations = [[[5, 6, 7, 8, 9]] * 6] * 4
    score_continuations(tiny_llama, prompts, continuations, batch_size=32)  # the one-off packing probe
    seen = []
    hook = tiny_llama.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    score_continuations(tiny_llama, prompts, continuations, batch_size=32)
    shared, seen[:] = sum(seen), []
    score_continuations(tiny_llama, prompts, continuations, batch_size=32, share_prompt=False)
    concat = sum(seen)
    hook.remove()
    # The 19 tokens every prompt shares once, each prompt's last token, each continuation minus its last token.
    assert shared == 19 + 4 * 1 + 24 * 4
    assert concat == 24 * 25


def test_a_prefix_shared_by_every_prompt_is_encoded_once_and_scores_the_same(tiny_llama):
    from obliviate.models import packing

    rng = np.random.default_rng(11)
    ids = lambda lo, hi: rng.integers(4, 300, int(rng.integers(lo, hi))).tolist()  # noqa: E731
    head = ids(12, 13)  # a system turn that every prompt starts with
    prompts = [head + ids(1, 6) for _ in range(5)]
    continuations = [[ids(1, 7) for _ in range(3)] for _ in prompts]
    seen = []
    got = score_continuations(tiny_llama, prompts, continuations, batch_size=2)  # the probe runs first
    assert packing._PACKING_SUPPORT[tiny_llama] == (True, True)
    hook = tiny_llama.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    again = score_continuations(tiny_llama, prompts, continuations, batch_size=2, token_stats=True)
    hook.remove()
    fed = sum(len(p) - 12 for p in prompts) + sum(len(c) - 1 for cs in continuations for c in cs)
    assert seen[0] == 12 and sum(n for n in seen[1:]) <= fed + 2 * len(prompts) * 7  # rows pad to their longest
    for i, p in enumerate(prompts):
        for j, c in enumerate(continuations[i]):
            assert_matches(got[i][j], reference_scores(tiny_llama, p, c), token_stats=False)
            assert_matches(again[i][j], reference_scores(tiny_llama, p, c), token_stats=True)


class _Ignores4DMasks(torch.nn.Module):
    """A model whose attention drops custom 4D masks (as flash-attention kernels do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


def test_a_model_that_ignores_packed_masks_is_scored_another_way():
    from obliviate.models import packing

    model = _Ignores4DMasks(make_tiny_llama())
    prompts, continuations = random_batch(model.inner, seed=4)
    got = score_continuations(model, prompts, continuations, batch_size=3)
    assert packing._PACKING_SUPPORT[model] == (False, False)
    score_continuations(model.inner, prompts, continuations, batch_size=3)
    assert packing._PACKING_SUPPORT[model.inner][0] is True  # the same weights, honouring the mask, pack
    for i, p in enumerate(prompts):
        for j, c in enumerate(continuations[i]):
            assert_matches(got[i][j], reference_scores(model.inner, p, c), token_stats=False)


@pytest.mark.parametrize("shared", [0, 10])
def test_packed_rows_split_long_items_and_still_match(monkeypatch, shared):
    from obliviate.models import packing

    model = make_tiny_llama()
    monkeypatch.setattr(packing, "_MAX_PACKED_ROW", 12 + shared)
    prompts, continuations = random_batch(model, seed=5)
    prompts = [list(range(20, 20 + shared)) + p for p in prompts]  # with a prefix every prompt shares
    got = score_continuations(model, prompts, continuations, batch_size=2, token_stats=True)
    assert packing._PACKING_SUPPORT[model] == (True, True)
    for i, p in enumerate(prompts):
        for j, c in enumerate(continuations[i]):
            assert_matches(got[i][j], reference_scores(model, p, c), token_stats=True)


def test_pad_id_and_batch_size_do_not_change_scores(tiny_llama):
    prompts, continuations = random_batch(tiny_llama, seed=3)
    a = score_continuations(tiny_llama, prompts, continuations, batch_size=2, pad_id=0)
    b = score_continuations(tiny_llama, prompts, continuations, batch_size=64, pad_id=123)
    for a_row, b_row in zip(a, b, strict=True):
        for x, y in zip(a_row, b_row, strict=True):
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=ATOL)


def test_empty_continuations_and_mean_nll(tiny_llama):
    got = score_continuations(tiny_llama, [[5, 6], [7]], [[[], [8, 9, 10]], []])
    assert got[0][0].n_tokens == 0 and math.isnan(got[0][0].mean_nll)
    assert got[1] == []
    s = got[0][1]
    assert s.mean_nll == pytest.approx(-float(np.mean(s.logprobs)))
    assert math.exp(-s.mean_nll) < 1


def test_empty_prompt_is_rejected(tiny_llama):
    with pytest.raises(ObliviateError, match="prompt 0 is empty"):
        score_continuations(tiny_llama, [[]], [[[5, 6]]])


def test_scoring_uses_eval_mode_and_restores_training_mode():
    model = make_tiny_gpt2(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5).train()
    a = score_continuations(model, [[5, 6, 7]], [[[8, 9, 10]]])[0][0]
    b = score_continuations(model, [[5, 6, 7]], [[[8, 9, 10]]])[0][0]
    assert model.training
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    np.testing.assert_allclose(a.logprobs, reference_scores(model.eval(), [5, 6, 7], [8, 9, 10])["logprobs"],
                               atol=ATOL)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_score_texts_matches_unbatched_forward(arch):
    model = MODELS[arch]()
    g = torch.Generator().manual_seed(4)
    texts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (1, 2, 7, 12, 3, 9)]
    got = score_texts(model, texts, batch_size=4, token_stats=True)
    assert got[0].n_tokens == 0
    for ids, s in zip(texts[1:], got[1:], strict=True):
        assert s.n_tokens == len(ids) - 1
        assert_matches(s, reference_scores(model, ids[:1], ids[1:]), token_stats=True)


# ---------------------------------------------------------------------------------------------
# score_qa
# ---------------------------------------------------------------------------------------------

QA_ITEMS = [
    QAItem(
        question="What is the capital of France?",
        answer="The capital of France is Paris.",
        paraphrased_answer="Paris is the capital.",
        perturbed_answers=["The capital of France is Rome.", "It is Berlin.", "Madrid."],
        paraphrased_questions=["Where was the author born?"],
    ),
    QAItem(question="Where was the author born?", answer="She was born in Oslo, Norway."),
]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_score_qa_scores_every_answer_after_the_question_prompt(tiny_llama, tiny_tokenizer, padding_side):
    tiny_tokenizer.padding_side = padding_side
    got = score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS, batch_size=3, token_stats=True)
    first = got[0]
    assert set(first) == {"answer", "paraphrased_answer", "perturbed_answers"}
    assert len(first["perturbed_answers"]) == 3
    assert got[1]["paraphrased_answer"] is None and got[1]["perturbed_answers"] == []
    item = QA_ITEMS[0]
    pairs = {
        "answer": item.answer,
        "paraphrased_answer": item.paraphrased_answer,
        "perturbed_answers": item.perturbed_answers[1],
    }
    for field, text in pairs.items():
        prompt, answer = encode_pair(tiny_tokenizer, item.question, text)
        assert answer[-1] == tiny_tokenizer.eos_token_id
        scores = first[field][1] if field == "perturbed_answers" else first[field]
        assert_matches(scores, reference_scores(tiny_llama, prompt, answer), token_stats=True)


def test_score_qa_is_independent_of_tokenizer_padding_side(tiny_llama, tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    left = score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS)
    tiny_tokenizer.padding_side = "right"
    right = score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS)
    for a, b in zip(left, right, strict=True):
        np.testing.assert_array_equal(a["answer"].logprobs, b["answer"].logprobs)


def test_score_qa_fields_and_format(tiny_llama, tiny_tokenizer):
    got = score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS[:1], fields=("answer",))
    assert set(got[0]) == {"answer"}
    fmt = PromptFormat(question_template="{question}\nAnswer:")
    other = score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS[:1], fmt=fmt, fields=("answer",))
    prompt, answer = encode_pair(tiny_tokenizer, QA_ITEMS[0].question, QA_ITEMS[0].answer, fmt)
    np.testing.assert_allclose(other[0]["answer"].logprobs, reference_scores(tiny_llama, prompt, answer)["logprobs"],
                               atol=ATOL)
    assert not np.allclose(other[0]["answer"].logprobs, got[0]["answer"].logprobs)
    with pytest.raises(ConfigError, match="unknown QA field"):
        score_qa(tiny_llama, tiny_tokenizer, QA_ITEMS, fields=("answer", "paraphrased_question"))


# ---------------------------------------------------------------------------------------------
# Generation and hidden states
# ---------------------------------------------------------------------------------------------


def reference_generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, stop_at) -> str:
    """One prompt at a time, no padding, no cache: argmax until EOS or the token budget."""
    new = []
    for tok in greedy_tokens(model, prompt_ids, max_new_tokens):
        if tok == tokenizer.eos_token_id:
            break
        new.append(tok)
    return cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop_at)


PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Question: Who wrote the book?\nAnswer:",
    "The quick brown fox",
    "Alice and Bob met in London, then travelled to Rome",
    "one two",
]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_greedy_equals_unbatched_greedy_loop(arch, tiny_tokenizer):
    model = MODELS[arch]()
    ids = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    free = [reference_generate(model, tiny_tokenizer, x, 10, ()) for x in ids]
    assert generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=10, batch_size=2, stop_at=()) == free
    # Stop at a word the model really produces mid-way, so cutting and early stopping both matter.
    stop = free[0].split()[len(free[0].split()) // 2]
    want = [reference_generate(model, tiny_tokenizer, x, 10, (stop, "\n")) for x in ids]
    assert any(len(w) < len(f) for w, f in zip(want, free, strict=True))
    assert generate_greedy(model, tiny_tokenizer, ids, max_new_tokens=10, batch_size=2, stop_at=(stop, "\n")) == want


def test_generate_answers_renders_the_prompt_format(tiny_llama, tiny_tokenizer):
    questions = ["What is the capital of France?", "Where was the author born?"]
    got = generate_answers(tiny_llama, tiny_tokenizer, questions, max_new_tokens=6)
    prompts = [DEFAULT_FORMAT.render(q) for q in questions]
    assert got == generate_greedy(tiny_llama, tiny_tokenizer, prompts, max_new_tokens=6)
    assert got == [reference_generate(tiny_llama, tiny_tokenizer, tiny_tokenizer(p)["input_ids"], 6, ("\n",))
                   for p in prompts]


def test_cut_at_stop():
    assert cut_at_stop(" Paris.\nQuestion: next", ("\n",)) == "Paris."
    assert cut_at_stop("a b\n\nQuestion c", ("Question", "\n\n")) == "a b"
    assert cut_at_stop("  no stop  ", ("\n", "")) == "no stop"


@torch.no_grad()
def test_hidden_states_take_the_last_real_token(tiny_llama):
    seqs = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    got = hidden_states(tiny_llama, seqs, layers=[0, -1], batch_size=2)
    assert len(got) == 2 and got[0].shape == (3, 32)
    for n, ids in enumerate(seqs):
        hs = tiny_llama(torch.tensor([ids]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(got[0][n], hs[0][0, -1].numpy(), atol=ATOL)
        np.testing.assert_allclose(got[1][n], hs[-1][0, -1].numpy(), atol=ATOL)
    assert len(hidden_states(tiny_llama, seqs)) == tiny_llama.config.num_hidden_layers + 1


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, tiny_llama, tiny_tokenizer):
    out = save_model(tiny_llama, tiny_tokenizer, tmp_path / "model")
    assert list(out.glob("*.safetensors")) and (out / "config.json").is_file()
    model, tokenizer = load_model(out, device="cpu", dtype="float32")
    assert not model.training
    text = "Question: What is the capital of France?\nAnswer:"
    assert tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_llama(ids).logits)
    # Saving again replaces the directory atomically and leaves no temporary siblings behind.
    save_model(make_tiny_llama(seed=1), tiny_tokenizer, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    reloaded, _ = load_model(out, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(reloaded(ids).logits, tiny_llama(ids).logits)


def test_load_model_sets_a_missing_pad_token(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_tokenizer.pad_token = None
    save_model(tiny_llama, tiny_tokenizer, tmp_path / "m")
    model, tokenizer = load_model(tmp_path / "m", device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.eos_token_id == model.generation_config.pad_token_id


def test_ensure_pad_token_adds_one_when_there_is_no_eos():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    model = make_tiny_gpt2(vocab_size=3, pad_token_id=None, eos_token_id=None, bos_token_id=None)
    assert tokenizer.pad_token is None and tokenizer.eos_token is None
    ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 3
    assert model.get_input_embeddings().weight.shape[0] == 4
    assert model.config.pad_token_id == 3
    out = score_continuations(model, [[1, 2]], [[[2, 1]]], pad_id=tokenizer.pad_token_id)
    assert out[0][0].n_tokens == 2


def test_load_model_errors_are_one_line(tmp_path):
    with pytest.raises(ObliviateError, match="not found") as err:
        load_model(tmp_path / "missing" / "model", device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(ObliviateError, match="no config.json"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ObliviateError, match="cannot load model") as err:
        load_model(tmp_path, device="cpu")
    assert "\n" not in str(err.value)


def test_unreachable_hub_name_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    with pytest.raises(ObliviateError, match="cannot load model 'no-such-org/no-such-model'") as err:
        load_model("no-such-org/no-such-model", device="cpu")
    assert "\n" not in str(err.value) and err.value.__cause__ is None


def test_trust_remote_code_is_only_passed_when_asked(tmp_path, tiny_llama, tiny_tokenizer, monkeypatch):
    import transformers

    seen = []  # kwargs of our calls only: transformers' own nested calls pass trust_remote_code=None
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    save_model(tiny_llama, tiny_tokenizer, tmp_path / "m")
    load_model(tmp_path / "m", device="cpu")
    assert seen and not any(kw.get("trust_remote_code") for kw in seen)
    assert any(kw.get("use_safetensors") for kw in seen)
    seen.clear()
    load_model(tmp_path / "m", device="cpu", trust_remote_code=True)
    assert sum(kw.get("trust_remote_code") is True for kw in seen) >= 3  # config, tokenizer, model


def test_resolve_dtype_and_device():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("float32") == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("float8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError):
        resolve_device("tpu-please")
