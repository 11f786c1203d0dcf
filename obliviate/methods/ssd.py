"""Selective Synaptic Dampening (SSD): retrain-free unlearning by weight surgery.

Foster et al. 2024, *Fast Machine Unlearning Without Retraining Through Selective Synaptic Dampening*
(code: `if-loops/selective-synaptic-dampening`, ssd.py).

Importance is the diagonal of the empirical Fisher information: the mean over mini-batches of the
squared gradient of the loss (here the answer NLL), on the full training data D and on the forget
set D_f. Parameters far more important to D_f than to D are dampened, the rest are untouched:

    I_D = E_D[(∂ℓ/∂θ)²],   I_Df = E_Df[(∂ℓ/∂θ)²]
    θ_i ← min(λ · I_D,i / I_Df,i, 1) · θ_i    where I_Df,i > α · I_D,i

Paper defaults α = 10, λ = 1 (ResNet/CIFAR; it uses α = 5-25 for ViT). The world default is α = 4:
selection needs α < |D| / |D_f| (below), and a 10% forget split sits right at α = 10. Within that
range α trades forgetting for utility; forget10 on the small world (seed 0) gives forget ROUGE 0.50 /
0.36 / 0.24 at model utility 0.91 / 0.88 / 0.82 for α = 5 / 4 / 3 (target: 1.00 and 0.94), and the
tiny world 0.31 / 0.21 / 0.07 at 0.88 / 0.82 / 0.67.

As in the reference code, the importance of a data set is the mean over its mini-batches of the
squared batch gradient, with the model in eval mode. D is forget ∪ retain, in batches that are
all-forget or all-retain, so I_D = (b_f · I_Df + b_r · I_Dr) / (b_f + b_r) for b_f, b_r batches and
the forget gradients are computed once. Because I_D contains I_Df with weight w_f = b_f / (b_f + b_r),
no parameter can be selected when w_f ≥ 1/α (I_Df > α·I_D ≥ α·w_f·I_Df); the summary says so. With
`importance_data=retain`, I_D is the retain importance alone.

Only parameters with `requires_grad` are considered, so freezing part of the model restricts the
surgery. LoRA is refused: the surgery acts on the weights, not on an adapter. The summary
(parameters dampened, per tensor) is written to `out_dir/surgery.json`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from obliviate.errors import ConfigError
from obliviate.io import write_json
from obliviate.methods.base import Method, MethodConfig
from obliviate.models.lora import is_peft_model
from obliviate.train.data import collate, encode_items
from obliviate.train.losses import answer_nll


class SSDConfig(MethodConfig):
    alpha: float = Field(4.0, gt=0, description="α, selection: dampen where I_Df > α · I_D; world default "
                         "(paper: 10; it must stay below |D| / |D_f|)")
    dampening: float = Field(1.0, description="λ, dampening: θ ← min(λ · I_D / I_Df, 1) · θ", gt=0)
    batch_size: int = Field(8, description="examples per mini-batch when estimating importances", ge=1)
    max_length: int = Field(512, description="truncate sequences to this many tokens", ge=8)
    importance_data: Literal["forget+retain", "retain"] = Field(
        "forget+retain", description="data behind I_D: the full training data (paper) or the retain set only")


def importance(model, encoded, batch_size: int, pad_id: int) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over mini-batches of the squared gradient of the answer NLL, per trainable parameter.

    Returns (importances by parameter name, number of batches).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    imp = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    device = next(model.parameters()).device
    n_batches = 0
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start : start + batch_size], pad_id).items()}
        model.zero_grad(set_to_none=True)
        loss = answer_nll(model, batch).mean()
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                imp[name] += p.grad.detach().float().pow(2)
        n_batches += 1
    model.zero_grad(set_to_none=True)
    for value in imp.values():
        value /= max(n_batches, 1)
    return imp, n_batches


def dampen(param: torch.Tensor, i_d: torch.Tensor, i_f: torch.Tensor, alpha: float, lam: float) -> torch.Tensor:
    """Apply SSD to one tensor in place; return the boolean mask of dampened entries."""
    selected = i_f > alpha * i_d
    factor = (lam * i_d / i_f.clamp(min=torch.finfo(torch.float32).tiny)).clamp(max=1.0)
    with torch.no_grad():
        param[selected] = (param.float()[selected] * factor[selected]).to(param.dtype)
    return selected


class SSD(Method):
    paper_defaults = {"alpha": 10.0, "dampening": 1.0}
    name = "ssd"
    family = "weight surgery"
    paper = "Foster et al. 2024, Fast Machine Unlearning Without Retraining Through Selective Synaptic Dampening"
    accepts_text = True
    summary = "dampen the weights far more important (diagonal Fisher) to the forget set than to all data"
    Config = SSDConfig
    uses_retain = True

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        forget_enc, cut_f = encode_items(tokenizer, forget, max_length=cfg.max_length)
        retain_enc, cut_r = encode_items(tokenizer, retain, max_length=cfg.max_length)
        if is_peft_model(model):
            raise ConfigError("ssd edits the weights themselves; run it without --lora")
        if cfg.importance_data == "retain" and not retain_enc:
            raise ConfigError("ssd: importance_data=retain needs a retain set (--retain)")
        was_training = model.training
        model.eval()

        with torch.no_grad():
            nll_before = _mean_nll(model, forget_enc, cfg.batch_size, pad_id)
        i_f, b_f = importance(model, forget_enc, cfg.batch_size, pad_id)
        i_r, b_r = importance(model, retain_enc, cfg.batch_size, pad_id)
        if cfg.importance_data == "retain":
            w_f = 0.0
        else:
            w_f = b_f / max(b_f + b_r, 1)
        rows, total, selected_total = [], 0, 0
        for name, p in model.named_parameters():
            if name not in i_f:
                continue
            i_d = w_f * i_f[name] + (1.0 - w_f) * i_r[name]
            mask = dampen(p, i_d, i_f[name], cfg.alpha, cfg.dampening)
            n_sel = int(mask.sum())
            factor = (cfg.dampening * i_d[mask] / i_f[name][mask]).clamp(max=1.0)
            rows.append({"param": name, "numel": p.numel(), "dampened": n_sel,
                         "mean_factor": float(factor.mean()) if n_sel else None})
            total += p.numel()
            selected_total += n_sel
        del i_f, i_r

        with torch.no_grad():
            nll_after = _mean_nll(model, forget_enc, cfg.batch_size, pad_id)
        model.train(was_training)
        note = None
        if w_f * cfg.alpha >= 1.0:
            note = (f"forget batches are {w_f:.0%} of D, at least 1/alpha = {1 / cfg.alpha:.0%}: no parameter "
                    "can pass the selection test; lower alpha, add retain data or set importance_data=retain")
            warnings.warn(f"ssd: {note}", stacklevel=2)
        final = {"dampened": selected_total, "dampened_fraction": selected_total / max(total, 1),
                 "forget_nll_before": nll_before, "forget_nll_after": nll_after}
        write_json(out_dir / "surgery.json", {
            "method": self.name, "alpha": cfg.alpha, "lambda": cfg.dampening, "importance_data": cfg.importance_data,
            "batches": {"forget": b_f, "retain": b_r}, "parameters": total, **final, "note": note,
            "per_tensor": rows,
        })
        return {"steps": 0, "resumed_from": 0, "final": final, "truncated": {"forget": cut_f, "retain": cut_r},
                "train_seconds": time.perf_counter() - t0, "note": note}


def _mean_nll(model, encoded, batch_size: int, pad_id: int) -> float:
    device = next(model.parameters()).device
    losses = [answer_nll(model, {k: v.to(device) for k, v in collate(encoded[s : s + batch_size], pad_id).items()})
              for s in range(0, len(encoded), batch_size)]
    return float(torch.cat(losses).mean()) if losses else float("nan")
