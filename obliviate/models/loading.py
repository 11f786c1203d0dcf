"""Loading and saving causal language models: a hub name or a local directory -> (model, tokenizer).

Defaults: the fastest device available (cuda > mps > cpu); bfloat16 on GPUs that support it, otherwise
float16 on cuda and float32 elsewhere. Loaded models are in eval mode and always have a pad
token, so batched scoring and generation never have to special-case it.

Remote code runs only when asked for: every load passes `trust_remote_code` explicitly (False unless
`trust_remote_code=True` is given, or `allow_remote_code(True)` was called: the CLI's
`--trust-remote-code`), so transformers never asks on stdin, and a local model directory holding
custom code is refused, by name, before anything in it is read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import dir_mode

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; anything else must name a device torch knows."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """"auto" -> bfloat16 on cuda when supported, else float16 on cuda, float32 on cpu/mps."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = resolve_device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16"
        ) from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.load'ed weights: pickles
_remote_code = False  # the process-wide default of `load_model(trust_remote_code=None)`


def allow_remote_code(allow: bool) -> None:
    """Let model directories' own Python run on load (the CLI's `--trust-remote-code`), or not."""
    global _remote_code
    _remote_code = bool(allow)


def remote_code_allowed() -> bool:
    """Whether `allow_remote_code(True)` was called (the CLI's `--trust-remote-code`)."""
    return _remote_code


def custom_code(path: Path) -> str | None:
    """What in the local model directory `path` is custom code (a .py file, an `auto_map`), or None."""
    scripts = sorted(p.name for p in path.glob("*.py"))
    if scripts:
        return scripts[0]
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return f"the auto_map in {name}"
    return None


def _looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id (a hub id is "name" or "org/name")."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name


def ensure_pad_token(model, tokenizer) -> None:
    """Give the tokenizer a pad token (eos, else a new `<pad>`) and tell the model its id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Silence the progress bars of `save_pretrained` / `from_pretrained` (tiny models load instantly)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _from_pretrained(loader, name: str, local: bool, **kwargs):
    """Local files (a directory or the hub cache) first; the network only when they are missing."""
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        if local:
            raise
        return loader.from_pretrained(name, **kwargs)


def load_model(
    name_or_path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool | None = None,
):
    """(model, tokenizer) from a hub name or a local directory, in eval mode, with a pad token.

    `trust_remote_code` None takes the process-wide setting (`allow_remote_code`, off by default).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    path = Path(name).expanduser()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    # Always passed, so that transformers never prompts on stdin (nor runs code on a piped "y").
    trust = _remote_code if trust_remote_code is None else bool(trust_remote_code)
    common = {"trust_remote_code": trust}
    model_kwargs = {"dtype": torch_dtype, **common}
    if dev.type != "cpu":
        model_kwargs["device_map"] = {"": dev}  # load straight onto the accelerator
    local = path.exists()
    if local:
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ObliviateError(f"{path}: not a model directory (no config.json)")
        name = str(path)
        code = custom_code(path) if not trust else None
        if code is not None:
            raise ObliviateError(f"{path}: the model directory holds custom code ({code}); it is not run "
                                 "unless you pass --trust-remote-code")
        if any(path.glob("*.safetensors")):
            model_kwargs["use_safetensors"] = True
        else:
            pickles = sorted(p.name for ext in PICKLE_SUFFIXES for p in path.glob(f"*{ext}"))
            if pickles:
                raise ObliviateError(f"{path}: the weights are a pickle ({pickles[0]}), which can run code when "
                                     "read; convert them to safetensors (model.save_pretrained(dir)) and load that")
    elif _looks_local(name):
        raise ObliviateError(f"{name}: model directory not found")
    try:
        config = _from_pretrained(AutoConfig, name, local, **common)  # fails fast, before any weights
        tokenizer = _from_pretrained(AutoTokenizer, name, local, **common)
        model = _from_pretrained(AutoModelForCausalLM, name, local, config=config, **model_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        where = "" if local else " (not a local directory, and not loadable from the Hugging Face hub)"
        raise ObliviateError(f"cannot load model {name!r}{where}: {_one_line(exc)}") from None
    if "device_map" not in model_kwargs:
        model.to(dev)
    model.eval()
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


_HUB_CACHE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")


def hub_name(spec: str | Path, loaded_from: str | Path | None = None) -> str:
    """The name to record for a base model: the hub name when it came from the hub, else the local path.

    `spec` is what the user named; `loaded_from` is the model's `name_or_path` after loading, which for
    a hub model may be its snapshot in the local cache (`.../models--ORG--NAME/snapshots/SHA`).
    """
    for text in (str(loaded_from or ""), str(spec)):
        match = _HUB_CACHE.search(text.replace("\\", "/"))
        if match:
            return f"{match['org']}/{match['name']}"
    name = str(spec)
    if not Path(name).expanduser().exists() and not _looks_local(name) and ":" not in name:
        return name  # a hub name, as the user gave it
    return str(loaded_from or spec)


def check_finite(model: torch.nn.Module, out: str | Path) -> None:
    """Refuse to save a model any of whose parameters holds a NaN or an infinity (a diverged run)."""
    params = list(model.named_parameters())
    bad = [name for name, p in params if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise ObliviateError(f"{out}: {len(bad)} of {len(params)} weight tensors hold NaN or inf (e.g. {bad[0]}); "
                             "the model diverged and is not saved; lower the learning rate")


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save weights (safetensors), config and tokenizer so that `load_model(out_dir)` restores them.

    Everything is written into a temporary sibling directory first, then renamed into place, so
    `out_dir` is never seen half-written, and every file is fsynced before the rename, so the weights
    are durable once it returns. An existing `out_dir` is replaced. A model with a NaN or
    infinite weight is refused (`check_finite`), so a diverged run never leaves weights behind.
    """
    out = Path(out_dir)
    check_finite(model, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp's 0700 would hide the weights from the rest of a shared group
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)  # durable before it is renamed into place (a checkpoint may be dropped next)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then the directories holding them."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in root.rglob("*") if p.is_dir()), root]:
        _fsync_dir(path)
