"""The one shared fine-tuning loop, built on `accelerate`.

Used by every fine-tuning method: the method supplies `compute_loss(model, batch)`; the loop owns
the optimiser (AdamW), the linear schedule with warm-up, gradient accumulation, clipping, the
divergence guard, progress display, per-step logs and atomic checkpoints with exact resume.

Resume is exact on CPU with a fixed seed: the data order is a pure function of the seed, so a
resumed run replays the index stream up to the saved step without computing anything, then restores
model, optimiser, scheduler and RNG states from the checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from obliviate import tracking
from obliviate.errors import ObliviateError
from obliviate.io import atomic_open, read_json, write_json
from obliviate.progress import make_progress
from obliviate.train.data import encode_items, forget_retain_batches
from obliviate.train.precision import master_weights

CHECKPOINT = "checkpoint"


class DivergenceError(ObliviateError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _micro_batches(method, forget_enc, retain_enc, pad_id, epochs):
    cfg = method.config
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(epochs):
        yield from forget_retain_batches(forget_enc, retain_enc, cfg.batch_size, pad_id, generator)


def _save_checkpoint(out_dir: Path, accelerator, model, optimizer, scheduler, step: int) -> None:
    """Write the checkpoint into a temp dir and rename it over the old one (never half-written)."""
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "model": accelerator.unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_open(tmp / "state.pt", "wb") as handle:
        torch.save(state, handle)
    write_json(tmp / "progress.json", {"step": step})
    final = out_dir / CHECKPOINT
    old = out_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out_dir: Path, accelerator, model, optimizer, scheduler) -> int:
    ckpt = out_dir / CHECKPOINT
    if not (ckpt / "progress.json").exists():
        return 0
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(read_json(ckpt / "progress.json")["step"])


def _guard_retain(logs: dict, cfg, first: float | None, step: int, name: str, out_dir: Path) -> None:
    """Stop when the retain loss rises past `retain_rise_limit` × its first value (utility collapse)."""
    now = logs.get("retain_nll")
    if not cfg.retain_rise_limit or first is None or now is None:
        return
    if now > cfg.retain_rise_limit * first:
        raise DivergenceError(
            f"{name}: retain loss rose from {first:.3f} to {now:.3f} (> {cfg.retain_rise_limit}×) at step "
            f"{step + 1}; lower the learning rate or raise the retain weight; the last checkpoint in "
            f"{out_dir / CHECKPOINT} is kept"
        )


def finetune(method, model, tokenizer, forget, retain, out_dir: Path, progress=True, resume=False) -> dict:
    """Run `method` on (forget, retain); return a summary. The model is updated in place."""
    cfg = method.config
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    forget_enc, cut_f = encode_items(tokenizer, forget, max_length=cfg.max_length)
    retain_enc, cut_r = (
        encode_items(tokenizer, retain, max_length=cfg.max_length) if method.uses_retain else ([], 0)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    autocast = master_weights(model)  # half-precision weights train as float32 master weights (precision.py)
    method.setup(model, tokenizer, forget, retain)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Under DDP each round of `n_proc` consecutive micro-batches gives every process one; an
    # incomplete last round is dropped so all processes take the same number of steps.
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = math.ceil(len(forget_enc) / cfg.batch_size)
    rounds = max(per_epoch * cfg.epochs // n_proc, 1)
    total_steps = math.ceil(rounds / cfg.grad_accum)
    epochs_needed = cfg.epochs
    if cfg.max_steps is not None and cfg.max_steps > 0:
        total_steps = cfg.max_steps
        epochs_needed = math.ceil(cfg.max_steps * cfg.grad_accum * n_proc / max(per_epoch, 1))
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    # The scheduler is stepped by hand once per optimiser step, so it is not handed to accelerate.
    model, optimizer = accelerator.prepare(model, optimizer)

    start_step = _load_checkpoint(out_dir, accelerator, model, optimizer, scheduler) if resume else 0
    log_path = out_dir / "train_log.jsonl"
    main = accelerator.is_main_process
    if main and not resume and log_path.exists():
        log_path.unlink()
    step, micro, t0, last, first_retain = start_step, 0, time.perf_counter(), {}, None
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
            with accelerator.accumulate(model):
                with autocast():
                    out = method.compute_loss(model, batch)
                if not torch.isfinite(out.loss):
                    raise DivergenceError(
                        f"{method.name}: loss is {out.loss.item()} at step {step + 1}; lower the learning "
                        f"rate (lr={cfg.lr}); the last checkpoint in {out_dir / CHECKPOINT} is kept"
                    )
                _guard_retain(out.logs, cfg, first_retain, step, method.name, out_dir)
                first_retain = first_retain or out.logs.get("retain_nll")
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                last = {"step": step, "loss": float(out.loss.detach()), **out.logs}
                if main:
                    with open(log_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(last) + "\n")
                    tracking.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=step)
                bar.update(task, completed=step, loss=f"loss {last['loss']:.3f}")
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    if main:
                        _save_checkpoint(out_dir, accelerator, model, optimizer, scheduler, step)
                    accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    model.eval()
    if main:
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    return {
        "steps": step,
        "resumed_from": start_step,
        "final": last,
        "truncated": {"forget": cut_f, "retain": cut_r},
        "train_seconds": time.perf_counter() - t0,
        "num_processes": n_proc,
    }
