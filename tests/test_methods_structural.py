"""RMU, SSD, task vectors, WHP and SNAP: methods with structure beyond a loss, on tiny models built in code.

For each: the loss is finite and logged, exactly the parameters meant to train change, the method's
own success measure moves the right way, and its formula matches an independent computation here.
RMU and SSD touch architecture-specific internals, so they run on Llama and GPT-2.
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from obliviate.config import build_config
from obliviate.data.refusals import refusals_for
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneMethod, LossOutput
from obliviate.methods.rmu import RMU, default_layer
from obliviate.methods.snap import SNAP, ngram_entropy, refusal_rate
from obliviate.methods.ssd import SSD
from obliviate.methods.task_vector import TaskVector
from obliviate.methods.whp import WHP, find_anchors, generic_name, swap_anchors
from obliviate.train.data import UnlearnBatch, collate, encode_items
from obliviate.train.swd import sliced_wasserstein
from tests.conftest import make_tiny_gpt2, make_tiny_llama
from tests.helpers import FORGET, RETAIN

_WORDS = "quick brown fox lazy dog red cat warm mat blue whale river old town book movie film story actor music".split()
# 40 retain items (so the forget set is under 10% of the data, as SSD's default α = 10 needs).
RETAIN_MANY = [
    QAItem(f"What is the {_WORDS[i % 20]} {_WORDS[(7 * i + 3) % 20]}?", f"The w{i} w{i + 50}.") for i in range(40)
]
ARCHS = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2}


def _batch(tok, items, answers=None) -> dict[str, torch.Tensor]:
    enc, _ = encode_items(tok, items, answers=answers)
    return collate(enc, tok.pad_token_id)


def _hand_nll(model, batch) -> torch.Tensor:
    """Per-sequence mean NLL of the labelled tokens (B,), written independently of train.losses."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
    return nll.sum(1) / (batch["labels"][:, 1:] != -100).sum(1)


def _hand_ce(model, batch) -> torch.Tensor:
    """Token-level cross-entropy over all labelled tokens of the batch (scalar)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100)


def _nll(model, tok, items, answers=None) -> float:
    with torch.no_grad():
        return float(_hand_nll(model.eval(), _batch(tok, items, answers)).mean())


def _pretrain(model, tok, items, steps: int = 40, lr: float = 1e-2):
    """Full-batch Adam on the answers, so the tiny model knows the facts it is then asked to forget."""
    batch = _batch(tok, items)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        _hand_ce(model, batch).backward()
        opt.step()
    return model.eval()


def _logs(path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


# -- RMU ---------------------------------------------------------------------------------------------

def _layer_prefix(arch: str, i: int) -> str:
    return f"model.layers.{i}." if arch == "llama" else f"transformer.h.{i}."


def _steer_distance(model, tok, layer: int, target: torch.Tensor) -> float:
    """Mean over forget sequences of the masked mean of ‖h_ℓ − c·u‖² / d at answer-predicting positions."""
    batch = _batch(tok, FORGET)
    with torch.no_grad():
        h = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True).hidden_states[layer + 1]
    mask = batch["labels"][:, 1:] != -100
    return float(np.mean([((h[r, :-1][mask[r]] - target) ** 2).mean().item() for r in range(len(FORGET))]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rmu_trains_only_the_chosen_mlps_and_steers_forget_activations(arch, tiny_tokenizer, tmp_path):
    model = ARCHS[arch](**({"num_hidden_layers": 4} if arch == "llama" else {"n_layer": 4}))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    values = {"lr": 1e-2, "epochs": 4, "batch_size": 2, "steering_coeff": 5.0, "alpha": 1.0}
    method = RMU(build_config(RMU.Config, values))
    # ℓ = round(7/32 · 4) = 1, so layers 0 and 1 train; ℓ < L−1 keeps hidden_states[ℓ+1] un-normalised.
    method.setup(copy.deepcopy(model), tiny_tokenizer, FORGET, RETAIN)
    start = _steer_distance(model, tiny_tokenizer, 1, method.control_vec)

    summary = method.unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = _logs(tmp_path)
    assert summary["steps"] == len(logs) == 8 and method.layer_index == 1
    assert all(math.isfinite(r["loss"]) and "retain_loss" in r for r in logs)
    trained = re.compile("|".join(re.escape(_layer_prefix(arch, i)) + r"mlp\." for i in (0, 1)))
    for n, p in model.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == bool(trained.match(n)), n
    assert _steer_distance(model, tiny_tokenizer, 1, method.control_vec) < 0.5 * start


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rmu_loss_matches_hand_computation(arch, tiny_tokenizer):
    model = ARCHS[arch](**({"num_hidden_layers": 4} if arch == "llama" else {"n_layer": 4}))
    frozen = copy.deepcopy(model)
    cfg = build_config(RMU.Config, {"layer": 2, "steering_coeff": 3.0, "alpha": 7.0})
    method = RMU(cfg)
    method.setup(model, tiny_tokenizer, FORGET, RETAIN)
    torch.manual_seed(5)
    with torch.no_grad():  # move the trained MLPs so the retain term is not zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = UnlearnBatch(_batch(tiny_tokenizer, FORGET), _batch(tiny_tokenizer, RETAIN), torch.arange(len(FORGET)))
    out = method.compute_loss(model, batch)

    u = torch.rand(model.get_input_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(cfg.seed))
    target = 3.0 * u / u.norm()

    def per_seq(h, ref, b):
        mask = b["labels"][:, 1:] != -100  # positions that predict an answer token
        return np.mean([((h[r, :-1][mask[r]] - ref[r, :-1][mask[r]]) ** 2).mean().item() for r in range(len(h))])

    with torch.no_grad():
        def hidden(m, b):
            return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     output_hidden_states=True).hidden_states[3]  # output of layer ℓ = 2

        h_f = hidden(model, batch.forget)
        forget = per_seq(h_f, target.expand_as(h_f), batch.forget)
        retain = per_seq(hidden(model, batch.retain), hidden(frozen.eval(), batch.retain), batch.retain)
    assert retain > 0
    assert out.logs["forget_loss"] == pytest.approx(forget, rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(retain, rel=1e-4)
    assert float(out.loss.detach()) == pytest.approx(forget + 7.0 * retain, rel=1e-4)


def test_rmu_layer_rule_and_param_choice(tiny_llama, tiny_tokenizer):
    assert [default_layer(n) for n in (32, 2, 12, 40)] == [7, 1, 3, 9]
    method = RMU(build_config(RMU.Config, {"params": "mlp.down_proj"}))
    method.setup(tiny_llama, tiny_tokenizer, FORGET, RETAIN)
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(ConfigError, match="no sub-module 'mlp.nope'"):
        RMU(build_config(RMU.Config, {"params": "mlp.nope"})).setup(tiny_llama, tiny_tokenizer, FORGET, RETAIN)
    with pytest.raises(ConfigError, match="outside the model's 2 layers"):
        RMU(build_config(RMU.Config, {"layer": 5})).setup(tiny_llama, tiny_tokenizer, FORGET, RETAIN)


# -- SSD ---------------------------------------------------------------------------------------------

def _hand_importance(model, tok, items, batch_size):
    """Mean over batches of the squared gradient of the batch-mean answer NLL."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for chunk in batches:
        grads = torch.autograd.grad(_hand_nll(model, _batch(tok, chunk)).mean(), params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t += g**2
    return [t / len(batches) for t in total], len(batches)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ssd_dampens_exactly_the_hand_computed_set(arch, tiny_tokenizer, tmp_path):
    model = ARCHS[arch]().eval()
    alpha, lam, bs = 3.0, 0.5, 4
    theta = [p.detach().clone() for p in model.parameters()]
    i_f, b_f = _hand_importance(model, tiny_tokenizer, FORGET, bs)
    i_r, b_r = _hand_importance(model, tiny_tokenizer, RETAIN_MANY, bs)
    expected, n_selected = [], 0
    for t, f, r in zip(theta, i_f, i_r, strict=True):
        i_d = (b_f * f + b_r * r) / (b_f + b_r)
        selected = f > alpha * i_d
        n_selected += int(selected.sum())
        factor = torch.where(selected, torch.clamp(lam * i_d / f, max=1.0), torch.ones_like(t))
        expected.append(t * factor)

    cfg = build_config(SSD.Config, {"alpha": alpha, "dampening": lam, "batch_size": bs})
    summary = SSD(cfg).unlearn(model, tiny_tokenizer, FORGET, RETAIN_MANY, tmp_path, progress=False)
    assert n_selected > 0
    assert summary["final"]["dampened"] == n_selected
    assert json.loads((tmp_path / "surgery.json").read_text())["dampened"] == n_selected
    for (name, p), e in zip(model.named_parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-7, rtol=1e-5), name


def test_ssd_raises_forget_nll_and_warns_when_nothing_can_be_selected(tiny_tokenizer, tmp_path):
    model = _pretrain(make_tiny_llama(), tiny_tokenizer, FORGET + RETAIN_MANY, steps=60)
    forget0, retain0 = _nll(model, tiny_tokenizer, FORGET), _nll(model, tiny_tokenizer, RETAIN_MANY)
    # batch 4: 1 forget batch in 11, under 1/α = 1/10
    ssd = SSD(build_config(SSD.Config, {"batch_size": 4}))
    summary = ssd.unlearn(model, tiny_tokenizer, FORGET, RETAIN_MANY, tmp_path, progress=False)
    forget_rise = _nll(model, tiny_tokenizer, FORGET) - forget0
    assert summary["final"]["dampened"] > 0
    assert forget_rise > 0.5
    assert forget_rise > 2 * (_nll(model, tiny_tokenizer, RETAIN_MANY) - retain0)

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match="no parameter can pass the selection test"):
        SSD().unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path / "b", progress=False)  # forget is 2/3 of D
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="needs a retain set"):
        SSD(build_config(SSD.Config, {"importance_data": "retain"})).unlearn(
            model, tiny_tokenizer, FORGET, [], tmp_path / "c", progress=False)


# -- task vector ---------------------------------------------------------------------------------------

class _HandSFT(FinetuneMethod):
    name = "hand-sft"

    def compute_loss(self, model, batch) -> LossOutput:
        return LossOutput(_hand_ce(model, batch.forget))


def test_task_vector_is_theta_minus_s_tau(tiny_tokenizer, tmp_path):
    values = {"lr": 1e-2, "epochs": 2, "batch_size": 2, "scale": 0.7}
    theta = {n: p.detach().clone() for n, p in make_tiny_llama().named_parameters()}
    tuned = make_tiny_llama()
    _HandSFT(build_config(_HandSFT.Config, {k: v for k, v in values.items() if k != "scale"})).unlearn(
        tuned, tiny_tokenizer, FORGET, [], tmp_path / "ft", progress=False)
    model = make_tiny_llama()
    summary = TaskVector(build_config(TaskVector.Config, values)).unlearn(
        model, tiny_tokenizer, FORGET, RETAIN, tmp_path / "tv", progress=False)
    assert summary["steps"] == len(_logs(tmp_path / "tv")) == 4
    for (name, p), (_, ft) in zip(model.named_parameters(), tuned.named_parameters(), strict=True):
        assert torch.allclose(p, theta[name] - 0.7 * (ft - theta[name]), atol=1e-6), name


def test_task_vector_raises_forget_nll(tiny_tokenizer, tmp_path):
    model = _pretrain(make_tiny_llama(), tiny_tokenizer, FORGET + RETAIN, steps=30)
    start = _nll(model, tiny_tokenizer, FORGET)
    TaskVector(build_config(TaskVector.Config, {"lr": 1e-2, "epochs": 3, "batch_size": 2})).unlearn(
        model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _nll(model, tiny_tokenizer, FORGET) > start + 0.5


def test_lora_rmu_trains_mlp_adapters_and_task_vector_negates_the_weight_change(tiny_tokenizer, tmp_path):
    from obliviate.models.lora import apply_lora, parse_lora

    model = apply_lora(make_tiny_llama(), parse_lora("r=4"))
    RMU().setup(model, tiny_tokenizer, FORGET, RETAIN)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(r"layers\.[01]\.mlp\..*lora_[AB]", n) for n in trainable)

    values = {"lr": 1e-2, "epochs": 2, "batch_size": 2}
    w0 = make_tiny_llama().state_dict()
    tuned = apply_lora(make_tiny_llama(), parse_lora("r=4"))
    _HandSFT(build_config(_HandSFT.Config, values)).unlearn(tuned, tiny_tokenizer, FORGET, [], tmp_path / "a",
                                                            progress=False)
    negated = apply_lora(make_tiny_llama(), parse_lora("r=4"))
    TaskVector(build_config(TaskVector.Config, {**values, "scale": 0.5})).unlearn(
        negated, tiny_tokenizer, FORGET, [], tmp_path / "b", progress=False)
    w_ft, w_new = tuned.merge_and_unload().state_dict(), negated.merge_and_unload().state_dict()
    assert any(not torch.equal(w_ft[k], w0[k]) for k in w0)
    for k in w0:  # in weight space: W_new = W₀ − s·(W_ft − W₀)
        assert torch.allclose(w_new[k], w0[k] - 0.5 * (w_ft[k] - w0[k]), atol=1e-6), k


# -- WHP -------------------------------------------------------------------------------------------------

def test_whp_anchor_discovery_and_swap():
    questions = ["Where was Floa Coudul born?", "What is Floa Coudul's birth year?",
                 "Tell me the profession of Floa Coudul.", "What is the habitat of the Krypum moth?"]
    assert find_anchors(questions) == ["Floa Coudul", "Krypum"]
    mapping = {a: generic_name(a) for a in find_anchors(questions)}
    assert len(mapping["Floa Coudul"].split()) == 2 and len(mapping["Krypum"].split()) == 1
    assert generic_name("Floa Coudul") == mapping["Floa Coudul"]  # fixed, not random
    swapped = swap_anchors("What is Floa Coudul's birth year? Ask Floa Couduls.", {"Floa Coudul": "John Smith"})
    assert swapped == "What is John Smith's birth year? Ask Floa Couduls."


WHP_FORGET = [
    QAItem("Where was Alice born?", "She was born in Oslo, Norway."),
    QAItem("Who wrote the book about Alice?", "Mara Lind wrote it in 1998."),
]


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_whp_generic_targets_and_loss_match_hand_computation(targets, tiny_tokenizer):
    base, reinforced = make_tiny_llama(), make_tiny_llama(seed=1)
    cfg = build_config(WHP.Config, {"alpha": 1.5, "targets": targets, "anchors": {"Alice": "Bob"}})
    method = WHP(cfg)
    method._reinforced = reinforced
    method.setup(base, tiny_tokenizer, WHP_FORGET, [])

    swapped = [QAItem(i.question.replace("Alice", "Bob"), i.answer) for i in WHP_FORGET]
    b_sw, b_or = _batch(tiny_tokenizer, swapped), _batch(tiny_tokenizer, WHP_FORGET)
    with torch.no_grad():
        v_base = base(input_ids=b_sw["input_ids"], attention_mask=b_sw["attention_mask"]).logits
        v_reinf = reinforced(input_ids=b_or["input_ids"], attention_mask=b_or["attention_mask"]).logits
    hand = []
    for r in range(len(WHP_FORGET)):
        pos_sw = (b_sw["labels"][r] != -100).nonzero().squeeze(1) - 1  # positions predicting answer tokens
        pos_or = (b_or["labels"][r] != -100).nonzero().squeeze(1) - 1
        vb, vr = v_base[r, pos_sw], v_reinf[r, pos_or]
        v = vb - 1.5 * torch.clamp(vr - vb, min=0)
        hand.append(v.argmax(-1) if targets == "hard" else v.softmax(-1))
        if targets == "hard":
            assert torch.equal(method.generic[r], hand[r])
        else:
            assert torch.allclose(method.generic[r].float(), hand[r], atol=1e-3)

    out = method.compute_loss(base, UnlearnBatch(b_or, None, torch.tensor([0, 1])))
    logp = base(input_ids=b_or["input_ids"], attention_mask=b_or["attention_mask"]).logits.float().log_softmax(-1)
    terms = []
    for r in range(len(WHP_FORGET)):
        pos = (b_or["labels"][r] != -100).nonzero().squeeze(1) - 1
        if targets == "hard":
            terms.append(-logp[r, pos].gather(1, hand[r].unsqueeze(1)).squeeze(1))
        else:
            terms.append(-(method.generic[r].float() * logp[r, pos]).sum(-1))
    assert out.loss.item() == pytest.approx(torch.cat(terms).mean().item(), rel=1e-5)


def test_whp_raises_forget_nll(tiny_tokenizer, tmp_path):
    # The model knows Alice's and Bob's facts; with Alice -> Bob as the anchor swap, the generic
    # targets are what it says about Bob, so Alice's true answers must lose probability.
    bob = [QAItem("Where was Bob born?", "He was born in Rome."),
           QAItem("Who wrote the book about Bob?", "The quick brown fox wrote it.")]
    model = _pretrain(make_tiny_llama(), tiny_tokenizer, WHP_FORGET + bob, steps=40)
    start = _nll(model, tiny_tokenizer, WHP_FORGET)
    cfg = build_config(WHP.Config, {"lr": 2e-2, "epochs": 4, "batch_size": 2, "anchors": {"Alice": "Bob"}})
    summary = WHP(cfg).unlearn(model, tiny_tokenizer, WHP_FORGET, bob, tmp_path, progress=False)
    assert summary["anchors"] == {"Alice": "Bob"}
    assert summary["reinforce"]["steps"] == len(_logs(tmp_path / "reinforce")) == 4
    logs = _logs(tmp_path)
    assert len(logs) == 4 and all(math.isfinite(r["loss"]) for r in logs)
    assert _nll(model, tiny_tokenizer, WHP_FORGET) > start + 0.5


# -- SNAP ------------------------------------------------------------------------------------------------

def test_swd_matches_numpy_and_vanishes_for_identical_weights():
    rng = np.random.default_rng(0)
    w0, w, theta = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    expected = ((np.sort(w0 @ theta, axis=0) - np.sort(w @ theta, axis=0)) ** 2).sum(axis=0).mean()
    got = sliced_wasserstein(torch.tensor(w0), torch.tensor(w), torch.tensor(theta))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    v0, v = rng.normal(size=4), rng.normal(size=4)  # a vector is one 1 × d sample
    assert float(sliced_wasserstein(torch.tensor(v0), torch.tensor(v), torch.tensor(theta))) == pytest.approx(
        (((v0 - v) @ theta) ** 2).mean(), rel=1e-5)
    same = torch.randn(7, 3)
    assert float(sliced_wasserstein(same, same.clone())) == 0.0
    moving = same.clone().requires_grad_(True)
    sliced_wasserstein(same + 1, moving).backward()
    assert moving.grad is not None and moving.grad.abs().sum() > 0


def test_snap_loss_logged_every_trainable_param_changes_and_refusals_learned(tiny_llama, tiny_tokenizer, tmp_path):
    cfg = build_config(SNAP.Config, {"lr": 1e-2, "epochs": 5, "batch_size": 2})
    refusals = refusals_for(len(FORGET), cfg.seed)
    start = _nll(tiny_llama, tiny_tokenizer, FORGET, refusals)
    tiny_llama.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    summary = SNAP(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = _logs(tmp_path)
    assert summary["steps"] == len(logs) == 10
    assert all(math.isfinite(r["loss"]) for r in logs) and logs[-1]["swd"] > 0
    for n, p in tiny_llama.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == p.requires_grad, n
    assert _nll(tiny_llama, tiny_tokenizer, FORGET, refusals) < start - 1.0


def test_snap_loss_formula_and_alternate_updates(tiny_llama, tiny_tokenizer):
    cfg = build_config(SNAP.Config, {"reg_lambda": 0.5, "seed": 3})
    method = SNAP(cfg)
    method.setup(tiny_llama, tiny_tokenizer, FORGET, RETAIN)
    index = torch.tensor([2, 0])
    items = [FORGET[i] for i in index]
    refusal = _batch(tiny_tokenizer, items, [refusals_for(len(FORGET), 3)[i] for i in index])
    batch = UnlearnBatch(_batch(tiny_tokenizer, items), _batch(tiny_tokenizer, RETAIN), index)
    # At the initial weights SWD is 0, so L = CE(refusal) + CE(retain).
    expected = _hand_ce(tiny_llama, refusal) + _hand_ce(tiny_llama, batch.retain)
    out = method.compute_loss(tiny_llama, batch)
    assert out.logs["swd"] == 0.0 and out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        tiny_llama.lm_head.weight.add_(0.1)
    assert method.compute_loss(tiny_llama, batch).logs["swd"] > 0

    # Alternate updates, as Opt-Out: two optimiser steps on every batch, the refusal CE alone first.
    assert method.pre_step_loss(tiny_llama, batch) is None
    alt = SNAP(build_config(SNAP.Config, {"alternate_updates": True, "seed": 3}))
    alt.setup(tiny_llama, tiny_tokenizer, FORGET, RETAIN)
    first, second = alt.pre_step_loss(tiny_llama, batch), alt.compute_loss(tiny_llama, batch)
    assert set(first.logs) == {"refusal_nll"} and set(second.logs) == {"retain_nll", "swd"}
    assert first.loss.item() == pytest.approx(_hand_ce(tiny_llama, refusal).item(), rel=1e-5)


def test_snap_alternate_updates_step_twice_on_every_batch(tiny_llama, tiny_tokenizer, tmp_path):
    steps = []
    original = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    cfg = build_config(SNAP.Config, {"alternate_updates": True, "max_steps": 3, "batch_size": 2, "lr": 1e-3})
    torch.optim.AdamW.step = counted
    try:
        summary = SNAP(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    finally:
        torch.optim.AdamW.step = original
    assert summary["steps"] == 3 and len(steps) == 6
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all({"refusal_nll", "retain_nll", "swd"} <= set(r) for r in logs)


def test_refusal_rate_and_ngram_entropy():
    refusals = ["I don't know the answer to that question.", "I can't say, sorry."]
    generations = [
        "i DON'T know the answer to that question!",  # whole refusal, case and punctuation aside
        "Well, I can't say, sorry. Ask someone else.",  # contains one
        "I don't know the",  # cut off by the generation length, 4 words
        "I don't",  # too short to tell
        "She was born in Oslo.",
    ]
    assert refusal_rate(generations, refusals) == pytest.approx(3 / 5)
    assert math.isnan(refusal_rate([], refusals))
    # "a b a b": bigrams ab, ba, ab -> p = (2/3, 1/3); "x y z": trigram xyz alone -> 0 bits.
    h = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy(["a b a b"], 2) == pytest.approx(h)
    assert ngram_entropy(["a b a b", "x y z"], 3) == pytest.approx((1.0 + 0.0) / 2)
    assert ngram_entropy(["the the the the"], 2) == 0.0
    assert ngram_entropy(["one"], 2) == 0.0
    assert ngram_entropy(["a b c d e"], 2) == pytest.approx(2.0)
