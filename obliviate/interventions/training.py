"""A small optimisation loop for intervention parameters (SPUL's soft prompt).

The shared fine-tuning loop (`obliviate.train.loop`) draws QA forget/retain batches of a fixed
format. SPUL instead trains on one shuffled pool of forget and retain examples, in its own label
format, with a cosine schedule, so it gets this loop: AdamW, warm-up then cosine decay, gradient
clipping, one `train_log.jsonl` row per step, and checkpoints with exact resume (the data order is
a pure function of the seed, so a resumed run skips the steps already taken and restores the
parameters, optimiser, scheduler and RNG states, CPU and CUDA). As in the shared loop: weight decay
applies to matrices only, a NaN or infinite gradient stops the run, the train log is cut back to
the checkpoint's step on resume, and a checkpoint written with another config is refused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from obliviate import tracking
from obliviate.errors import ObliviateError
from obliviate.io import atomic_open, read_json, stable_hash, write_json
from obliviate.progress import make_progress
from obliviate.train.loop import CHECKPOINT, DivergenceError, _grad_norm, _rng_state, _truncate_log

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def _config_hash(cfg, name: str) -> str:
    return stable_hash({"method": name, "config": cfg.model_dump(mode="json")})


def _save(out_dir: Path, params: Sequence[torch.Tensor], optimizer, scheduler, step: int, config_hash: str) -> None:
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), **_rng_state()}
    with atomic_open(tmp / "state.pt", "wb") as handle:
        torch.save(state, handle)
    write_json(tmp / "progress.json", {"step": step, "config_hash": config_hash})
    final = out_dir / CHECKPOINT
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _load(out_dir: Path, params: Sequence[torch.Tensor], optimizer, scheduler, config_hash: str) -> int:
    ckpt = out_dir / CHECKPOINT
    if not (ckpt / "progress.json").exists():
        return 0
    saved = read_json(ckpt / "progress.json").get("config_hash")
    if saved is not None and saved != config_hash:
        raise ObliviateError(f"the checkpoint in {ckpt} was written with another config; resume with the same "
                             "settings, or start over without --resume")
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    with torch.no_grad():
        for p, saved in zip(params, state["params"], strict=True):
            p.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(read_json(ckpt / "progress.json")["step"])


def train_parameters(params: Sequence[torch.Tensor], n_examples: int, step_fn: StepFn, cfg, out_dir: Path,
                     name: str, progress: bool = True, resume: bool = False) -> dict:
    """Minimise `step_fn(batch_indices)` over shuffled batches of `n_examples`; return a summary.

    `cfg` provides lr, weight_decay, warmup_ratio, epochs, max_steps, batch_size, max_grad_norm,
    save_every and seed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps else per_epoch * cfg.epochs
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    config_hash = _config_hash(cfg, name)
    start = _load(out_dir, params, optimizer, scheduler, config_hash) if resume else 0
    log_path = out_dir / "train_log.jsonl"
    if log_path.exists():
        if resume:
            _truncate_log(log_path, start)
        else:
            log_path.unlink()
    step, last, t0 = 0, {}, time.perf_counter()
    who = f"{out_dir.name} · {name}"  # the run's name on the bar
    bar = make_progress(TextColumn(f"[bold]{escape(who)}[/]"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} steps"), TextColumn("{task.fields[loss]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, label=who)
    with bar:
        task = bar.add_task("train", total=total, completed=start, loss="")
        while step < total:
            order = torch.randperm(n_examples, generator=generator)
            for s in range(0, n_examples, cfg.batch_size):
                if step >= total:
                    break
                step += 1
                if step <= start:
                    continue  # replaying the data order up to the checkpoint
                loss, logs = step_fn(order[s : s + cfg.batch_size])
                if not torch.isfinite(loss):
                    raise DivergenceError(f"{name}: loss is {loss.item()} at step {step}; lower the learning rate "
                                          f"(lr={cfg.lr})")
                loss.backward()
                norm = _grad_norm(list(params))
                if not math.isfinite(norm):
                    raise DivergenceError(f"{name}: gradient norm is {norm} at step {step}; lower the learning "
                                          f"rate (lr={cfg.lr})")
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                last = {"step": step, "loss": float(loss.detach()), **logs}
                with open(log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(last) + "\n")
                tracking.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=step)
                bar.update(task, completed=step, loss=f"loss {last['loss']:.3f}")
                if cfg.save_every and step % cfg.save_every == 0 and step < total:
                    _save(out_dir, params, optimizer, scheduler, step, config_hash)
    shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    return {"steps": step, "resumed_from": start, "final": last, "train_seconds": time.perf_counter() - t0}
