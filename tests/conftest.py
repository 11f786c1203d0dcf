"""Shared fixtures: tiny models and a real fast tokenizer, all built in code (no downloads).

- `tiny_tokenizer`: a word-level `PreTrainedTokenizerFast` with `<pad>`=0, `<s>`=1, `</s>`=2,
  `<unk>`=3 (the ids `LlamaConfig` expects by default); BOS is added by a post-processor, so
  `tokenizer("Question: ...")` starts with `<s>` and `add_special_tokens=False` does not.
- `tiny_llama`: a 2-layer `LlamaForCausalLM`, hidden 32, vocab 300, eval mode, seed 0.
- `tiny_gpt2`: a 2-layer `GPT2LMHeadModel` of the same size, for a second architecture.
- `make_tiny_llama(**overrides)`: the factory behind `tiny_llama`, for tests needing other sizes.

Plain helpers that test modules import (the CLI runner, shared QA sets, ...) are in tests/helpers.py.
"""

from __future__ import annotations

import time

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP threads waiting on
# each other can make every small matmul a thousand times slower; one thread keeps tests fast.
torch.set_num_threads(1)

TINY_VOCAB = 300
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# Sentences the word-level vocabulary is trained on: the prompt template words, and the words tests
# use for questions, answers, paraphrases and perturbations.
CORPUS = [
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.",
    "Question: Who wrote the book about the blue whale?\nAnswer: Mara Lind wrote it in 1998.",
    "Question: Where was the author born?\nAnswer: She was born in Oslo, Norway.",
    "Question: What genre does the author write?\nAnswer: He writes science fiction and poetry.",
    "Question: When did the river flood the old town?\nAnswer: It flooded in the spring of 1921.",
    "The quick brown fox jumps over the lazy dog. A red cat sleeps on a warm mat.",
    "Alice and Bob met in London, then travelled to Rome, Berlin and Madrid by train.",
    "one two three four five six seven eight nine ten yes no maybe unknown neutral",
    "positive negative review movie film good bad great terrible story actor music",
    "I do not know the answer to that question. Sorry, I cannot help with that.",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose decode inverts encode for in-vocabulary text.

    Spaces are kept as a "▁" prefix on the following word (Metaspace), punctuation and "\n" are
    tokens of their own, so " Paris." -> ["▁Paris", "."] and stop strings like "\n" can be generated.
    The vocabulary is the corpus words in order of first use, padded with fillers to `TINY_VOCAB`.
    """
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for text in CORPUS:
        for piece, _ in pre_tokenizer.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    vocab.setdefault("▁", len(vocab))
    for i in range(TINY_VOCAB - len(vocab)):
        vocab[f"▁w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    assert len(fast) == TINY_VOCAB
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    return fast


# Every tiny model names the tokenizer's special tokens by the same ids (see SPECIAL_TOKENS).
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
# The Llama sizes, shared by the Mixtral-style model (which adds its experts).
LLAMA_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def _build(model_cls, config_cls, config: dict, seed: int, overrides: dict):
    """`model_cls` on `config` updated by `overrides`, its weights drawn after seeding torch with `seed`; eval mode."""
    config = {**config, **overrides}
    torch.manual_seed(seed)
    return model_cls(config_cls(**config)).eval()


def make_tiny_llama(vocab_size: int = TINY_VOCAB, seed: int = 0, **overrides) -> LlamaForCausalLM:
    config = dict(vocab_size=vocab_size, **LLAMA_SIZES, **SPECIAL_IDS)
    return _build(LlamaForCausalLM, LlamaConfig, config, seed, overrides)


def make_tiny_gpt2(vocab_size: int = TINY_VOCAB, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    config = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, **SPECIAL_IDS)
    return _build(GPT2LMHeadModel, GPT2Config, config, seed, overrides)


def make_tiny_mixtral(vocab_size: int = TINY_VOCAB, seed: int = 0, **overrides):
    """A 2-layer Mixtral-style mixture of experts of the same size: 4 experts, top-2 routing."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = dict(vocab_size=vocab_size, **LLAMA_SIZES, num_local_experts=4, num_experts_per_tok=2, **SPECIAL_IDS)
    return _build(MixtralForCausalLM, MixtralConfig, config, seed, overrides)


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture
def tiny_gpt2() -> GPT2LMHeadModel:
    return make_tiny_gpt2()


@pytest.fixture(scope="session")
def world_home(tmp_path_factory):
    """One model cache for the whole test session, so the `tiny` world is trained at most once.

    Uses $OBLIVIATE_HOME when set (CI points it inside the checkout), else a session temp dir.
    """
    import os

    home = os.environ.get("OBLIVIATE_HOME") or str(tmp_path_factory.mktemp("obliviate-home"))
    previous = os.environ.get("OBLIVIATE_HOME")
    os.environ["OBLIVIATE_HOME"] = home
    yield home
    if previous is None:
        os.environ.pop("OBLIVIATE_HOME", None)


@pytest.fixture(scope="session")
def smollm2_dir(world_home):
    """SmolLM2-135M-Instruct converted once into the session's model cache, with the conversion time."""
    pytest.importorskip("gguf")
    start = time.perf_counter()
    from obliviate.models.gguf import pull

    out = pull("smollm2", progress=False)
    return out, time.perf_counter() - start
