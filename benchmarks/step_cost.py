"""Time of one training step of each fine-tuning method ÷ one plain SFT step on the same batch.

Every method runs `setup`, then the same number of optimiser steps (forward, loss, backward,
AdamW) on identical forget/retain batches; SFT (cross-entropy on the forget answers) is the unit.
Methods are timed in an interleaved order, best of `--repeats`, so machine noise hits all alike.
Weight-surgery methods have no training step and are timed as whole `unlearn` calls elsewhere.

    python benchmarks/step_cost.py [--steps 8] [--repeats 3] [--hidden 256]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import bench_model, forget_retain

from obliviate.methods import METHODS, FinetuneMethod
from obliviate.methods.base import LossOutput
from obliviate.train.data import encode_items, forget_retain_batches
from obliviate.train.losses import ce_loss


class PlainSFT(FinetuneMethod):
    name, paper, summary = "sft", "-", "cross-entropy on the forget answers"

    def compute_loss(self, model, batch) -> LossOutput:
        return LossOutput(ce_loss(model, batch.forget))


def time_steps(cls, base, tok, forget, retain, steps: int, batch_size: int) -> float:
    model = copy.deepcopy(base).train()
    method = cls(cls.Config(batch_size=batch_size))
    method.setup(model, tok, forget, retain)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    f_enc, _ = encode_items(tok, forget)
    r_enc, _ = encode_items(tok, retain)
    gen = torch.Generator().manual_seed(0)
    batches = list(forget_retain_batches(f_enc, r_enc, batch_size, tok.pad_token_id, gen))
    method.compute_loss(model, batches[0]).loss.backward()  # warm-up
    opt.zero_grad()
    t0 = time.perf_counter()
    for i in range(steps):
        out = method.compute_loss(model, batches[i % len(batches)])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    base, tok = bench_model(args.hidden)
    forget, retain = forget_retain(32)
    methods = {"sft": PlainSFT} | {n: c for n, c in METHODS.items() if issubclass(c, FinetuneMethod)}
    best = {name: float("inf") for name in methods}
    for _ in range(args.repeats):
        for name, cls in methods.items():
            best[name] = min(best[name], time_steps(cls, base, tok, forget, retain, args.steps, args.batch_size))
    print(f"one training step, Llama hidden {args.hidden}, batch {args.batch_size} forget (+ retain), "
          f"best of {args.repeats} × {args.steps} steps")
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds * 1000:8.1f} ms   ratio to SFT {seconds / best['sft']:5.2f}")


if __name__ == "__main__":
    main()
