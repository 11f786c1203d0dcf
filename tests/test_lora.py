"""LoRA: only adapter weights train, runs save an adapter (or merged weights) that load back."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.errors import ConfigError
from obliviate.models.loading import save_model
from obliviate.models.lora import apply_lora, parse_lora
from obliviate.runs import load_run_model


def test_parse_lora_and_errors():
    spec = parse_lora("r=4,alpha=8,targets=q_proj+v_proj")
    assert (spec.r, spec.alpha, spec.target_modules()) == (4, 8, ["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match="expected r="):
        parse_lora("rank=4")
    with pytest.raises(ConfigError, match="field 'r' must be int"):
        parse_lora("r=big")


def test_lora_on_model_without_named_modules(tiny_gpt2):
    with pytest.raises(ConfigError, match="targets=q_proj"):
        apply_lora(tiny_gpt2, parse_lora("targets=q_proj"))


@pytest.fixture
def model_dir(tmp_path, tiny_llama, tiny_tokenizer):
    return save_model(tiny_llama, tiny_tokenizer, tmp_path / "base")


@pytest.fixture
def qa_files(tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Where was the author born?", "answer": "She was born in Oslo, Norway."},
        {"question": "What genre does the author write?", "answer": "He writes science fiction and poetry."},
    ]))
    retain = tmp_path / "retain.jsonl"
    retain.write_text(json.dumps({"question": "What is the capital of France?",
                                  "answer": "The capital of France is Paris."}) + "\n")
    return str(forget), str(retain)


@pytest.mark.parametrize("merge", [False, True])
def test_lora_run_saves_and_reloads(model_dir, qa_files, tmp_path, merge):
    from obliviate.workflow import run_unlearn

    out = tmp_path / f"run-{merge}"
    run_unlearn("graddiff", str(model_dir), out, *qa_files, overrides=["lr=1e-2", "epochs=2"],
                progress=False, lora="r=4,alpha=8", merge=merge)
    artifact = json.loads((out / "artifact.json").read_text())
    assert artifact["kind"] == ("weights" if merge else "adapter")
    model, _ = load_run_model(out)
    base, _ = load_run_model_base(model_dir)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)  # the adapter changed the outputs
    if not merge:
        # Only adapter weights were trained: the base weights inside the peft model are the original ones.
        base_sd = base.state_dict()
        for name, p in model.named_parameters():
            if "lora_" not in name:
                key = name.replace("base_model.model.", "").replace(".base_layer", "")
                assert torch.equal(p, base_sd[key]), name


def load_run_model_base(path):
    from obliviate.models.loading import load_model

    return load_model(path)
