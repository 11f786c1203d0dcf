"""Task-vector negation.

Ilharco et al. 2023, *Editing Models with Task Arithmetic*.

Fine-tune a copy of the model on the forget set (plain SFT: cross-entropy on the answer tokens) to
get θ_ft, take the task vector τ = θ_ft − θ and subtract it:

    θ_new = θ − s · τ,   s = 1

The fine-tuning stage runs in the shared loop with the `FinetuneConfig` fields of this method's
config (lr, epochs, batch size, ...), so it logs to `out_dir/train_log.jsonl`, checkpoints and
resumes like any fine-tuning method; its loss falls, since it *learns* the forget set. The paper
sets s on held-out data (0.5-1 typical); s = 1 is the plain negation.

World default: lr 1.5e-3 for the fine-tuning stage (5 epochs). The target has memorised the forget
set (answer NLL ≈ 0.02), so fine-tuning on it moves the weights little and τ is short: with the
shared lr 5e-4 the negation leaves forget ROUGE at 0.80 on the small world (forget10, seed 0);
lr 1e-3 / 1.5e-3 / 2e-3 give forget ROUGE 0.57 / 0.22 / 0.03 at model utility 0.92 / 0.88 / 0.77
(target: 1.00 and 0.94).

Memory: one extra copy of the parameters (θ, kept to form τ); the model itself is fine-tuned in
place and then overwritten with θ − s·τ.

With LoRA the task vector is the weight change B_ft·A_ft of a fresh adapter (B₀ = 0), and negating
the adapter parameters one by one would not negate that product. So A keeps its fine-tuned value
and B ← −s·B_ft, which gives exactly ΔW = −s·τ_W.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field

from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.train.losses import ce_loss


def forget_ce(model, batch) -> LossOutput:
    """Token-level cross-entropy on the forget answers: the loss that learns the forget set."""
    loss = ce_loss(model, batch.forget)
    return LossOutput(loss, {"forget_ce": float(loss.detach())})


class ForgetFinetune(FinetuneMethod):
    """Plain SFT on the forget set: the helper stage of WHP (its reinforced model)."""

    name = "forget-sft"
    paper = "-"
    accepts_text = True
    summary = "cross-entropy on the forget answers (learns them)"

    def compute_loss(self, model, batch) -> LossOutput:
        return forget_ce(model, batch)


class TaskVectorConfig(FinetuneConfig):
    scale: float = Field(1.0, description="s in θ − s·τ, where τ = θ_ft − θ is the forget-set task vector")
    lr: float = Field(1.5e-3, gt=0, description="peak learning rate (AdamW) of the fine-tuning stage; world "
                      "default; on 7B models use an ordinary fine-tuning rate such as 1e-5")


class TaskVector(FinetuneMethod):
    name = "task_vector"
    family = "weight surgery"
    paper = "Ilharco et al. 2023, Editing Models with Task Arithmetic"
    accepts_text = True
    summary = "fine-tune on the forget set, then subtract the task vector τ = θ_ft − θ"
    Config = TaskVectorConfig

    def compute_loss(self, model, batch) -> LossOutput:  # the fine-tuning stage's loss
        return forget_ce(model, batch)

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        theta = {name: p.detach().clone() for name, p in model.named_parameters()}
        if any("lora_B" in name and bool(t.any()) for name, t in theta.items()):
            raise ConfigError("task_vector: LoRA negation needs a fresh adapter (lora_B = 0)")
        summary = super().unlearn(model, tokenizer, forget, retain, Path(out_dir), progress=progress, resume=resume)
        s = self.config.scale
        sq_norm = 0.0
        with torch.no_grad():
            for name, p in model.named_parameters():
                tau = p - theta[name]
                sq_norm += float(tau.float().pow(2).sum())
                if "lora_A" in name:
                    continue  # keep A_ft: with B₀ = 0, ΔW = B·A, so B ← −s·B_ft negates ΔW exactly
                p.copy_(theta[name] - s * tau)
        return {**summary, "task_vector_norm": math.sqrt(sq_norm), "scale": s}
