"""Defaults by scale (paper for real models, world for the built-in world) and safe precision."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.methods import METHODS, get_method
from obliviate.methods.defaults import TOFU_FINETUNE, paper_values, resolve_mode
from tests.conftest import make_tiny_llama
from tests.helpers import FORGET, RETAIN, run_cli


def test_every_fine_tuning_method_declares_paper_defaults_different_from_the_worlds():
    for name, cls in METHODS.items():
        if cls.family != "fine-tuning" or name == "wagle":  # wagle takes its base method's defaults
            continue
        paper = paper_values(cls)
        assert paper.get("lr", 1.0) <= 1e-4, name  # the papers' learning rates, not the world's
        world = cls.Config()
        assert any(getattr(world, k) != v for k, v in paper.items()), name
    assert paper_values(get_method("npo"))["epochs"] == 10 and paper_values(get_method("ga")) == TOFU_FINETUNE


def test_auto_means_world_for_world_models_and_paper_for_the_rest(tmp_path):
    assert resolve_mode("auto", "world:small") == "world"
    assert resolve_mode("auto", "HuggingFaceTB/SmolLM2-135M-Instruct") == "paper"
    assert resolve_mode("auto", str(tmp_path)) == "paper"
    assert resolve_mode("world", "./my-model") == "world"


def _model_dir(tmp_path, tiny_tokenizer):
    from obliviate.models.loading import save_model

    save_model(make_tiny_llama(), tiny_tokenizer, tmp_path / "model")
    for name, items in (("forget", FORGET), ("retain", RETAIN)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    return tmp_path / "model"


def test_unlearn_on_a_model_directory_prints_and_records_paper_defaults(tmp_path, tiny_tokenizer, monkeypatch,
                                                                       capsys):
    model = _model_dir(tmp_path, tiny_tokenizer)
    args = ["unlearn", "--method", "npo", "--model", str(model), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--set", "max_steps=1"]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "paper")], monkeypatch, capsys)
    assert code == 0, err
    assert "defaults: paper (lr 1e-05, epochs 10)" in out and "max_steps None (paper 150)" not in out
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["defaults"] == "paper" and config["method_config"]["lr"] == 1e-5
    assert config["method_config"]["grad_accum"] == 4 and config["differs_from_paper"] == {}
    code, out, err = run_cli([*args, "--out", str(tmp_path / "world"), "--defaults", "world"], monkeypatch, capsys)
    assert code == 0 and "defaults: world" in out and "lr 0.00025 (paper 1e-05)" in out
    assert json.loads((tmp_path / "world" / "config.json").read_text())["method_config"]["lr"] == 2.5e-4


@pytest.mark.slow
def test_a_world_model_gets_world_defaults(tmp_path, monkeypatch, capsys, world_home):
    code, out, err = run_cli(["unlearn", "--method", "npo", "--model", "world:tiny", "--out", str(tmp_path / "r"),
                              "--set", "max_steps=1"], monkeypatch, capsys)
    assert code == 0, err
    assert "defaults: world" in out and "lr 0.00025 (paper 1e-05)" in out


def _train(dtype: torch.dtype, tiny_tokenizer, tmp_path, steps: int = 2):
    from obliviate.methods.graddiff import GradDiff, GradDiffConfig

    model = make_tiny_llama().to(dtype)
    before = {k: v.detach().float().clone() for k, v in model.named_parameters()}
    GradDiff(GradDiffConfig(lr=1e-5, max_steps=steps, batch_size=2)).unlearn(
        model, tiny_tokenizer, FORGET, RETAIN, tmp_path / str(dtype), progress=False)
    after = dict(model.named_parameters())
    changed = sum(int((after[k].detach().float() != v).sum()) for k, v in before.items())
    return model, changed / sum(v.numel() for v in before.values())


def test_float16_weights_do_not_overflow_at_the_first_step(tiny_tokenizer, tmp_path):
    model, changed = _train(torch.float16, tiny_tokenizer, tmp_path, steps=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert changed > 0.5
    assert next(model.parameters()).dtype == torch.float32  # the float32 master weights are the result


def test_bfloat16_weights_move_as_float32_weights_do_at_the_papers_learning_rate(tiny_tokenizer, tmp_path):
    _, changed_bf16 = _train(torch.bfloat16, tiny_tokenizer, tmp_path)
    _, changed_fp32 = _train(torch.float32, tiny_tokenizer, tmp_path)
    assert changed_fp32 > 0.5 and changed_bf16 > 0.9 * changed_fp32  # plain bf16 AdamW: about 2% move
