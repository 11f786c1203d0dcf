"""The reference model and the loss-based methods: KL, NPO, SimNPO, IdkSFT, IdkDPO, FLAT.

For each method: (a) a run logs finite losses and moves every trainable parameter and no frozen one,
(b) the method's own success measure moves the intended way, (c) `compute_loss` on a fixed batch
equals an independent hand computation of the paper's formula. Then the reference-model modes.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from obliviate.config import build_config
from obliviate.data.refusals import REFUSALS, refusal_for, refusals_for
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods.flat import FLAT
from obliviate.methods.idk_dpo import IdkDPO
from obliviate.methods.idk_sft import IdkSFT
from obliviate.methods.kl import KL
from obliviate.methods.npo import NPO
from obliviate.methods.simnpo import SimNPO
from obliviate.train.data import IGNORE, UnlearnBatch, collate, encode_items
from obliviate.train.reference import Reference
from tests.conftest import make_tiny_llama
from tests.helpers import FORGET, memorised_weights

RETAIN = [  # this module's own retain set (three items), next to the shared forget set
    QAItem("What is the capital of France?", "The capital of France is Paris."),
    QAItem("Who met in London?", "Alice and Bob met in London."),
    QAItem("How did they travel?", "They travelled to Rome, Berlin and Madrid by train."),
]
METHODS = {cls.name: cls for cls in (KL, NPO, SimNPO, IdkSFT, IdkDPO, FLAT)}
LOG_KEYS = {
    "kl": {"forget_nll", "retain_kl"},
    "npo": {"forget_loss", "log_ratio", "retain_nll"},
    "simnpo": {"forget_loss", "forget_nll", "retain_nll"},
    "idk_sft": {"refusal_nll", "retain_nll"},
    "idk_dpo": {"forget_loss", "margin", "retain_nll"},
    "flat": {"p_good", "p_bad"},
}


# ---- fixtures and independent helpers ---------------------------------------------------------


@pytest.fixture(scope="module")
def memorised_state():
    """A tiny Llama fine-tuned until it knows the forget and retain answers (low NLL)."""
    return memorised_weights(FORGET + RETAIN)


@pytest.fixture
def memorised(memorised_state):
    model = make_tiny_llama()
    model.load_state_dict(memorised_state)
    return model.eval()


def _batch(tok, items, answers=None):
    enc, _ = encode_items(tok, items, answers=answers)
    return collate(enc, tok.pad_token_id)


def _unlearn_batch(tok, index=(2, 0)):
    """A forget batch of the items at `index` (in that order) and a retain batch."""
    forget = _batch(tok, [FORGET[i] for i in index])
    return UnlearnBatch(forget, _batch(tok, RETAIN[:2]), torch.tensor(index))


def _answer_logps(model, batch) -> list[torch.Tensor]:
    """Per row: log p(answer token) at each labelled position, by explicit loops (float64)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    rows = []
    for b in range(batch["labels"].shape[0]):
        vals = [torch.log_softmax(logits[b, t - 1], -1)[batch["labels"][b, t]]
                for t in range(1, batch["labels"].shape[1]) if batch["labels"][b, t] != IGNORE]
        rows.append(torch.stack(vals))
    return rows


def _seq_logp(model, batch) -> torch.Tensor:
    return torch.stack([r.sum() for r in _answer_logps(model, batch)])


def _mean_nll(model, batch) -> torch.Tensor:
    return torch.stack([-r.mean() for r in _answer_logps(model, batch)])


def _token_ce(model, batch) -> torch.Tensor:
    """Cross-entropy averaged over all answer tokens of the batch."""
    rows = _answer_logps(model, batch)
    return -torch.cat(rows).sum() / sum(len(r) for r in rows)


def _hand_kl(model, ref, batch) -> torch.Tensor:
    """Mean over answer positions of Σ_v p_ref(v) log(p_ref(v) / p_θ(v))."""
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                               .logits.double(), -1)
        lr = torch.log_softmax(ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                               .logits.double(), -1)
    terms = [(lr[b, t - 1].exp() * (lr[b, t - 1] - lp[b, t - 1])).sum()
             for b in range(lp.shape[0]) for t in range(1, lp.shape[1]) if batch["labels"][b, t] != IGNORE]
    return torch.stack(terms).mean()


def _perturb(model, seed=1, scale=0.05):
    """Move the weights as a training step would, so π_θ ≠ π_ref."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _method(name, **values):
    cls = METHODS[name]
    return cls(build_config(cls.Config, values))


def _loss(method, model, batch) -> float:
    with torch.no_grad():
        return float(method.compute_loss(model, batch).loss)


def _sigmoid_log(x):
    return torch.log(1.0 / (1.0 + torch.exp(-x)))


def _start_then_perturb(method, model, tok, index=(2, 0)):
    """Keep a copy of `model`, set `method` up on it, then perturb it: (the copy, an unlearn batch).

    The copy is π_ref as `setup` saw it; after the perturbation π_θ ≠ π_ref, so reference terms are non-trivial.
    """
    start = copy.deepcopy(model)
    method.setup(model, tok, FORGET, RETAIN)
    _perturb(model)
    return start, _unlearn_batch(tok, index=index)


# ---- (a) loss logged, every trainable parameter moves, frozen ones do not ---------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_loss_logged_and_every_trainable_parameter_changes(name, memorised, tiny_tokenizer, tmp_path):
    memorised.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in memorised.named_parameters()}
    summary = _method(name, lr=1e-2, epochs=2, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) == 4
    for row in logs:
        assert math.isfinite(row["loss"]) and LOG_KEYS[name] <= set(row)
    for n, p in memorised.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == p.requires_grad, n


# ---- (b) each method's own success measure --------------------------------------------------


def _nll(model, tok, answers=None) -> float:
    return float(_mean_nll(model, _batch(tok, FORGET, answers)).mean())


@pytest.mark.parametrize("name", ["kl", "npo", "simnpo"])
def test_forget_nll_rises(name, memorised, tiny_tokenizer, tmp_path):
    start = _nll(memorised, tiny_tokenizer)
    _method(name, lr=1e-2, epochs=3, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _nll(memorised, tiny_tokenizer) > start + 1.0


@pytest.mark.parametrize("name", ["idk_sft", "idk_dpo"])
def test_refusal_nll_falls_and_forget_nll_rises(name, memorised, tiny_tokenizer, tmp_path):
    refusals = refusals_for(len(FORGET), seed=0)
    start_refusal, start_forget = _nll(memorised, tiny_tokenizer, refusals), _nll(memorised, tiny_tokenizer)
    _method(name, lr=1e-2, epochs=3, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _nll(memorised, tiny_tokenizer, refusals) < start_refusal - 1.0
    assert _nll(memorised, tiny_tokenizer) > start_forget + 0.5  # a side effect, not the target


def _mean_prob(model, tok, answers=None) -> float:
    rows = _answer_logps(model, _batch(tok, FORGET, answers))
    return float(torch.stack([r.exp().mean() for r in rows]).mean())


def test_flat_raises_refusal_probability_and_lowers_forget_probability(memorised, tiny_tokenizer, tmp_path):
    # FLAT's objective is the mean answer-token probability P̄ (not the NLL, which a few unlikely
    # tokens dominate): P̄(refusal) must rise and P̄(forget answer) must fall.
    refusals = refusals_for(len(FORGET), seed=0)
    start_good = _mean_prob(memorised, tiny_tokenizer, refusals)
    start_bad = _mean_prob(memorised, tiny_tokenizer)
    _method("flat", lr=1e-2, epochs=3, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, [], tmp_path, progress=False)
    assert _mean_prob(memorised, tiny_tokenizer, refusals) > 2 * start_good
    assert _mean_prob(memorised, tiny_tokenizer) < start_bad / 2


# ---- (c) compute_loss equals the formula, computed by hand ----------------------------------


def test_kl_formula(memorised, tiny_tokenizer):
    method = _method("kl", alpha=0.7, ref="copy")
    start, batch = _start_then_perturb(method, memorised, tiny_tokenizer)
    kl = _hand_kl(memorised, start, batch.retain)
    assert kl > 1e-4  # the perturbation makes the term non-trivial
    expected = -_mean_nll(memorised, batch.forget).mean() + 0.7 * kl
    assert _loss(method, memorised, batch) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("retain_loss", ["none", "gd", "kl"])
def test_npo_formula(retain_loss, memorised, tiny_tokenizer):
    beta, alpha = 0.5, 0.3
    method = _method("npo", beta=beta, alpha=alpha, retain_loss=retain_loss)
    start, batch = _start_then_perturb(method, memorised, tiny_tokenizer)
    ratio = _seq_logp(memorised, batch.forget) - _seq_logp(start, batch.forget)
    expected = -(2 / beta) * _sigmoid_log(-beta * ratio).mean()
    if retain_loss == "gd":
        expected = expected + alpha * _token_ce(memorised, batch.retain)
    elif retain_loss == "kl":
        expected = expected + alpha * _hand_kl(memorised, start, batch.retain)
    assert method.uses_retain == (retain_loss != "none")
    assert _loss(method, memorised, batch) == pytest.approx(float(expected), rel=1e-4)


def test_simnpo_formula(memorised, tiny_tokenizer):
    beta, gamma, npo_coeff, gd_coeff = 2.5, 0.4, 0.2, 0.6
    method = _method("simnpo", beta=beta, gamma=gamma, npo_coeff=npo_coeff, gd_coeff=gd_coeff)
    batch = _unlearn_batch(tiny_tokenizer)
    rows = _answer_logps(memorised, batch.forget)
    # −(2/β) log σ(−(β/|y|) log π(y|x) − βγ), with log π summed over the |y| answer tokens
    forget = torch.stack([-(2 / beta) * _sigmoid_log(-(beta / len(r)) * r.sum() - beta * gamma)
                          for r in rows])
    expected = npo_coeff * forget.mean() + gd_coeff * _token_ce(memorised, batch.retain)
    assert _loss(method, memorised, batch) == pytest.approx(float(expected), rel=1e-4)


def _refusal_batch(tok, index):
    return _batch(tok, [FORGET[i] for i in index], [refusal_for(i, 0) for i in index])


def test_idk_sft_formula_and_refusals_follow_the_forget_rows(memorised, tiny_tokenizer):
    method = _method("idk_sft", alpha=0.5, refusals="fixed")
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    batch = _unlearn_batch(tiny_tokenizer, index=(3, 1, 2))
    built = method.refusals(batch)
    for row in range(3):  # same question as the forget row, refusal as the answer
        prompt = batch.forget["labels"][row] == IGNORE
        n = int(prompt.long().argmin())  # prompt length
        assert torch.equal(built["input_ids"][row, :n], batch.forget["input_ids"][row, :n])
    refusal = _refusal_batch(tiny_tokenizer, (3, 1, 2))
    expected = _token_ce(memorised, refusal) + 0.5 * _token_ce(memorised, batch.retain)
    assert _loss(method, memorised, batch) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("ref", ["precompute", "copy"])
def test_idk_dpo_formula(ref, memorised, tiny_tokenizer):
    beta, alpha = 0.1, 0.8
    method = _method("idk_dpo", beta=beta, alpha=alpha, ref=ref, refusals="fixed")
    start, batch = _start_then_perturb(method, memorised, tiny_tokenizer, index=(1, 3))
    win, lose = _refusal_batch(tiny_tokenizer, (1, 3)), batch.forget
    margin = (_seq_logp(memorised, win) - _seq_logp(start, win)) - (
        _seq_logp(memorised, lose) - _seq_logp(start, lose))
    expected = -(2 / beta) * _sigmoid_log(beta * margin).mean() + alpha * _token_ce(memorised, batch.retain)
    assert _loss(method, memorised, batch) == pytest.approx(float(expected), rel=1e-4)


_F_DIVERGENCES = {  # (g, f*), written as in the paper's table
    "kl": (lambda v: v, lambda t: math.exp(t - 1)),
    "pearson": (lambda v: v, lambda t: t * t / 4 + t),
    "total_variation": (lambda v: math.tanh(v) / 2, lambda t: t),
    "jensen_shannon": (lambda v: math.log(2) - math.log(1 + math.exp(-v)),
                       lambda t: -math.log(2 - math.exp(t))),
}


@pytest.mark.parametrize("divergence", list(_F_DIVERGENCES))
def test_flat_formula(divergence, memorised, tiny_tokenizer):
    method = _method("flat", divergence=divergence)
    method.setup(memorised, tiny_tokenizer, FORGET, [])
    batch = UnlearnBatch(_batch(tiny_tokenizer, [FORGET[2], FORGET[0]]), None, torch.tensor([2, 0]))
    good = _refusal_batch(tiny_tokenizer, (2, 0))
    p_good = float(torch.stack([r.exp().mean() for r in _answer_logps(memorised, good)]).mean())
    p_bad = float(torch.stack([r.exp().mean() for r in _answer_logps(memorised, batch.forget)]).mean())
    g, f_star = _F_DIVERGENCES[divergence]
    expected = -(g(p_good) - f_star(g(p_bad)))
    assert _loss(method, memorised, batch) == pytest.approx(expected, rel=1e-4, abs=1e-6)


# ---- the reference model ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["npo", "idk_dpo"])
def test_precompute_and_copy_give_the_same_losses(name, memorised, tiny_tokenizer):
    pre, cp = _method(name, ref="precompute"), _method(name, ref="copy")
    pre.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    cp.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    assert (pre.reference.mode, cp.reference.mode) == ("precompute", "copy")
    batch = _unlearn_batch(tiny_tokenizer, index=(3, 0, 1))

    def loss(method) -> float:  # the same random refusals for every call (idk_dpo draws them)
        torch.manual_seed(0)
        return _loss(method, memorised, batch)

    before = loss(cp)
    _perturb(memorised)  # training moves the model; both references must stay at the start
    after = loss(cp)
    assert abs(after - before) > 1e-3
    assert loss(pre) == pytest.approx(after, rel=1e-5)


@pytest.mark.parametrize("name", ["idk_sft", "idk_dpo"])
def test_refusals_are_drawn_at_random_on_every_use_by_default(name, memorised, tiny_tokenizer):
    from obliviate.data.refusals import REFUSALS

    method = _method(name)
    assert method.config.refusals == "random"
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    batch = _unlearn_batch(tiny_tokenizer, index=(3, 0, 1))
    torch.manual_seed(0)
    draws = []
    for _ in range(3):
        built = method.refusals(batch)
        draws.append(list(method.refusals.last))
        for row, (i, j) in enumerate(zip((3, 0, 1), method.refusals.last, strict=True)):
            want = encode_items(tiny_tokenizer, [FORGET[i]], answers=[REFUSALS[j]])[0][0].input_ids
            assert built["input_ids"][row, : len(want)].tolist() == want
    assert len({tuple(d) for d in draws}) > 1  # another refusal on another use
    torch.manual_seed(0)
    method.refusals(batch)
    assert method.refusals.last == draws[0]  # torch's RNG, which the loop checkpoints


def test_npo_without_retain_term_needs_no_retain_data(memorised, tiny_tokenizer, tmp_path):
    method = _method("npo", lr=1e-2, epochs=1, batch_size=2, retain_loss="none")
    summary = method.unlearn(memorised, tiny_tokenizer, FORGET, [], tmp_path, progress=False)
    assert summary["steps"] == 2 and "retain_nll" not in summary["final"]


def test_auto_picks_precompute_or_copy_and_refuses_impossible_modes(memorised, tiny_tokenizer):
    assert Reference("auto").setup(memorised, tiny_tokenizer, FORGET) == "precompute"
    assert Reference("auto", needs_logits=True).setup(memorised, tiny_tokenizer, FORGET) == "copy"
    with pytest.raises(ConfigError, match="ref=adapter needs a PEFT"):
        Reference("adapter").setup(memorised, tiny_tokenizer, FORGET)
    with pytest.raises(ConfigError, match="cannot serve this method"):
        _method("kl", ref="precompute").setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    ref = Reference("precompute")
    ref.setup(memorised, tiny_tokenizer, FORGET)
    batch = _unlearn_batch(tiny_tokenizer)
    with pytest.raises(ConfigError, match="full distributions"):
        ref.logits(memorised, batch.forget)
    other = UnlearnBatch(_batch(tiny_tokenizer, [FORGET[0], FORGET[1]]), None, torch.tensor([2, 3]))
    with pytest.raises(ConfigError, match="do not match this batch"):
        ref.forget_logprobs(memorised, other)  # rows 2, 3 of the cache, but other answers


def test_reference_outputs_carry_no_gradient_and_keep_the_training_flag(memorised, tiny_tokenizer):
    batch = _unlearn_batch(tiny_tokenizer)
    for mode in ("copy", "precompute"):
        ref = Reference(mode)
        ref.setup(memorised, tiny_tokenizer, FORGET)
        memorised.train()
        out = ref.forget_logprobs(memorised, batch)
        assert not out.requires_grad and memorised.training
        assert torch.allclose(out.double(), _seq_logp(memorised, batch.forget), atol=1e-4)


def _lora(model, random_b: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_b)
    return get_peft_model(model, cfg)


def test_adapter_mode_equals_the_base_model(memorised, tiny_tokenizer):
    base = copy.deepcopy(memorised)
    peft_model = _lora(memorised, random_b=True)
    batch = _batch(tiny_tokenizer, FORGET)
    with torch.no_grad():
        adapted = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapter does change the outputs
    ref = Reference("adapter")
    assert ref.setup(peft_model, tiny_tokenizer, FORGET) == "adapter"
    peft_model.train()
    assert torch.allclose(ref.logits(peft_model, batch), plain, atol=1e-5)
    with torch.no_grad():  # the adapter is back on afterwards, and the model still in training mode
        again = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(again, adapted, atol=1e-6) and peft_model.training
    # "auto" does not take a base model that differs from the starting model as the reference
    assert Reference("auto").setup(peft_model, tiny_tokenizer, FORGET) == "precompute"


def test_npo_on_lora_uses_the_adapter_and_trains_only_the_adapter(memorised, tiny_tokenizer, tmp_path):
    peft_model = _lora(memorised, random_b=False)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    method = _method("npo", lr=1e-2, epochs=2, batch_size=2, retain_loss="kl")
    method.unlearn(peft_model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert method.reference.mode == "adapter"
    for n, p in peft_model.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == ("lora_" in n), n
    # after training, the adapter-off reference still matches a precomputed one of the start
    start = make_tiny_llama()
    start.load_state_dict(_base_state(before))
    batch = _unlearn_batch(tiny_tokenizer)
    assert torch.allclose(method.reference.forget_logprobs(peft_model, batch).double(),
                          _seq_logp(start, batch.forget), atol=1e-4)


def _base_state(peft_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain Llama state dict inside a PEFT model's parameters (LoRA weights dropped)."""
    out = {}
    for name, value in peft_params.items():
        if "lora_" in name:
            continue
        out[name.removeprefix("base_model.model.").replace(".base_layer", "")] = value
    return out


# ---- refusals ------------------------------------------------------------------------------


def test_refusals_are_deterministic_varied_and_seeded():
    assert len(set(REFUSALS)) == len(REFUSALS) >= 40
    first = refusals_for(30, seed=0)
    assert first == refusals_for(30, seed=0) and all(r in REFUSALS for r in first)
    assert len(set(first)) >= 15  # not one sentence for everyone
    assert refusals_for(30, seed=1) != first
    assert refusal_for(7, 0) == first[7]
