"""The retain term options of GradDiff, SimNPO and IdkDPO, and IdkDPO's alternate answers, on a tiny Llama.

(a) With the default `retain_loss=gd` each loss equals the formula it had before the option existed,
written here from the primitives (the old code's expressions); (b) with `retain_loss=kl` the retain
term is KL(π_ref ‖ π_θ) to the frozen starting model: zero before any update, positive after one, and
equal to a hand computation over the retain answer positions; (c) `preferred=alternate` prefers one
of the item's alternates, from the chosen source, and training moves probability towards them.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from obliviate.config import build_config
from obliviate.data.refusals import REFUSALS
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods import METHODS
from obliviate.train.data import IGNORE, UnlearnBatch, collate, encode_items
from obliviate.train.losses import answer_nll, ce_loss
from tests.conftest import make_tiny_llama
from tests.helpers import FORGET, memorised_weights

RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris."),
    QAItem("Who met in London?", "Alice and Bob met in London."),
    QAItem("How did they travel?", "They travelled to Rome, Berlin and Madrid by train."),
]
THREE = ["graddiff", "simnpo", "idk_dpo"]


def _batch(tok, items, answers=None):
    enc, _ = encode_items(tok, items, answers=answers)
    return collate(enc, tok.pad_token_id)


@pytest.fixture(scope="module")
def memorised_state():
    """A tiny Llama fine-tuned until it knows the forget and retain answers."""
    return memorised_weights(FORGET + RETAIN)


@pytest.fixture
def memorised(memorised_state):
    model = make_tiny_llama()
    model.load_state_dict(memorised_state)
    return model.eval()


def _method(name, **values):
    cls = METHODS[name]
    return cls(build_config(cls.Config, values))


def _unlearn_batch(tok, index=(2, 0)):
    return UnlearnBatch(_batch(tok, [FORGET[i] for i in index]), _batch(tok, RETAIN[:2]), torch.tensor(index))


def _perturb(model, seed=1, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _seq_logp(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return -answer_nll(model, batch, reduction="sum")


def _hand_kl(model, start, batch) -> float:
    """Mean over retain answer positions of Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)), float64."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        ref = start(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels, terms = batch["labels"], []
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                lp, lr = torch.log_softmax(logits[b, t - 1], -1), torch.log_softmax(ref[b, t - 1], -1)
                terms.append(float((lr.exp() * (lr - lp)).sum()))
    return sum(terms) / len(terms)


def _old_loss(name, method, model, start, batch, tok) -> float:
    """The loss each method computed before `retain_loss` existed (its old expressions)."""
    cfg = method.config
    with torch.no_grad():
        if name == "graddiff":
            return float(-answer_nll(model, batch.forget).mean() + cfg.alpha * answer_nll(model, batch.retain).mean())
        if name == "simnpo":
            nll = answer_nll(model, batch.forget)
            forget = -(2.0 / cfg.beta) * F.logsigmoid(cfg.beta * (nll - cfg.gamma)).mean()
            return float(cfg.npo_coeff * forget + cfg.gd_coeff * ce_loss(model, batch.retain))
        index = [int(i) for i in batch.forget_index]
        win = _batch(tok, [FORGET[i] for i in index], [REFUSALS[j] for j in method.preferred.last])
        margin = (_seq_logp(model, win) - _seq_logp(start, win)) - (
            _seq_logp(model, batch.forget) - _seq_logp(start, batch.forget))
        forget = -(2.0 / cfg.beta) * F.logsigmoid(cfg.beta * margin).mean()
        return float(forget + cfg.alpha * ce_loss(model, batch.retain))


@pytest.mark.parametrize("name", THREE)
def test_default_retain_term_gives_the_old_loss(name, memorised, tiny_tokenizer):
    method = _method(name, alpha=0.7) if name != "simnpo" else _method(name, gd_coeff=0.7)
    assert method.config.retain_loss == "gd" and method.uses_retain
    start = copy.deepcopy(memorised)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    _perturb(memorised)
    batch = _unlearn_batch(tiny_tokenizer)
    with torch.no_grad():
        torch.manual_seed(3)
        out = method.compute_loss(memorised, batch)
    assert "retain_nll" in out.logs and "retain_kl" not in out.logs
    assert float(out.loss) == pytest.approx(_old_loss(name, method, memorised, start, batch, tiny_tokenizer), rel=1e-5)


def _forget_part(method, model, batch) -> float:
    """The loss with the retain term switched off, on the same draw of preferred answers."""
    off = copy.copy(method)
    off.config = method.config.model_copy(update={"retain_loss": "none"})
    with torch.no_grad():
        torch.manual_seed(3)
        return float(off.compute_loss(model, batch).loss)


@pytest.mark.parametrize("name", THREE)
def test_kl_retain_term_is_the_kl_to_the_starting_model(name, memorised, tiny_tokenizer):
    weight = {"gd_coeff": 0.6} if name == "simnpo" else {"alpha": 0.6}
    method = _method(name, retain_loss="kl", ref="copy", **weight)
    start = copy.deepcopy(memorised)
    method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)
    batch = _unlearn_batch(tiny_tokenizer)
    with torch.no_grad():
        at_start = method.compute_loss(memorised, batch)
    assert "retain_nll" not in at_start.logs and at_start.logs["retain_kl"] == pytest.approx(0.0, abs=1e-6)

    opt = torch.optim.Adam(memorised.parameters(), lr=1e-2)  # every weight moves by about lr
    memorised.train()
    torch.manual_seed(3)
    method.compute_loss(memorised, batch).loss.backward()
    opt.step()
    memorised.eval()

    torch.manual_seed(3)
    with torch.no_grad():
        out = method.compute_loss(memorised, batch)
    kl = _hand_kl(memorised, start, batch.retain)
    assert kl > 1e-4
    assert out.logs["retain_kl"] == pytest.approx(kl, rel=1e-4)
    assert float(out.loss) == pytest.approx(_forget_part(method, memorised, batch) + 0.6 * kl, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", THREE)
def test_kl_retain_runs_in_the_loop_and_logs_the_kl(name, memorised, tiny_tokenizer, tmp_path):
    _method(name, retain_loss="kl", lr=1e-2, epochs=2, batch_size=2).unlearn(
        memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == 4 and all("retain_kl" in row and "retain_nll" not in row for row in logs)
    assert logs[0]["retain_kl"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["retain_kl"] > 0


@pytest.mark.parametrize("name", THREE)
def test_no_retain_term_reads_no_retain_data(name):
    off = {"gd_coeff": 0.0} if name == "simnpo" else {"retain_loss": "none"}
    assert not _method(name, **off).uses_retain and _method(name).uses_retain


# ---- IdkDPO with alternate answers ------------------------------------------------------------


def _with_alternates(items, alternates):
    return [QAItem(it.question, it.answer, meta={"alternate": alts})
            for it, alts in zip(items, alternates, strict=True)]


ALTERNATES = [["She was born in Paris, France.", "She was born in Rome, Italy."],
              "Alice Lind wrote it in 2001.",
              ["He writes poetry and history.", "He writes crime novels."],
              ["It flooded in the winter of 1950.", "It flooded in the summer of 1898."]]


@pytest.mark.parametrize("ref", ["precompute", "copy"])
def test_idk_dpo_alternate_prefers_one_of_the_items_alternates(ref, memorised, tiny_tokenizer):
    forget = _with_alternates(FORGET, ALTERNATES)
    method = _method("idk_dpo", preferred="alternate", alternates="column", n_alternates=2, beta=0.5, ref=ref)
    start = copy.deepcopy(memorised)
    method.setup(memorised, tiny_tokenizer, forget, RETAIN)
    _perturb(memorised)
    index = (2, 0, 3, 1)
    batch = UnlearnBatch(_batch(tiny_tokenizer, [forget[i] for i in index]), _batch(tiny_tokenizer, RETAIN[:2]),
                         torch.tensor(index))
    drawn = set()
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = method.compute_loss(memorised, batch)
        answers = [method.preferred.batches.answers[j][i] for i, j in zip(index, method.preferred.last, strict=True)]
        for i, a in zip(index, answers, strict=True):
            assert a in (ALTERNATES[i] if isinstance(ALTERNATES[i], list) else [ALTERNATES[i]])
        drawn.update(answers)
        win = _batch(tiny_tokenizer, [forget[i] for i in index], answers)
        margin = (_seq_logp(memorised, win) - _seq_logp(start, win)) - (
            _seq_logp(memorised, batch.forget) - _seq_logp(start, batch.forget))
        forget_loss = float(-(2 / 0.5) * F.logsigmoid(0.5 * margin).mean())
        assert out.logs["forget_loss"] == pytest.approx(forget_loss, rel=1e-4)
        assert float(out.loss) == pytest.approx(forget_loss + ce_loss(memorised, batch.retain).item(), rel=1e-4)
    assert len(drawn) > 4  # both alternates of the items that have two get drawn


def test_idk_dpo_alternate_moves_probability_to_the_alternates(memorised, tiny_tokenizer, tmp_path):
    method = _method("idk_dpo", preferred="alternate", alternates="pool", n_alternates=1, lr=1e-2, epochs=3,
                     batch_size=2)
    start = copy.deepcopy(memorised)
    method.unlearn(memorised, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    alternates = method.preferred.batches.answers[0]
    assert all(a != it.answer for a, it in zip(alternates, FORGET, strict=True))
    lose, win = _batch(tiny_tokenizer, FORGET), _batch(tiny_tokenizer, FORGET, alternates)
    lose_ratio = _seq_logp(memorised, lose) - _seq_logp(start, lose)
    assert bool(((_seq_logp(memorised, win) - _seq_logp(start, win)) > lose_ratio + 1.0).all())


def test_idk_dpo_with_alternates_is_reported_as_its_labelled_variant():
    from obliviate.methods import get_method, label_for_overrides

    assert get_method("idk_dpo+alt").Config().preferred == "alternate"
    assert label_for_overrides("idk_dpo", ["preferred=alternate"]) == "idk_dpo+alt"
    assert label_for_overrides("idk_dpo", ["retain_loss=kl"]) == "idk_dpo"


def test_idk_dpo_alternate_column_missing_is_a_clear_error(memorised, tiny_tokenizer):
    method = _method("idk_dpo", preferred="alternate", alternates="column", alternate_column="alt")
    with pytest.raises(ConfigError, match=r"forget item 0 .*field 'alt' must be an alternate answer"):
        method.setup(memorised, tiny_tokenizer, FORGET, RETAIN)


def test_graddiff_with_the_kl_retain_term_trains_exactly_as_the_kl_baseline(tiny_tokenizer, tmp_path):
    from tests.helpers import assert_same_parameters

    models = {}
    for name, extra in (("graddiff", {"retain_loss": "kl"}), ("kl", {})):
        models[name] = make_tiny_llama()
        _method(name, lr=1e-2, epochs=2, batch_size=2, ref="copy", **extra).unlearn(
            models[name], tiny_tokenizer, FORGET, RETAIN, tmp_path / name, progress=False)
    assert_same_parameters(models["graddiff"], models["kl"])
    assert not torch.equal(models["kl"].lm_head.weight, make_tiny_llama().lm_head.weight)
