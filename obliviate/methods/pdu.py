"""Primal-dual unlearning (PDU): logit-margin flattening under a retain-loss constraint.

Entesari et al. 2025, *Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language
Models*. Unlearning is posed as a constrained problem: flatten the model's output distribution on
the forget answers, subject to the retain loss staying below a bound ε,

    min_θ F(θ)  s.t.  R(θ) ≤ ε,     F(θ) = mean_t (max_v z_t,v − mean_v z_t,v)²

where z_t are the logits predicting answer token t of a forget batch (a zero margin is the uniform
distribution) and R is the retain cross-entropy (or the
KL to the starting model). It is solved by gradient descent on the Lagrangian and ascent on the
dual variable λ:

    L(θ, λ) = γ · F(θ) + λ · (R(θ) − ε)
    λ ← max(0, λ + η · (R(θ) − ε))       after each micro-batch, once the dual warm-up is over

so λ grows while the constraint is violated and shrinks back when it holds. With `primal_dual`
off, λ stays at its starting value (a fixed weighting, GradDiff-style).

Defaults of the authors' TOFU run script in open-unlearning (`community/methods/PDU/run.sh`, read at
d3d7cf9), for 1B to 8B models: λ₀ = 100, η = 5, ε = 0.3, dual warm-up 5 epochs, γ = 1, lr 1e-5,
10 epochs (30 for Llama-3.1-8B), batch 4 per device on 8 devices; MUSE: λ₀ = 50, η = 1, warm-up 3
epochs, ε per corpus and model (News 1.5, Books 0.1 on Llama-2-7B). The README's advice for ε: a
value somewhat above the starting model's retain loss.

Differs from the reference:
- the margin is taken at the positions that predict answer tokens, because those predictions are
  what is to be flattened; open-unlearning masks the logits by the unshifted labels, one position
  later (the positions holding answer tokens, which predict the token after each);
- only per-step dual updates ("step"), not open-unlearning's "epoch" option (a full pass over the
  retain data after each epoch);
- λ and the warm-up count are not part of the training checkpoint, so a resumed run restarts them
  (λ at λ₀); with several processes each keeps its own λ from its own retain batches (as
  open-unlearning's per-process update does).

World defaults: ε = 0.05 (the world target's retain cross-entropy is about 0.02), λ₀ = 10, η = 5,
dual warm-up 2 epochs, 10 epochs at lr 1e-3. On the tiny world (forget10, seed 0) the forget answer
probability falls from 0.98 to 0.00 (answer NLL 8.9: the distribution is flat) and the retain one
from 0.98 to 0.95 (retain NLL 0.055, at the bound); λ ends near 32. λ₀ = 100 ends the same
(retain 0.96), and so does lr 5e-4 (forget 0.002, retain 0.95).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from accelerate import PartialState
from pydantic import Field

from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.defaults import TOFU_FINETUNE
from obliviate.methods.retain_term import retain_value
from obliviate.train.data import IGNORE
from obliviate.train.reference import Reference, ReferenceConfig


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of (max_v z − mean_v z)² (scalar).

    logits (B, T, V), labels (B, T) with IGNORE off the answer.
    """
    mask = labels[:, 1:] != IGNORE  # (B, T-1): positions that predict an answer token
    z = logits[:, :-1][mask].float()  # (N, V)
    return ((z.max(-1).values - z.mean(-1)) ** 2).mean() if len(z) else z.sum()


class PDUConfig(FinetuneConfig, ReferenceConfig):
    retain_loss: Literal["gd", "kl"] = Field(
        "gd", description="the constrained retain loss R: gd (cross-entropy on retain answers) or kl (KL to the "
        "starting model)")
    retain_eps: float = Field(0.05, ge=0, description="ε, the bound on the retain loss; world default, the authors "
                              "use 0.3 on TOFU (choose it somewhat above the starting model's retain loss)")
    alpha: float = Field(10.0, ge=0, description="λ₀, the starting retain weight (dual variable); world default, "
                         "the authors use 100 on TOFU")
    gamma: float = Field(1.0, ge=0, description="weight γ of the forget (logit-margin) term")
    primal_dual: bool = Field(True, description="update λ by dual ascent (off: λ stays λ₀)")
    dual_step: float = Field(5.0, ge=0, description="η, the dual ascent step size")
    dual_warmup_epochs: int = Field(2, ge=0, description="epochs before λ starts to move; world default, the "
                                    "authors use 5 on TOFU")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW); world default, the authors use 1e-5")
    epochs: int = Field(10, ge=1, description="passes over the forget set (the authors also use 10 on TOFU)")


class PDU(FinetuneMethod):
    paper_defaults = {**TOFU_FINETUNE, "epochs": 10, "warmup_ratio": 0.1, "retain_eps": 0.3,
                      "alpha": 100.0, "dual_warmup_epochs": 5}
    name = "pdu"
    paper = ("Entesari et al. 2025, Constrained Entropic Unlearning: "
             "A Primal-Dual Framework for Large Language Models")
    accepts_text = True
    summary = "flatten forget logits (margin²) subject to retain loss ≤ ε, by primal-dual updates"
    Config = PDUConfig
    uses_retain = True

    def __init__(self, config: PDUConfig | None = None) -> None:
        super().__init__(config)
        self.dual = float(self.config.alpha)  # λ
        self.calls = 0  # micro-batches seen, to know when the warm-up is over
        self.per_epoch = 1
        self.reference: Reference | None = None

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        self.dual, self.calls = float(cfg.alpha), 0
        # micro-batches this process sees per epoch (the loop deals each round one per process)
        n_proc = PartialState().num_processes
        self.per_epoch = max(math.ceil(math.ceil(len(forget) / cfg.batch_size) / n_proc), 1)
        if cfg.retain_loss == "kl":
            self.reference = Reference(cfg.ref, needs_logits=True)
            self.reference.setup(model, tokenizer, forget, retain, max_length=cfg.max_length,
                                 batch_size=cfg.batch_size)

    def dual_active(self) -> bool:
        """Is the dual warm-up over (λ may move after this micro-batch)?"""
        return self.config.primal_dual and self.calls >= self.config.dual_warmup_epochs * self.per_epoch

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        forget = batch.forget
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        margin = logit_margin(logits, forget["labels"])
        retain, key = retain_value(model, batch.retain, cfg.retain_loss, self.reference)
        slack = retain - cfg.retain_eps  # > 0 while the constraint is violated
        loss = cfg.gamma * margin + self.dual * slack
        logs = {"forget_loss": float(margin.detach()), key: float(retain.detach()), "dual": self.dual}
        if self.dual_active():
            self.dual = max(0.0, self.dual + cfg.dual_step * float(slack.detach()))
        self.calls += 1
        return LossOutput(loss, logs)
