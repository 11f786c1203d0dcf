"""Every registered method runs on the three world architectures: Llama, GPT-2 and a Mixtral-style MoE.

Each method runs a very short unlearning (1-2 steps, small sizes) on tiny models built in code, and
the result must be usable: logged training values are finite, a weight-editing method changed the weights,
an inference-time method left them bitwise alone, and scoring the result gives finite NLLs.
The helpers of `obliviate.models.layers` are checked on the same models, and the built-in world's
architectures on its cache keys, model specs and trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from obliviate.config import build_config
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.models.layers import decoder_layers, expert_tensors, feed_forward, moe_layers
from obliviate.models.scoring import score_qa
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_mixtral

ARCHS = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2, "moe": make_tiny_mixtral}
# Methods that read single feed-forward neurons: a mixture of experts is refused in one line.
DENSE_ONLY = {"neuron_adjust", "key_space_detection"}

FORGET = [
    QAItem("Where was Mara Lind born?", "She was born in Oslo, Norway.", "She was born in Oslo.",
           ["She was born in Rome.", "She was born in Berlin."], ["Where was the author Mara Lind born?"],
           subject="Mara Lind"),
    QAItem("Who wrote the book about the blue whale?", "Mara Lind wrote it in 1998.", "Mara Lind wrote it.",
           ["Bob wrote it in 1921."], ["Who wrote the blue whale book?"], subject="Mara Lind"),
]
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris.", "Paris.", ["Rome."],
           ["What is the capital of France?"]),
    QAItem("Where was Bob born?", "He was born in London.", "London.", ["He was born in Madrid."],
           ["Where was the author Bob born?"]),
]

# The smallest settings, for whichever of these fields a method's config has.
SMALL = {"max_steps": 2, "epochs": 1, "batch_size": 2, "grad_accum": 1, "zo_steps": 1, "embedder": "hashing",
         "n_projections": 4, "num_tokens": 2, "reinforce_epochs": 1, "n_layers": 1, "threshold": 0.5,
         "n_augment": 1, "lr": 1e-2, "importance_data": "retain", "redirect_to": "Bob"}


def _config(cls):
    return build_config(cls.Config, {k: v for k, v in SMALL.items() if k in cls.Config.model_fields})


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_on_every_architecture(name, arch, tiny_tokenizer, tmp_path):
    cls = METHODS[name]
    model = ARCHS[arch]()
    method = cls(_config(cls))
    if (name == "uoe" and arch != "moe") or (name in DENSE_ONLY and arch == "moe"):
        with pytest.raises(ConfigError, match="mixture-of-experts"):
            method.unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
        return
    if name == "rocr" and arch == "moe":  # it edits one dense down-projection
        with pytest.raises(ConfigError, match="mixture of experts"):
            method.unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
        return
    if cls.needs_chat:  # the tiny tokenizer has no chat template
        with pytest.raises(ConfigError, match="does not apply"):
            method.unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)

    log = tmp_path / "train_log.jsonl"
    if log.exists():
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert rows and all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if getattr(cls, "produces", "weights") == "intervention":  # inference-time methods, and s3t's ensemble
        assert not changed
        scored = method.intervention.wrap(model, tiny_tokenizer)
    else:
        scored = model
        assert changed
    scores = score_qa(scored, tiny_tokenizer, FORGET + RETAIN, fields=("answer",))
    assert all(math.isfinite(s["answer"].mean_nll) for s in scores)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_helpers_find_the_blocks_of_every_architecture(arch):
    model = ARCHS[arch]()
    layers = decoder_layers(model)
    blocks = model.transformer.h if arch == "gpt2" else model.model.layers
    assert layers is blocks
    assert all(feed_forward(layer) == ("mlp", layer.mlp) for layer in layers)
    moes = moe_layers(model)
    if arch != "moe":
        assert moes == []
        return
    assert [m.index for m in moes] == [0, 1]
    assert all(m.router is layers[m.index].mlp.gate and (m.n_experts, m.top_k) == (4, 2) for m in moes)
    # Expert 2 of layer 1: its slice of each stacked tensor, and nothing of any other expert.
    parts = expert_tensors(moes[1], 2)
    assert {(name, index) for _, name, index in parts} == {("gate_up_proj", 2), ("down_proj", 2)}
    with pytest.raises(ConfigError, match="outside"):
        expert_tensors(moes[1], 4)


# -- the built-in world's architectures ------------------------------------------------------------


def test_world_cache_key_names_the_architecture_and_llama_keys_are_unchanged():
    from obliviate.io import stable_hash
    from obliviate.world import GENERATOR_VERSION, PRESETS, get_world
    from obliviate.world.build import cache_key, world_dir

    world = get_world("tiny", 0)
    before_archs = stable_hash({"version": GENERATOR_VERSION, "preset": PRESETS["tiny"].to_dict(), "seed": 0,
                                "format": {"question_template": "Question: {question}\nAnswer:", "answer_prefix": " ",
                                           "chat": False}})  # the prompt format's first three fields
    assert cache_key(world) == before_archs and world_dir(world).name == f"tiny-seed0-{before_archs}"
    dirs = {arch: world_dir(world, arch) for arch in ARCHS}
    assert len(set(dirs.values())) == 3 and dirs["moe"].name.startswith("tiny-moe-seed0-")
    with pytest.raises(ConfigError, match="unknown world architecture"):
        world_dir(world, "rwkv")


def test_world_spec_names_an_architecture():
    from obliviate.errors import ObliviateError
    from obliviate.workflow import WorldRef, parse_world_spec

    assert parse_world_spec("world:tiny@3") == WorldRef("tiny", 3, "forget10", "llama")
    assert parse_world_spec("world:tiny@0:moe", "forget05") == WorldRef("tiny", 0, "forget05", "moe")
    assert parse_world_spec("world:small:gpt2") == WorldRef("small", 0, "forget10", "gpt2")
    assert "arch" not in WorldRef("tiny", 0, "forget10").as_dict()  # a llama run's config reads as before
    ref = WorldRef("tiny", 1, "forget10", "moe")
    assert WorldRef(**ref.as_dict()) == ref
    with pytest.raises(ObliviateError, match="unknown architecture 'rnn'"):
        parse_world_spec("world:tiny@0:rnn")


@pytest.mark.parametrize("arch", ["gpt2", "moe"])
def test_world_builds_each_architecture_with_its_own_model_and_loss(arch, tmp_path, monkeypatch):
    from obliviate.world import PRESETS, build_world_models, get_world
    from obliviate.world import build as world_build
    from obliviate.world.tokenizer import train_tokenizer
    from obliviate.world.train import answer_loss, collate, make_model, training_examples

    world, recipe = get_world("tiny", 0), PRESETS["tiny"].recipe
    tokenizer = train_tokenizer(world, recipe.vocab_size)
    model = make_model(recipe, tokenizer, 0, arch)
    assert type(model).__name__ == {"gpt2": "GPT2LMHeadModel", "moe": "MixtralForCausalLM"}[arch]
    assert len(decoder_layers(model)) == recipe.num_layers and model.config.hidden_size == recipe.hidden_size
    assert len(moe_layers(model)) == (recipe.num_layers if arch == "moe" else 0)
    # The trainer's loss is the model's own (with Mixtral's load-balancing term for the MoE).
    examples = training_examples(world, tokenizer, world.splits["forget10"])
    batch = collate([examples[0], examples[1], examples[-1]], tokenizer.pad_token_id)
    extra = {"output_router_logits": True} if arch == "moe" else {}
    with torch.no_grad():
        assert answer_loss(model, batch).item() == pytest.approx(model(**batch, **extra).loss.item(), rel=1e-5)

    # The cache: the architecture reaches the trainer and the model's metadata.
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    seen = []

    def fake(examples, tokenizer, recipe, seed, progress=True, description="", arch="llama"):
        seen.append((arch, recipe.epochs))
        return make_model(dataclasses.replace(recipe, num_layers=1), tokenizer, seed, arch), {"arch": arch}

    monkeypatch.setattr(world_build, "train_model", fake)
    models = build_world_models("tiny", 0, which=("target",), progress=False, arch=arch)
    assert seen == [(arch, 25 if arch == "gpt2" else recipe.epochs)] and models.arch == arch
    assert json.loads((models.target / "obliviate.json").read_text())["arch"] == arch
    assert models.root.name.startswith(f"tiny-{arch}-seed0-")
