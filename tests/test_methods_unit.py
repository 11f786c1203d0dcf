"""Method interface, the shared loop and the first two methods, on tiny models built in code."""

from __future__ import annotations

import json
import math

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
    # A huge step with a retain weight too small to hold it sends the retain loss up quickly (α = 0 would switch
    # the term off, and with it the retain loss the guard watches).
    cfg = build_config(cls.Config, {"lr": 0.5, "alpha": 1e-9, "batch_size": 2, "epochs": 20,
                                    "retain_rise_limit": 1.5})
    with pytest.raises(DivergenceError, match="retain loss rose"):
        cls(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "rise", progress=False)


def test_papers_names_keep_the_papers_defaults_and_departures_are_labelled_variants():
    from obliviate.grid.leaderboard import display_name
    from obliviate.grid.spec import BenchSpec
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
    spec = BenchSpec(methods=["spul", "icul", "eco", "spul+gate"], splits=["forget01"], seeds=[0],
                     overrides={"spul": ["gate=classifier"], "eco": ["alpha=0.2"], "spul+gate": ["alpha=0.2"]})
    assert display_name(spec, "spul") == "spul+gate" and display_name(spec, "icul") == "icul"
    # Settings that no variant names are shown beside the name, so the row never passes for the defaults.
    assert display_name(spec, "eco") == "eco (alpha=0.2)"
    assert display_name(spec, "spul+gate") == "spul+gate (alpha=0.2)"
    # A setting that every method of the bench was given is the bench's, not one row's.
    everyone = BenchSpec(methods=["ga", "npo"], splits=["forget01"], seeds=[0],
                         overrides={"ga": ["max_steps=2", "lr=1e-4"], "npo": ["max_steps=2"]})
    assert display_name(everyone, "npo") == "npo" and display_name(everyone, "ga") == "ga (lr=1e-4)"


def test_divergence_guard_watches_any_retain_term_and_the_gradients(tiny_llama, tiny_tokenizer, tmp_path):
    from obliviate.train.loop import DivergenceError

    cls = get_method("graddiff")

    class RisingKL(cls):  # logs a KL retain term that starts at 0, as a model equal to its reference does
        calls = 0

        def compute_loss(self, model, batch):
            out = super().compute_loss(model, batch)
            RisingKL.calls += 1
            return type(out)(out.loss, {"forget_nll": 1.0, "retain_kl": [0.0, 0.01, 0.5][min(RisingKL.calls, 3) - 1]})

    cfg = build_config(cls.Config, {"batch_size": 2, "epochs": 5, "retain_rise_limit": 2.0})
    with pytest.raises(DivergenceError, match=r"retain_kl > 2.0× 0.050.*no checkpoint was written"):
        RisingKL(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "kl", progress=False)

    class NanGradient(cls):  # a finite loss whose gradient is NaN: 0 · d√x/dx at x = 0
        def compute_loss(self, model, batch):
            out = super().compute_loss(model, batch)
            x = next(model.parameters()).sum()
            out.loss = out.loss + 0 * torch.sqrt(x - x)
            return out

    with pytest.raises(DivergenceError, match="gradient norm is nan"):
        NanGradient(build_config(cls.Config, {"batch_size": 2})).unlearn(
            tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "grad", progress=False)


def test_resume_keeps_the_guard_baseline_logs_each_step_once_and_refuses_another_config(tiny_tokenizer, tmp_path):
    from obliviate.errors import ObliviateError
    from tests.conftest import make_tiny_llama

    cls = get_method("graddiff")
    cfg = build_config(cls.Config, {"lr": 1e-2, "epochs": 4, "batch_size": 2, "save_every": 3,
                                    "retain_rise_limit": 100.0})
    run = tmp_path / "run"
    from tests.helpers import Killed, dies_at_step

    with pytest.raises(Killed):  # killed at the 6th call, after the checkpoint at step 3
        dies_at_step(cls, 6)(cfg).unlearn(make_tiny_llama(), tiny_tokenizer, FORGET, RETAIN, run, progress=False)
    progress = json.loads((run / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 3 and set(progress["first_retain"]) == {"retain_nll"} and progress["config_hash"]
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # logged up to the crash
    other = build_config(cls.Config, {**cfg.model_dump(), "lr": 2e-2})
    with pytest.raises(ObliviateError, match="another config"):
        cls(other).unlearn(make_tiny_llama(), tiny_tokenizer, FORGET, RETAIN, run, progress=False, resume=True)
    summary = cls(cfg).unlearn(make_tiny_llama(), tiny_tokenizer, FORGET, RETAIN, run, progress=False, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 8 and steps == list(range(1, 9))  # steps 4 and 5, redone, logged once


def test_optimiser_schedule_and_the_last_partial_accumulation_group(tiny_llama, tiny_tokenizer, tmp_path):
    from obliviate.train.loop import param_groups, warmup_steps

    groups = param_groups(tiny_llama, 0.01)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.01
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in tiny_llama.parameters() if p.requires_grad)
    from obliviate.train.loop import build_scheduler

    cls = get_method("ga")
    assert warmup_steps(build_config(cls.Config, {"warmup_epochs": 1.0}), 10, 2.5) == 2  # round(2.5)
    assert warmup_steps(build_config(cls.Config, {"warmup_ratio": 0.3}), 10, 2.5) == 3

    def lrs(schedule: str) -> list[float]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        sched = build_scheduler(opt, build_config(cls.Config, {"schedule": schedule, "warmup_epochs": 1.0}), 6, 2)
        out = []
        for _ in range(6):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 1.0])  # 2 warm-up steps, then flat
    assert lrs("linear") == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])
    assert lrs("cosine")[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    # 4 forget items, batch 1, 3 epochs: 12 micro-batches in groups of 5 -> steps on 5, 5 and the last 2.
    cfg = build_config(cls.Config, {"batch_size": 1, "epochs": 3, "grad_accum": 5, "lr": 1e-3})
    summary = cls(cfg).unlearn(tiny_llama, tiny_tokenizer, FORGET, RETAIN, tmp_path / "acc", progress=False)
    assert summary["steps"] == 3 and (tmp_path / "acc" / "train_log.jsonl").read_text().count("\n") == 3
