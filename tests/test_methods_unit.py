"""Method interface, the shared loop and the first two methods, on tiny models built in code."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.config import build_config, parse_overrides
from obliviate.errors import ConfigError
from obliviate.methods import METHODS, get_method
from obliviate.train.data import encode_items
from obliviate.train.losses import answer_nll
from tests.helpers import FORGET, RETAIN, assert_same_parameters, kill_then_resume


def _forget_nll(model, tok) -> float:
    from obliviate.train.data import collate

    enc, _ = encode_items(tok, FORGET)
    with torch.no_grad():
        return float(answer_nll(model, collate(enc, tok.pad_token_id)).mean())


@pytest.mark.parametrize("name", ["ga", "graddiff"])
def test_loss_logged_and_every_trainable_parameter_changes(name, tiny_llama, tiny_tokenizer, tmp_path):
    cls = get_method(name)
    tiny_llama.model.embed_tokens.weight.requires_grad_(False)  # a frozen parameter must stay put
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    cfg = build_config(cls.Config, {"lr": 1e-2, "epochs": 2, "batch_size": 2})
    summary = cls(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) == 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    for n, p in tiny_llama.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n


@pytest.mark.parametrize("name", ["ga", "graddiff"])
def test_forget_nll_rises(name, tiny_llama, tiny_tokenizer, tmp_path):
    start = _forget_nll(tiny_llama, tiny_tokenizer)
    cls = get_method(name)
    cls(build_config(cls.Config, {"lr": 1e-2, "epochs": 3, "batch_size": 2})).unlearn(
        tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    assert _forget_nll(tiny_llama, tiny_tokenizer) > start + 0.5


def test_resume_matches_uninterrupted_run(tiny_tokenizer, tmp_path):
    from tests.conftest import make_tiny_llama

    cls = get_method("graddiff")
    cfg = build_config(cls.Config, {"lr": 1e-2, "epochs": 4, "batch_size": 2, "save_every": 3})
    full = make_tiny_llama()
    cls(cfg).unlearn(full, tiny_tokenizer, FORGET, RETAIN, tmp_path / "a", progress=False)

    run = tmp_path / "b"
    resumed, summary = kill_then_resume(cls, cfg, make_tiny_llama, tiny_tokenizer, run, kill_at=5, saved_at=3)
    assert summary["resumed_from"] == 3 and summary["steps"] == 8
    assert_same_parameters(full, resumed)
    assert not (run / "checkpoint").exists()


def test_unknown_method_and_key_get_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'graddiff'"):
        get_method("gradiff")
    with pytest.raises(ConfigError, match="unknown key 'alpah'.*did you mean 'alpha'"):
        build_config(METHODS["graddiff"].Config, {"alpah": "2"})
    with pytest.raises(ConfigError, match="field 'lr'"):
        build_config(METHODS["ga"].Config, parse_overrides(["lr=fast"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lr"])


def test_divergence_guard_stops_on_nan_and_retain_rise(tiny_llama, tiny_tokenizer, tmp_path):
    from obliviate.train.loop import DivergenceError

    cls = get_method("graddiff")

    class NanLoss(cls):
        def compute_loss(self, model, batch):
            out = super().compute_loss(model, batch)
            out.loss = out.loss * float("nan")
            return out

    with pytest.raises(DivergenceError, match="loss is nan"):
        NanLoss(build_config(cls.Config, {"batch_size": 2})).unlearn(
            tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "nan", progress=False)
    # A huge step with the retain term switched off sends the retain loss up quickly.
    cfg = build_config(cls.Config, {"lr": 0.5, "alpha": 0.0, "batch_size": 2, "epochs": 20, "retain_rise_limit": 1.5})
    with pytest.raises(DivergenceError, match="retain loss rose"):
        cls(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "rise", progress=False)


def test_papers_names_keep_the_papers_defaults_and_departures_are_labelled_variants():
    from obliviate.bench.leaderboard import display_name
    from obliviate.bench.spec import BenchSpec
    from obliviate.methods import label_for_overrides, method_label

    for name in ("spul", "icul", "prompt"):
        assert get_method(name).Config().gate == "none"  # the papers prepend to every prompt
        variant = get_method(f"{name}+gate")
        assert f"{name}+gate" in METHODS and variant is METHODS[f"{name}+gate"]
        assert variant.name == f"{name}+gate" and variant.variant_of == name and issubclass(variant, get_method(name))
        assert variant.Config().gate == "classifier"
        assert variant.Config.model_fields["gate"].description == get_method(name).Config.model_fields[
            "gate"].description
        # However the gate was set, a run is reported under the variant's name.
        assert label_for_overrides(name, ["gate=classifier"]) == f"{name}+gate"
        assert label_for_overrides(f"{name}+gate", ["gate=none"]) == name
    assert get_method("eco").Config().corrupt_answers and "eco+prompt-only" not in METHODS
    assert get_method("eco+prompt-only").Config().corrupt_answers is False
    assert method_label("eco", {"corrupt_answers": False}) == "eco+prompt-only"
    assert method_label("ga", {"lr": 1.0}) == "ga"
    with pytest.raises(ConfigError, match="did you mean 'spul\\+gate'"):
        get_method("spul+gat")
    spec = BenchSpec(methods=["spul", "icul"], splits=["forget01"], seeds=[0],
                     overrides={"spul": ["gate=classifier"]})
    assert display_name(spec, "spul") == "spul+gate" and display_name(spec, "icul") == "icul"
