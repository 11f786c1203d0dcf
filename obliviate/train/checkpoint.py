"""Checkpoints of the fine-tuning loop, kept like a journal: written whole, found again after any kill.

A checkpoint is written into `.checkpoint.tmp` and renamed over `checkpoint` (the old one moved to
`.checkpoint.old` meanwhile), so a kill at any point leaves one complete checkpoint that
`recover_checkpoint` finds. It holds the model, optimiser, scheduler and RNG states, the step, and the
hash of the method's config, so a resume with another config is refused by name. The last checkpoint
is dropped only once the final weights are durable (`drop_checkpoint`), and the train log is cut back
to the checkpoint's step on resume (`_truncate_log`), so no step is logged twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from obliviate.errors import DataError, ObliviateError
from obliviate.io import atomic_open, read_json, stable_hash, write_json

CHECKPOINT = "checkpoint"


def config_hash(method) -> str:
    """The hash of the method's name and config a checkpoint records (resume refuses another)."""
    return stable_hash({"method": method.name, "config": method.config.model_dump(mode="json")})


def _rng_state() -> dict[str, Any]:
    state = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _save_checkpoint(out_dir: Path, accelerator, model, optimizer, scheduler, step: int,
                     extra: dict[str, Any]) -> None:
    """Write the checkpoint into a temp dir and rename it over the old one (never half-written)."""
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "model": accelerator.unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **_rng_state(),
    }
    with atomic_open(tmp / "state.pt", "wb") as handle:
        torch.save(state, handle)
    write_json(tmp / "progress.json", {"step": step, **extra})
    final = out_dir / CHECKPOINT
    old = out_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _complete(path: Path) -> bool:
    """A checkpoint directory whose writing finished (progress.json is written last)."""
    return (path / "progress.json").is_file() and (path / "state.pt").is_file()


def recover_checkpoint(out_dir: Path) -> Path | None:
    """After a crash, the newest complete checkpoint in `out_dir/checkpoint` (None when there is none).

    A kill between `_save_checkpoint`'s renames leaves the newer checkpoint in `.checkpoint.tmp` and
    the older in `.checkpoint.old`; the newest complete one is moved back to `checkpoint`, and the
    incomplete or superseded ones are deleted.
    """
    final, tmp, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.tmp", out_dir / f".{CHECKPOINT}.old"
    if not _complete(final):
        for candidate in (tmp, old):  # .tmp is the newer of the two
            if _complete(candidate):
                shutil.rmtree(final, ignore_errors=True)
                candidate.rename(final)
                break
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final if _complete(final) else None


def drop_checkpoint(out_dir: Path) -> None:
    """Delete the run's checkpoints; call it only once the final weights are durable."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.tmp", f".{CHECKPOINT}.old"):
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)


def _config_record(method) -> dict[str, Any]:
    return {"method": method.name, **method.config.model_dump(mode="json")}


def _check_same_config(method, progress: dict[str, Any], ckpt: Path) -> None:
    """Refuse a checkpoint written with another config, naming the fields that differ."""
    if getattr(method, "force_resume", False):
        return
    advice = "resume with the same settings, --force to resume with the new ones, or start over without --resume"
    saved = progress.get("config")
    if saved is None:  # an older checkpoint: only the hash is known
        if progress.get("config_hash") not in (None, config_hash(method)):
            raise ObliviateError(f"{ckpt}: the checkpoint was written with another config; {advice}")
        return
    now = _config_record(method)
    fields = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    if fields:
        what = ", ".join(f"{k} ({saved.get(k)!r} in the checkpoint, {now.get(k)!r} now)" for k in fields)
        raise ObliviateError(f"{ckpt}: the checkpoint was written with another config: {what}; {advice}")


def _load_checkpoint(out_dir: Path, accelerator, model, optimizer, scheduler, method) -> dict[str, Any]:
    """Restore the checkpoint's states; its progress.json ({"step": 0} without a checkpoint)."""
    ckpt = recover_checkpoint(out_dir)
    if ckpt is None:
        return {"step": 0}
    progress = read_json(ckpt / "progress.json")
    _check_same_config(method, progress, ckpt)
    try:
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ObliviateError(f"{ckpt / 'state.pt'}: the checkpoint is damaged ({str(exc).splitlines()[0]}); delete "
                             f"{ckpt} to start over") from None
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if progress.get("method_state") is not None:
        method.load_state_dict(progress["method_state"])
    return progress


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step` (those a resumed run does not redo)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the line a kill tore in half
            raise DataError(path, "not valid JSON; the train log looks damaged: start over without --resume",
                            number) from None
        if row.get("step", 0) <= step:
            kept.append(line)
    lines = kept
    with atomic_open(path, "w") as handle:
        handle.writelines(line + "\n" for line in lines)
