"""The one shared fine-tuning loop, built on `accelerate`.

Used by every fine-tuning method: the method supplies `compute_loss(model, batch)`; the loop owns
the optimiser (AdamW), the learning-rate schedule with warm-up, gradient accumulation, clipping,
the divergence guard, progress display, per-step logs and atomic checkpoints with exact resume.

- **Optimiser.** AdamW; weight decay applies to matrices only, not to biases and normalisation
  weights (every 1-D parameter), as the HF Trainer does.
- **Schedule** (`schedule`): `linear` decay, `constant`, or `cosine`, each after a linear warm-up
  of `warmup_epochs` epochs when set, else `warmup_ratio` of the steps.
- **Accumulation.** Each optimiser step averages `grad_accum` micro-batches; when the run's
  micro-batches do not divide evenly, the last step averages the ones left (none is computed and
  thrown away).
- **Two steps per batch.** A method whose `pre_step_loss(model, batch)` returns a loss has the loop
  take an optimiser step on that loss alone before the micro-batch's `compute_loss` (Opt-Out's
  alternate updates, `methods/snap.py`); gradients accumulated for the main step are set aside
  meanwhile.
- **Divergence guard.** A NaN or infinite loss or gradient stops the run, and so do weights holding
  one, checked before each checkpoint and at the end (the weights are never saved). With
  `retain_rise_limit`, so does the method's retain term rising past that factor × its first value:
  the first of `RETAIN_TERMS` the method logs (cross-entropy, KL to the reference, RMU's activation
  distance, ULD's uniform KL). Terms that start at 0 (the KL and distance terms of a model that
  starts as its reference) are measured against at least `RETAIN_FLOOR`. The first value is kept in
  the checkpoint, so a resumed run is guarded against the same baseline.

Resume is exact on CPU with a fixed seed: the data order is a pure function of the seed, so a
resumed run replays the index stream up to the saved step without computing anything, then restores
model, optimiser, scheduler and RNG states (CPU and CUDA) and the method's own state
(`method.state_dict()`) from the checkpoint. The train log is cut back to the checkpoint's step, so
steps redone after a crash are logged once (a line torn by the crash is dropped). A checkpoint written
with another config (`progress.json` keeps it) is refused in one line naming the fields that differ,
unless the method's `force_resume` is set (`unlearn --resume --force`).

Checkpoints are a journal, so a kill at any instant leaves one to resume from: a new checkpoint is
written into `.checkpoint.tmp` (its `progress.json` last: a checkpoint without one is incomplete),
the current one is renamed to `.checkpoint.old`, the new one to `checkpoint`, and the old one is
deleted. `recover_checkpoint` puts back the newest complete one of the three after a crash. With
`save_every`, the loop checkpoints its last step too; a method whose `keep_checkpoint` is set (the
`unlearn` workflow) keeps that checkpoint until the final weights are durable, then calls
`drop_checkpoint`, so a kill while saving them resumes with no step redone.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from obliviate import tracking
from obliviate.errors import ObliviateError
from obliviate.io import read_json
from obliviate.progress import make_progress
from obliviate.train.checkpoint import (  # noqa: F401  (re-exported: the loop's checkpoint names)
    CHECKPOINT,
    _check_same_config,
    _config_record,
    _load_checkpoint,
    _rng_state,
    _save_checkpoint,
    _truncate_log,
    config_hash,
    drop_checkpoint,
    recover_checkpoint,
)
from obliviate.train.data import encode_items, forget_retain_batches
from obliviate.train.precision import master_weights

# The retain terms methods log, in the order the guard looks for them.
RETAIN_TERMS = ("retain_nll", "retain_kl", "retain_loss", "retain_uniform_kl")
RETAIN_FLOOR = 0.05  # baseline floor for terms that start at 0 (KL to the reference, RMU's distance)
_STARTS_AT_ZERO = ("retain_kl", "retain_loss")
SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}


class DivergenceError(ObliviateError):
    """The loss or the gradients became NaN or infinite, or the retain term rose too far."""


def _micro_batches(method, forget_enc, retain_enc, pad_id, epochs):
    cfg = method.config
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(epochs):
        yield from forget_retain_batches(forget_enc, retain_enc, cfg.batch_size, pad_id, generator)


def retain_term(logs: dict[str, float]) -> str | None:
    """The retain term the guard watches among a step's logs (`RETAIN_TERMS`), if any."""
    return next((k for k in RETAIN_TERMS if k in logs), None)


def _kept(out_dir: Path) -> str:
    ckpt = out_dir / CHECKPOINT
    if (ckpt / "progress.json").exists():
        return f"the last checkpoint in {ckpt} (step {read_json(ckpt / 'progress.json')['step']}) is kept"
    return "no checkpoint was written (set save_every to keep one)"


def _guard_retain(logs: dict, cfg, first: dict[str, float], step: int, name: str, out_dir: Path) -> None:
    """Stop when the retain term rises past `retain_rise_limit` × its first value (utility collapse)."""
    key = retain_term(logs)
    if not cfg.retain_rise_limit or key is None or key not in first:
        return
    base = max(first[key], RETAIN_FLOOR) if key in _STARTS_AT_ZERO else first[key]
    if logs[key] > cfg.retain_rise_limit * base:
        raise DivergenceError(
            f"{name}: retain loss rose from {first[key]:.3f} to {logs[key]:.3f} ({key} > {cfg.retain_rise_limit}× "
            f"{base:.3f}) at step {step + 1}; lower the learning rate or raise the retain weight; {_kept(out_dir)}"
        )


def _check_weights(name: str, params: list[torch.nn.Parameter], step: int, lr: float, out_dir: Path) -> None:
    """Stop before a checkpoint or the end of training keeps weights holding NaN or inf."""
    bad = sum(1 for p in params if not bool(torch.isfinite(p.detach()).all()))
    if bad:
        raise DivergenceError(f"{name}: {bad} of {len(params)} trained weight tensors hold NaN or inf after step "
                              f"{step}; lower the learning rate (lr={lr}); {_kept(out_dir)}")


def _check_finite(name: str, what: str, value: float, step: int, lr: float, out_dir: Path) -> None:
    if not math.isfinite(value):
        raise DivergenceError(f"{name}: {what} is {value} at step {step + 1}; lower the learning rate (lr={lr}); "
                              f"{_kept(out_dir)}")


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """The gradients' global L2 norm (NaN or inf when any gradient is)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases and normalisation weights (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


def warmup_steps(cfg, total_steps: int, steps_per_epoch: float) -> int:
    """Warm-up steps: `warmup_epochs` epochs when set, else `warmup_ratio` of the steps."""
    if getattr(cfg, "warmup_epochs", None) is not None:
        return min(total_steps, int(round(cfg.warmup_epochs * steps_per_epoch)))
    return int(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: float):
    """The learning-rate schedule `cfg.schedule` with its warm-up, over `total_steps` optimiser steps."""
    return get_scheduler(SCHEDULES[getattr(cfg, "schedule", "linear")], optimizer,
                         num_warmup_steps=warmup_steps(cfg, total_steps, steps_per_epoch),
                         num_training_steps=total_steps)


def finetune(method, model, tokenizer, forget, retain, out_dir: Path, progress=True, resume=False) -> dict:
    """Run `method` on (forget, retain); return a summary. The model is updated in place."""
    cfg = method.config
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # accumulation is done here (module docstring)
    forget_enc, cut_f = encode_items(tokenizer, forget, max_length=cfg.max_length)
    retain_enc, cut_r = (
        encode_items(tokenizer, retain, max_length=cfg.max_length) if method.uses_retain else ([], 0)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    autocast = master_weights(model)  # half-precision weights train as float32 master weights (precision.py)
    method.setup(model, tokenizer, forget, retain)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # Under DDP each round of `n_proc` consecutive micro-batches gives every process one; an
    # incomplete last round is dropped so all processes take the same number of steps.
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = math.ceil(len(forget_enc) / cfg.batch_size)
    rounds = max(per_epoch * cfg.epochs // n_proc, 1)  # micro-batches per process
    total_steps = math.ceil(rounds / cfg.grad_accum)
    epochs_needed = cfg.epochs
    if cfg.max_steps is not None and cfg.max_steps > 0:
        total_steps = cfg.max_steps
        rounds = cfg.max_steps * cfg.grad_accum
        epochs_needed = math.ceil(cfg.max_steps * cfg.grad_accum * n_proc / max(per_epoch, 1))
    scheduler = build_scheduler(optimizer, cfg, total_steps, per_epoch / n_proc / cfg.grad_accum)
    # The scheduler is stepped by hand once per optimiser step, so it is not handed to accelerate.
    model, optimizer = accelerator.prepare(model, optimizer)

    saved = _load_checkpoint(out_dir, accelerator, model, optimizer, scheduler, method) if resume else {"step": 0}
    start_step = int(saved["step"])
    first_retain: dict[str, float] = dict(saved.get("first_retain") or {})
    log_path = out_dir / "train_log.jsonl"
    main = accelerator.is_main_process
    if main and log_path.exists():
        if resume:
            _truncate_log(log_path, start_step)
        else:
            log_path.unlink()
    step, micro, mine, t0, last = start_step, 0, start_step * cfg.grad_accum, time.perf_counter(), {}
    group_logs: dict[str, float] = {}
    who = f"{out_dir.name} · {method.name}"  # the run's name on the bar
    bar = make_progress(
        TextColumn(f"[bold]{escape(who)}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not (progress and main), label=who,
    )
    with bar:
        task = bar.add_task("train", total=total_steps, completed=start_step, loss="")
        for batch in _micro_batches(method, forget_enc, retain_enc, pad_id, epochs_needed):
            if step >= total_steps:
                break
            micro += 1
            if micro <= start_step * cfg.grad_accum * n_proc:
                continue  # replaying the data order up to the checkpoint
            if (micro - 1) % n_proc != rank:
                continue  # each process takes its share of every round
            batch = batch.to(accelerator.device)
            # This micro-batch's group: grad_accum micro-batches, or the ones left at the end.
            group_start = (mine // cfg.grad_accum) * cfg.grad_accum
            group_size = min(cfg.grad_accum, rounds - group_start)
            mine += 1
            sync = mine - group_start == group_size
            pre = _pre_step(method, model, batch, accelerator, optimizer, params, cfg, step, out_dir, autocast)
            with nullcontext() if sync else accelerator.no_sync(model):
                with autocast():
                    out = method.compute_loss(model, batch)
                _check_finite(method.name, "loss", out.loss.item(), step, cfg.lr, out_dir)
                _guard_retain(out.logs, cfg, first_retain, step, method.name, out_dir)
                key = retain_term(out.logs)
                if key is not None and key not in first_retain:
                    first_retain[key] = out.logs[key]
                accelerator.backward(out.loss / group_size)
            group_logs = {**pre, **out.logs}
            if not sync:
                continue
            if cfg.max_grad_norm > 0:
                norm = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))  # the norm before clipping
            else:
                norm = _grad_norm(params)
            _check_finite(method.name, "gradient norm", norm, step, cfg.lr, out_dir)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            step += 1
            last = {"step": step, "loss": float(out.loss.detach()), **group_logs}
            if main:
                with open(log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(last) + "\n")
                tracking.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=step)
            bar.update(task, completed=step, loss=f"loss {last['loss']:.3f}")
            # the last step too, when the caller keeps it until the final weights are saved
            keep_last = step == total_steps and getattr(method, "keep_checkpoint", False)
            if cfg.save_every and (step % cfg.save_every == 0 and step < total_steps or keep_last):
                _check_weights(method.name, params, step, cfg.lr, out_dir)
                if main:
                    _save_checkpoint(out_dir, accelerator, model, optimizer, scheduler, step, {
                        "config_hash": config_hash(method), "config": _config_record(method),
                        "first_retain": first_retain, "method_state": method.state_dict(), "last": last})
                accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    _check_weights(method.name, params, step, cfg.lr, out_dir)
    model = accelerator.unwrap_model(model)
    model.eval()
    if main and not getattr(method, "keep_checkpoint", False):
        drop_checkpoint(out_dir)
    last = last or dict(saved.get("last") or {})  # resumed from the checkpoint of the last step
    return {
        "steps": step,
        "resumed_from": start_step,
        "final": last,
        "truncated": {"forget": cut_f, "retain": cut_r},
        "train_seconds": time.perf_counter() - t0,
        "num_processes": n_proc,
    }


def _pre_step(method, model, batch, accelerator, optimizer, params, cfg, step: int, out_dir: Path,
              autocast=nullcontext) -> dict[str, float]:
    """The optimiser step on `method.pre_step_loss` alone, if the method has one; its logs."""
    hook = getattr(method, "pre_step_loss", None)
    with autocast():
        out = hook(model, batch) if hook is not None else None
    if out is None:
        return {}
    _check_finite(method.name, "loss", out.loss.item(), step, cfg.lr, out_dir)
    held = [p.grad for p in params]  # the main step's accumulated gradients, set aside
    for p in params:
        p.grad = None
    accelerator.backward(out.loss)
    _check_finite(method.name, "gradient norm", _grad_norm(params), step, cfg.lr, out_dir)
    optimizer.step()
    optimizer.zero_grad()
    for p, g in zip(params, held, strict=True):
        p.grad = g
    return out.logs
