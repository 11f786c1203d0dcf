"""open-unlearning's newer losses (UNDIAL, WGA, SatImp, CE-U, PDU, AltPO) and WAGLE, on a tiny Llama built in code.

For each method: (a) a run logs finite losses and moves every trainable parameter and no frozen one,
(b) its own success measure moves the intended way on a model that has memorised the forget set,
(c) `compute_loss` on a fixed batch equals a hand computation of the formula, written here with
explicit loops over positions (float64), independently of the method's code.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from obliviate.config import build_config
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.train.data import IGNORE, UnlearnBatch, collate, encode_items
from tests.conftest import build_tiny_tokenizer, make_tiny_llama
from tests.helpers import FORGET, memorised_weights

RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris."),
    QAItem("Who met in London?", "Alice and Bob met in London."),
    QAItem("How did they travel?", "They travelled to Rome, Berlin and Madrid by train."),
]
LOG_KEYS = {
    "undial": {"forget_loss", "retain_nll"},
    "wga": {"forget_loss", "weight", "retain_nll"},
    "satimp": {"forget_loss", "weight", "retain_nll"},
    "ceu": {"forget_loss", "retain_nll"},
    "pdu": {"forget_loss", "retain_nll", "dual"},
    "altpo": {"forget_loss", "margin", "retain_nll"},
}


# ---- fixtures and independent helpers ---------------------------------------------------------


def _batch(tok, items, answers=None):
    enc, _ = encode_items(tok, items, answers=answers)
    return collate(enc, tok.pad_token_id)


@pytest.fixture(scope="module")
def memorised_state():
    """A tiny Llama fine-tuned until it knows the forget and retain answers (low NLL)."""
    return memorised_weights(FORGET + RETAIN)


@pytest.fixture
def memorised(memorised_state):
    model = make_tiny_llama()
    model.load_state_dict(memorised_state)
    return model.eval()


def _unlearn_batch(tok, index=(2, 0)):
    return UnlearnBatch(_batch(tok, [FORGET[i] for i in index]), _batch(tok, RETAIN[:2]), torch.tensor(index))


def _positions(model, batch):
    """Per answer position, in order: (log-softmax of the logits predicting it (V,), its token id)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"]
    return [(torch.log_softmax(logits[b, t - 1], -1), int(labels[b, t]), b)
            for b in range(labels.shape[0]) for t in range(1, labels.shape[1]) if labels[b, t] != IGNORE]


def _logits_at(model, batch):
    """Per answer position: the raw logits predicting it (V,), float64."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"]
    return [logits[b, t - 1] for b in range(labels.shape[0]) for t in range(1, labels.shape[1])
            if labels[b, t] != IGNORE]


def _token_ce(model, batch) -> float:
    pos = _positions(model, batch)
    return float(-sum(lp[y] for lp, y, _ in pos) / len(pos))


def _mean_nll(model, items, answers=None) -> float:
    tok = build_tiny_tokenizer()
    pos = _positions(model, _batch(tok, items, answers))
    rows = {}
    for lp, y, b in pos:
        rows.setdefault(b, []).append(-float(lp[y]))
    return sum(sum(r) / len(r) for r in rows.values()) / len(rows)


def _perturb(model, seed=1, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _method(name, **values):
    cls = METHODS[name]
    return cls(build_config(cls.Config, values))


def _loss(method, model, batch):
    with torch.no_grad():
        return method.compute_loss(model, batch)


# ---- (a) loss logged, every trainable parameter moves, frozen ones do not ---------------------


@pytest.mark.parametrize("name", list(LOG_KEYS))
def test_loss_logged_and_every_trainable_parameter_changes(name, memorised, tiny_tokenizer, tmp_path):
    memorised.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in memorised.named_parameters()}
    summary = _method(name, lr=1e-2, epochs=2, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) == 4
    for row in logs:
        assert math.isfinite(row["loss"]) and LOG_KEYS[name] <= set(row), row
    for n, p in memorised.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == p.requires_grad, n


# ---- UNDIAL -----------------------------------------------------------------------------------


def _undial_hand(model, start, batch, beta) -> float:
    """Mean over answer positions of −Σ_v softmax(z_ref − β e_y)_v · log p_θ(v)."""
    terms = []
    for (lp, y, _), z in zip(_positions(model, batch), _logits_at(start, batch), strict=True):
        z = z.clone()
        z[y] -= beta
        terms.append(-(torch.softmax(z, -1) * lp).sum())
    return float(torch.stack(terms).mean())


@pytest.mark.parametrize("retain_loss", ["gd", "kl", "none"])
def test_undial_formula(retain_loss, memorised, tiny_tokenizer):
    beta, gamma, alpha = 3.0, 0.7, 0.4
    method = _method("undial", beta=beta, gamma=gamma, alpha=alpha, retain_loss=retain_loss, ref="copy")
    start = copy.deepcopy(memorised)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _perturb(memorised)
    batch = _unlearn_batch(tiny_tokenizer)
    forget = _undial_hand(memorised, start, batch.forget, beta)
    expected = gamma * forget
    if retain_loss == "gd":
        expected += alpha * _token_ce(memorised, batch.retain)
    elif retain_loss == "kl":
        kl = [float((lr.exp() * (lr - lp)).sum()) for (lp, _, _), (lr, _, _) in
              zip(_positions(memorised, batch.retain), _positions(start, batch.retain), strict=True)]
        expected += alpha * sum(kl) / len(kl)
    out = _loss(method, memorised, batch)
    assert method.uses_retain == (retain_loss != "none")
    assert out.logs["forget_loss"] == pytest.approx(forget, rel=1e-4)
    assert float(out.loss) == pytest.approx(expected, rel=1e-4)


def test_undial_lowers_the_forget_token_and_keeps_the_rest_of_the_teacher(memorised, tiny_tokenizer, tmp_path):
    start = copy.deepcopy(memorised)
    batch = _batch(tiny_tokenizer, FORGET)
    _method("undial", lr=1e-2, epochs=5, batch_size=2, beta=10.0).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    # The forget answers lose probability ...
    assert _mean_nll(memorised, FORGET) > _mean_nll(start, FORGET) + 1.0
    # ... and the student's distribution moves to the adjusted teacher: the distillation loss falls.
    assert _undial_hand(memorised, start, batch, 10.0) < 0.7 * _undial_hand(start, start, batch, 10.0)


# ---- WGA and SatImp ---------------------------------------------------------------------------

_WEIGHTS = {  # name -> the token weight as a function of p, with the test's exponents
    "wga": lambda p: p**0.5,
    "satimp": lambda p: p**2.0 * (1 - p) ** 0.5,
}


@pytest.mark.parametrize("name", list(_WEIGHTS))
def test_weighted_ascent_formula(name, memorised, tiny_tokenizer):
    gamma, alpha = 0.3, 0.6
    exponents = {"beta": 0.5} if name == "wga" else {"beta": 2.0, "beta2": 0.5}
    method = _method(name, gamma=gamma, alpha=alpha, **exponents)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _perturb(memorised)  # away from p ≈ 1, where SatImp's (1 − p) factor would vanish
    batch = _unlearn_batch(tiny_tokenizer, index=(1, 3, 0))
    weight = _WEIGHTS[name]
    terms = [weight(float(lp[y].exp())) * float(lp[y]) for lp, y, _ in _positions(memorised, batch.forget)]
    forget = sum(terms) / len(terms)
    out = _loss(method, memorised, batch)
    assert out.logs["forget_loss"] == pytest.approx(forget, rel=1e-4)
    assert float(out.loss) == pytest.approx(gamma * forget + alpha * _token_ce(memorised, batch.retain), rel=1e-4)


def test_weighted_ascent_gradient_is_the_weighted_ascent(memorised, tiny_tokenizer):
    """The weight is held fixed (stop-gradient): the gradient is Σ w_t ∇log p_t / N, not that of p^β log p."""
    method = _method("wga", beta=2.0, gamma=1.0, retain_loss="none")
    batch = _unlearn_batch(tiny_tokenizer)
    param = memorised.lm_head.weight
    method.compute_loss(memorised, batch).loss.backward()
    got = param.grad.clone()
    param.grad = None
    logits = memorised(input_ids=batch.forget["input_ids"], attention_mask=batch.forget["attention_mask"]).logits
    labels = batch.forget["labels"][:, 1:]
    mask = labels != IGNORE
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][mask]
    (logp.detach().exp() ** 2 * logp).mean().backward()
    assert torch.allclose(got, param.grad, atol=1e-6)


@pytest.mark.parametrize("name", list(_WEIGHTS))
def test_weighted_ascent_raises_the_forget_nll(name, memorised, tiny_tokenizer, tmp_path):
    start_f, start_r = _mean_nll(memorised, FORGET), _mean_nll(memorised, RETAIN)
    extra = {"beta": 1.0} if name == "satimp" else {}  # p^5 of a memorised token is too small for 4 steps
    _method(name, lr=1e-2, epochs=3, batch_size=2, **extra).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    rise_f = _mean_nll(memorised, FORGET) - start_f
    assert rise_f > 1.0 and rise_f > 2 * (_mean_nll(memorised, RETAIN) - start_r)


# ---- CE-U -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2])
def test_ceu_formula(n, memorised, tiny_tokenizer):
    method = _method("ceu", ignore_first_n=n, alpha=0.5)
    batch = _unlearn_batch(tiny_tokenizer, index=(3, 1))
    terms, seen = [], {}
    for (lp, y, b), z in zip(_positions(memorised, batch.forget), _logits_at(memorised, batch.forget), strict=True):
        seen[b] = seen.get(b, 0) + 1
        if seen[b] <= n:  # the first n answer tokens of each row are left out
            continue
        q = torch.softmax(torch.cat([z[:y], torch.tensor([-math.inf], dtype=z.dtype), z[y + 1:]]), -1)
        terms.append(float(-(q * lp).sum()))
    forget = sum(terms) / len(terms)
    out = _loss(method, memorised, batch)
    assert out.logs["forget_loss"] == pytest.approx(forget, rel=1e-4)
    assert float(out.loss) == pytest.approx(forget + 0.5 * _token_ce(memorised, batch.retain), rel=1e-4)


def test_ceu_without_retain_term_needs_no_retain_data(memorised, tiny_tokenizer, tmp_path):
    method = _method("ceu", lr=1e-2, epochs=1, batch_size=2, retain_loss="none")
    assert not method.uses_retain
    summary = method.unlearn(memorised, tiny_tokenizer, FORGET, [], tmp_path, progress=False)
    assert summary["steps"] == 2 and "retain_nll" not in summary["final"]


def test_ceu_raises_the_forget_nll(memorised, tiny_tokenizer, tmp_path):
    start = _mean_nll(memorised, FORGET)
    _method("ceu", lr=1e-2, epochs=3, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _mean_nll(memorised, FORGET) > start + 1.0


# ---- PDU --------------------------------------------------------------------------------------


def _margin(model, batch) -> float:
    """Mean over answer positions of (max logit − mean logit)²."""
    terms = [float((z.max() - z.mean()) ** 2) for z in _logits_at(model, batch)]
    return sum(terms) / len(terms)


def test_pdu_formula_and_dual_ascent(memorised, tiny_tokenizer):
    gamma, lam, eps, eta = 0.5, 3.0, 0.01, 2.0
    method = _method("pdu", gamma=gamma, alpha=lam, retain_eps=eps, dual_step=eta, dual_warmup_epochs=1,
                     batch_size=2)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)  # 4 forget items: 2 micro-batches per epoch
    _perturb(memorised)
    batch = _unlearn_batch(tiny_tokenizer)
    margin, retain = _margin(memorised, batch.forget), _token_ce(memorised, batch.retain)
    assert retain > eps
    for step in range(4):  # λ is still during the warm-up epoch, then moves by η·(R − ε) per micro-batch
        out = _loss(method, memorised, batch)
        assert out.logs["dual"] == pytest.approx(lam)
        assert out.logs["forget_loss"] == pytest.approx(margin, rel=1e-4)
        assert float(out.loss) == pytest.approx(gamma * margin + lam * (retain - eps), rel=1e-4)
        if step >= 2:  # micro-batches 0 and 1 are the warm-up epoch
            lam = lam + eta * (retain - eps)
        assert method.dual == pytest.approx(lam, rel=1e-5)


def test_pdu_dual_stays_at_zero_or_above_and_fixed_without_primal_dual(memorised, tiny_tokenizer):
    batch = _unlearn_batch(tiny_tokenizer)
    loose = _method("pdu", alpha=0.1, retain_eps=100.0, dual_warmup_epochs=0)  # constraint holds: λ falls to 0
    loose.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _loss(loose, memorised, batch)
    assert loose.dual == 0.0
    fixed = _method("pdu", alpha=2.0, dual_warmup_epochs=0, primal_dual=False)
    fixed.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _loss(fixed, memorised, batch)
    assert fixed.dual == 2.0


def test_pdu_flattens_the_forget_logits_and_holds_the_retain_loss(memorised, tiny_tokenizer, tmp_path):
    forget, retain = _batch(tiny_tokenizer, FORGET), _batch(tiny_tokenizer, RETAIN)
    start_margin = _margin(memorised, forget)
    method = _method("pdu", lr=1e-2, epochs=6, batch_size=2, retain_eps=0.2, dual_warmup_epochs=1)
    method.unlearn(memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _margin(memorised, forget) < 0.2 * start_margin
    assert _token_ce(memorised, retain) < 2 * 0.2


# ---- AltPO ------------------------------------------------------------------------------------


def _seq_logp(model, batch) -> torch.Tensor:
    rows = {}
    for lp, y, b in _positions(model, batch):
        rows[b] = rows.get(b, 0.0) + float(lp[y])
    return torch.tensor([rows[b] for b in sorted(rows)], dtype=torch.float64)


@pytest.mark.parametrize("ref", ["precompute", "copy"])
def test_altpo_formula(ref, memorised, tiny_tokenizer):
    beta, alpha, k = 0.5, 0.3, 3
    method = _method("altpo", beta=beta, alpha=alpha, n_alternates=k, ref=ref)
    start = copy.deepcopy(memorised)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _perturb(memorised)
    index = (2, 0)
    batch = _unlearn_batch(tiny_tokenizer, index)
    lose = _seq_logp(memorised, batch.forget) - _seq_logp(start, batch.forget)
    terms = []
    for j in range(k):
        win_batch = _batch(tiny_tokenizer, [FORGET[i] for i in index], [method.alternates.answers[j][i] for i in index])
        win = _seq_logp(memorised, win_batch) - _seq_logp(start, win_batch)
        terms.append(-(2 / beta) * torch.nn.functional.logsigmoid(beta * (win - lose)))
    forget = float(torch.stack(terms).mean())
    out = _loss(method, memorised, batch)
    assert out.logs["forget_loss"] == pytest.approx(forget, rel=1e-4)
    assert float(out.loss) == pytest.approx(forget + alpha * _token_ce(memorised, batch.retain), rel=1e-4)


def test_altpo_pool_alternates_are_other_answers_to_the_same_attribute():
    from obliviate.methods.altpo import perturbed_alternates, pool_alternates

    def item(q, a, attr, perturbed=()):
        return QAItem(q, a, perturbed_answers=list(perturbed), meta={"attribute": attr})

    forget = [item("Where was A born?", "Oslo", "city"), item("What does A do?", "baker", "job")]
    retain = [item("Where was B born?", "Rome", "city"), item("Where was C born?", "Oslo", "city"),
              item("Where was D born?", "Lima", "city"), item("What does B do?", "smith", "job")]
    alts = pool_alternates(forget, retain, 4, seed=0)
    assert all(a in {"Rome", "Lima"} for a in alts[0]) and set(alts[0]) == {"Rome", "Lima"}  # cycles past 2
    assert alts[1] == ["smith"] * 4
    assert pool_alternates(forget, retain, 4, seed=0) == alts  # seeded
    with pytest.raises(ConfigError, match="no perturbed answers"):
        perturbed_alternates(forget, 2, seed=0)
    assert perturbed_alternates([item("q", "a", None, ["x", "y", "z"])], 2, seed=0)[0][0] in {"x", "y", "z"}


def test_altpo_prefers_the_alternates(memorised, tiny_tokenizer, tmp_path):
    method = _method("altpo", lr=1e-2, epochs=3, batch_size=2, n_alternates=2)
    start = copy.deepcopy(memorised)
    method.unlearn(memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    lose = _batch(tiny_tokenizer, FORGET)
    lose_ratio = _seq_logp(memorised, lose) - _seq_logp(start, lose)
    for answers in method.alternates.answers:
        win = _batch(tiny_tokenizer, FORGET, answers)
        assert bool(((_seq_logp(memorised, win) - _seq_logp(start, win)) > lose_ratio + 1.0).all())


# ---- WAGLE ------------------------------------------------------------------------------------


def _hand_grads(model, tok, items, batch_size):
    """Σ over mini-batches of ∇ (batch cross-entropy over answer tokens), by name."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for start in range(0, len(items), batch_size):
        batch = _batch(tok, items[start:start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                                 ignore_index=IGNORE)
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            total[n] += g
    return total


def test_wagle_mask_is_the_top_share_of_the_attribution_score(memorised, tiny_tokenizer):
    import random

    gamma, ratio, bs = 0.05, 0.3, 2
    method = _method("wagle", base="graddiff", base_args=f"batch_size={bs}", mask_ratio=ratio, hessian_gamma=gamma)
    mask = method.compute_mask(memorised, tiny_tokenizer, FORGET, RETAIN)
    g_f = _hand_grads(memorised, tiny_tokenizer, FORGET, bs)
    g_r = _hand_grads(memorised, tiny_tokenizer, random.Random(0).sample(RETAIN, 3), bs)  # min(4, 3) retain items
    params = dict(memorised.named_parameters())
    score = torch.cat([((params[n].detach() - g_r[n] / gamma) * g_f[n]).abs().flatten() for n in g_f])
    chosen = torch.cat([mask[n].flatten() for n in g_f])
    assert int(chosen.sum()) == round(ratio * score.numel())
    # every selected entry scores at least as high as every unselected one (up to float rounding)
    assert float(score[chosen].min()) >= float(score[~chosen].max()) * (1 - 1e-4)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_wagle_trains_exactly_the_selected_entries(weight_decay, memorised, tiny_tokenizer, tmp_path):
    before = {n: p.detach().clone() for n, p in memorised.named_parameters()}
    method = _method("wagle", base="graddiff", mask_ratio=0.3,
                     base_args=f"lr=1e-2,epochs=2,batch_size=2,weight_decay={weight_decay}")
    summary = method.unlearn(memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) == 4 and all(math.isfinite(r["loss"]) and "forget_nll" in r for r in logs)
    assert summary["base"] == "graddiff" and summary["selected_weights"] == round(0.3 * summary["trainable_weights"])
    moved = 0
    for n, p in memorised.named_parameters():
        changed = p.detach() != before[n]
        assert not bool((changed & ~method.mask[n]).any()), n  # nothing outside the mask moves
        moved += int(changed.sum())
        assert p.requires_grad, n  # frozen parameters are unfrozen again
    assert moved > 0.9 * summary["selected_weights"]
    assert not (tmp_path / "wagle_mask.pt").exists()  # kept only while the run is unfinished


def test_wagle_resume_reuses_the_saved_mask(memorised, tiny_tokenizer, tmp_path):
    from tests.helpers import Killed

    args = "epochs=2,batch_size=2,save_every=1,lr=1e-2"
    method = _method("wagle", base="graddiff", base_args=args, mask_ratio=0.3)
    calls = []

    def dies(model, batch, real=method.base.compute_loss):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real(model, batch)

    method.base.compute_loss = dies
    with pytest.raises(Killed):
        method.unlearn(copy.deepcopy(memorised), tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert (tmp_path / "wagle_mask.pt").exists()
    again = _method("wagle", base="graddiff", base_args=args, mask_ratio=0.3)
    again.compute_mask = None  # a resumed run must not recompute the mask (here from another model)
    _perturb(memorised)
    summary = again.unlearn(memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False, resume=True)
    assert summary["resumed_from"] == 2 and all(torch.equal(again.mask[n], method.mask[n]) for n in method.mask)


def test_wagle_base_checks():
    from obliviate.errors import ConfigError as Error

    method = _method("wagle", base="npo", base_args="beta=0.3, lr=1e-3", seed=4)
    assert (method.base.name, method.base.config.beta, method.base.config.lr, method.base.config.seed) == (
        "npo", 0.3, 1e-3, 4)
    with pytest.raises(Error, match="not a fine-tuning method"):
        _method("wagle", base="eco")
    with pytest.raises(Error, match="unknown method"):
        _method("wagle", base="nope")
    with pytest.raises(Error, match="unknown key 'bta'"):
        _method("wagle", base="npo", base_args="bta=0.3")
    with pytest.raises(Error, match="not key=value"):
        _method("wagle", base="npo", base_args="beta")
