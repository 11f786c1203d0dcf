"""UOE on a tiny Mixtral built in code, and once on the `tiny` world's mixture-of-experts target.

What trains is exactly the chosen expert of the chosen layer (its slice of the stacked expert
tensors) and, when anchored, that layer's router; the attribution matches a count made here from
the routers' own outputs; the anchor and the total loss match direct computations; forgetting moves
the forget NLL up.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from obliviate.config import build_config, parse_overrides
from obliviate.errors import ConfigError
from obliviate.methods.uoe import UOE, UOEConfig
from obliviate.train.data import UnlearnBatch, collate, encode_items
from obliviate.train.losses import answer_nll
from tests.conftest import make_tiny_mixtral
from tests.helpers import FORGET, RETAIN, assert_same_parameters, kill_then_resume


def _batch(tok, items) -> dict[str, torch.Tensor]:
    return collate(encode_items(tok, items)[0], tok.pad_token_id)


def _config(**values) -> UOEConfig:
    return build_config(UOEConfig, {"loss": "ga", "lr": 1e-2, "epochs": 2, "batch_size": 2, **values})


def _independent_counts(model, tok, items) -> np.ndarray:
    """(layers, experts) top-k selections at answer tokens, read from each router's own output."""
    layers = model.model.layers
    counts = np.zeros((len(layers), 4), dtype=int)
    batch = _batch(tok, items)
    answer = (batch["labels"] != -100).reshape(-1)
    handles = []
    for i, layer in enumerate(layers):
        def hook(_m, _a, out, i=i):
            chosen = out[2][answer]  # MixtralTopKRouter returns (logits, weights, indices (B·T, k))
            np.add.at(counts[i], chosen.reshape(-1).numpy(), 1)

        handles.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    return counts


def test_attribution_picks_the_expert_with_most_forget_routings(tiny_tokenizer, tmp_path):
    model = make_tiny_mixtral(seed=3)
    counts = _independent_counts(model, tiny_tokenizer, FORGET)
    top = np.sort(counts, axis=1)[:, ::-1]
    assert top[:, 0].max() > top[:, 0].min() and (top[:, 0] > top[:, 1]).all()  # no ties: a real choice
    layer = int(top[:, 0].argmax())
    summary = UOE(_config(max_steps=1)).unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    chosen = summary["expert"]
    assert chosen["moe_layers"] == [0, 1] and chosen["counts"] == counts.tolist()
    assert (chosen["layer"], chosen["expert"]) == (layer, int(counts[layer].argmax()))
    assert chosen["share"] == pytest.approx(counts[layer].max() / counts[layer].sum())
    # A given layer: its own most-chosen expert.
    other = 1 - layer
    summary = UOE(_config(max_steps=1, layer=other)).unlearn(make_tiny_mixtral(seed=3), tiny_tokenizer, FORGET,
                                                             RETAIN, tmp_path, progress=False)
    assert (summary["expert"]["layer"], summary["expert"]["expert"]) == (other, int(counts[other].argmax()))


@pytest.mark.parametrize("anchor_weight", [1.0, 0.0])
def test_only_the_chosen_expert_and_its_anchored_router_change(anchor_weight, tiny_tokenizer, tmp_path):
    model = make_tiny_mixtral()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _config(anchor_weight=anchor_weight)
    summary = UOE(cfg).unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    layer, expert = summary["expert"]["layer"], summary["expert"]["expert"]
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == summary["steps"] == 4 and all(math.isfinite(r["loss"]) for r in logs)
    assert ("anchor_ce" in logs[0]) == (anchor_weight > 0)
    prefix = f"model.layers.{layer}.mlp."
    for name, p in model.named_parameters():
        if name in (prefix + "experts.gate_up_proj", prefix + "experts.down_proj"):
            for e in range(4):
                assert torch.equal(before[name][e], p[e]) == (e != expert), (name, e)
        elif name == prefix + "gate.weight":
            assert torch.equal(before[name], p) == (anchor_weight == 0), name
        else:
            assert torch.equal(before[name], p), name
    assert type(model.model.layers[layer].mlp.experts).__name__ == "MixtralExperts"  # parametrisation removed
    assert not any("parametrizations" in k for k in model.state_dict())


def test_forget_nll_rises_and_the_anchor_keeps_the_router_on_the_expert(tiny_tokenizer, tmp_path):
    model = make_tiny_mixtral()
    forget = _batch(tiny_tokenizer, FORGET)
    with torch.no_grad():
        start = float(answer_nll(model, forget).mean())
    summary = UOE(_config(epochs=3, lr=3e-2)).unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    with torch.no_grad():
        assert float(answer_nll(model, forget).mean()) > start + 0.3
    layer, expert = summary["expert"]["layer"], summary["expert"]["expert"]
    after = _independent_counts(model, tiny_tokenizer, FORGET)
    assert after[layer, expert] >= summary["expert"]["counts"][layer][expert]
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logs[-1]["anchor_ce"] < logs[0]["anchor_ce"]


def test_loss_is_the_chosen_loss_plus_the_weighted_router_cross_entropy(tiny_tokenizer, tmp_path):
    model = make_tiny_mixtral()
    method = UOE(_config(loss="graddiff", anchor_weight=0.7, layer=1, expert=2))
    method.setup(model, tiny_tokenizer, FORGET, RETAIN)
    batch = UnlearnBatch(_batch(tiny_tokenizer, FORGET[:2]), _batch(tiny_tokenizer, RETAIN))
    out = method.compute_loss(model, batch)
    # By hand: GradDiff, and the router CE read from Mixtral's own router logits output.
    f, r = batch.forget, batch.retain
    logits = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
    nll_f = F.cross_entropy(logits[:, :-1].transpose(1, 2), f["labels"][:, 1:], reduction="none").sum(1) / (
        f["labels"][:, 1:] != -100).sum(1)
    logits_r = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
    nll_r = F.cross_entropy(logits_r[:, :-1].transpose(1, 2), r["labels"][:, 1:], reduction="none").sum(1) / (
        r["labels"][:, 1:] != -100).sum(1)
    router = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"],
                   output_router_logits=True).router_logits[1]  # (B·T, E)
    answer = (f["labels"] != -100).reshape(-1)
    anchor = F.cross_entropy(router[answer], torch.full((int(answer.sum()),), 2))
    expected = -nll_f.mean() + nll_r.mean() + 0.7 * anchor
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["anchor_ce"] == pytest.approx(anchor.item(), rel=1e-5)


def test_resume_keeps_the_expert_and_matches_an_uninterrupted_run(tiny_tokenizer, tmp_path):
    cfg = _config(loss="graddiff", epochs=4, save_every=3)
    full = make_tiny_mixtral()
    UOE(cfg).unlearn(full, tiny_tokenizer, FORGET, RETAIN, tmp_path / "a", progress=False)

    # Resumed on another start (whose routing differs): weights and the expert must come from the run directory.
    resumed, summary = kill_then_resume(UOE, cfg, make_tiny_mixtral, tiny_tokenizer, tmp_path / "b", kill_at=5,
                                        saved_at=3)
    assert summary["resumed_from"] == 3 and summary["steps"] == 8
    assert summary["expert"] == json.loads((tmp_path / "a" / "expert.json").read_text())
    assert_same_parameters(full, resumed)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="did you mean 'npo'"):
        build_config(UOEConfig, {"loss": "nop"})
    with pytest.raises(ConfigError, match="not a loss UOE can use"):
        build_config(UOEConfig, {"loss": "rmu"})
    cfg = build_config(UOEConfig, parse_overrides(["loss=npo", "loss_config=beta=0.2,retain_loss=none"]))
    method = UOE(cfg)
    assert method.base.config.beta == 0.2 and method.uses_retain is False
    assert cfg.loss_config == {"beta": 0.2, "retain_loss": "none"}  # typed as npo's own fields
    with pytest.raises(ConfigError, match="unknown key 'btea' for npo; did you mean 'beta'"):
        build_config(UOEConfig, {"loss": "npo", "loss_config": {"btea": 1}})
    with pytest.raises(ConfigError, match="npo field 'beta'"):
        build_config(UOEConfig, parse_overrides(["loss=npo", "loss_config=beta=fast"]))


def test_lora_on_stacked_experts_and_dense_models_are_refused(tiny_tokenizer, tiny_llama, tmp_path):
    from obliviate.models.lora import LoraSpec, apply_lora

    with pytest.raises(ConfigError, match="--lora put no adapter on expert"):
        UOE(_config()).unlearn(apply_lora(make_tiny_mixtral(), LoraSpec()), tiny_tokenizer, FORGET, RETAIN,
                               tmp_path / "lora", progress=False)
    with pytest.raises(ConfigError, match="needs a mixture-of-experts model"):
        UOE(_config()).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "dense", progress=False)


@pytest.mark.slow
def test_uoe_on_the_tiny_moe_world_lowers_forget_probability(tmp_path, world_home):
    from obliviate.models.scoring import score_qa
    from obliviate.runs import load_run_model
    from obliviate.workflow import load_model_spec, run_unlearn
    from obliviate.world import get_world

    world = get_world("tiny", 0)
    forget, retain = world.forget_set("forget10"), world.retain_set("forget10")

    def probability(model, tok, items) -> float:
        scores = score_qa(model, tok, items, fields=("answer",))
        return float(np.mean([math.exp(-s["answer"].mean_nll) for s in scores]))

    target, tok, ref = load_model_spec("world:tiny@0:moe", progress=False)
    assert ref.arch == "moe" and type(target).__name__ == "MixtralForCausalLM"
    summary = run_unlearn("uoe", "world:tiny@0:moe", tmp_path / "run", progress=False)
    model, tok = load_run_model(tmp_path / "run")
    p_target, p_unlearned = probability(target, tok, forget), probability(model, tok, forget)
    assert p_unlearned < 0.6 * p_target
    assert probability(model, tok, retain) > 0.6 * probability(target, tok, retain)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world"]["arch"] == "moe" and summary["expert"]["share"] > 1 / 4
