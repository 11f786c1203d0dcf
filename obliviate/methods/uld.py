"""Unlearning from Logit Difference (ULD).

Ji et al. 2024, *Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework
from Logit Difference* (code `UCSB-NLP-Chang/ULD`). Instead of making the target forget, train a
small assistant to *remember* the forget set and know nothing else, then subtract it:

    assistant = target's embeddings + first K layers + final norm + LM head, with LoRA (r 16, α 32,
                dropout 0.05) on every linear layer of those K layers; K = 8 of 32 layers, scaled
                to depth (K = round(L/4) by default, and at least 2: on the 4-layer small world a
                1-layer assistant took model utility to 0.57, a 2-layer one kept 0.85)
    L = CE(D_f ∪ augmentations) + 5.0 · KL(Uniform ‖ p_assist) on D_r
    logits = l_target + w · l_assist,  w = −0.8, on the tokens whose target log-prob is at least
             max + log r (r = 0.01); the other tokens are masked, in generation and scoring alike
             (`interventions/logit_diff.py`)

Augmentations follow ULD's TOFU data mode `forget_more_retain_perturb`: up to 2 variants per forget
item (its paraphrased questions with the answer, then the question with the paraphrased answer),
and the forget questions with their *perturbed* answers join the retain side, so the assistant is
uniform on wrong answers about forget subjects. The KL term is averaged over the real (unpadded)
positions of retain sequences (ULD's code averages over every position, padding included).

Training runs in the shared loop (`obliviate.train.loop`: AdamW, linear schedule, checkpoints,
resume) with only the LoRA parameters trainable. ULD's TOFU script: lr 1e-3, batch 8 × 2
accumulation steps; the epochs here are the shared default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.interventions.base import frozen
from obliviate.interventions.logit_diff import LogitDifference, decoder_layers
from obliviate.methods.base import FinetuneConfig, LossOutput
from obliviate.methods.inference import InterventionMethod, item_kind
from obliviate.train.losses import ce_loss


def augmented_forget(forget: Sequence[QAItem], n_augment: int) -> list[QAItem]:
    """Each forget item, then up to `n_augment` variants (paraphrased questions, paraphrased answer)."""
    out = []
    for it in forget:
        out.append(it)
        variants = [QAItem(q, it.answer, subject=it.subject) for q in it.paraphrased_questions]
        if it.paraphrased_answer:
            variants.append(QAItem(it.question, it.paraphrased_answer, subject=it.subject))
        out += variants[:n_augment]
    return out


def perturbed_as_retain(forget: Sequence[QAItem]) -> list[QAItem]:
    """The forget questions paired with each of their perturbed (wrong) answers."""
    return [QAItem(it.question, p, subject=it.subject) for it in forget for p in it.perturbed_answers]


def uniform_kl(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions of KL(U ‖ p) = −log V − mean_v log p_v; logits (B, T, V), mask (B, T)."""
    logp = logits.float().log_softmax(-1)  # (B, T, V)
    kl = -torch.log(torch.tensor(float(logits.shape[-1]))) - logp.mean(-1)  # (B, T)
    keep = mask.bool()
    return kl[keep].sum() / keep.sum().clamp(min=1)


class AssistantModule(nn.Module):
    """The assistant as a trainable module: its parameters are the LoRA adapters only.

    The target (whose modules the assistant shares) is held outside the module tree, so the loop's
    optimiser, checkpoints and `train()` calls see the adapters alone.
    """

    def __init__(self, intervention: LogitDifference, target: nn.Module) -> None:
        super().__init__()
        self.intervention = intervention
        object.__setattr__(self, "_target", target)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return self.intervention.assistant_forward(self._target, input_ids=input_ids, attention_mask=attention_mask,
                                                   **kwargs)


class ULDConfig(FinetuneConfig):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW) of the LoRA adapters")
    batch_size: int = Field(8, ge=1, description="forget examples per micro-batch (retain batches match it)")
    grad_accum: int = Field(2, ge=1, description="micro-batches per optimiser step")
    n_layers: int | None = Field(None, ge=1, description="K, the assistant's layers (default: a quarter of the "
                                 "target's, 8 of 32, and at least 2)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA α (scale α/r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    retain_weight: float = Field(5.0, ge=0, description="weight of KL(Uniform ‖ p_assist) on the retain side")
    weight: float = Field(-0.8, description="w in l_target + w·l_assist")
    filter_ratio: float = Field(0.01, gt=0, le=1, description="r of the relative-top filter")
    n_augment: int = Field(2, ge=0, description="variants per forget item added to the forget side")
    perturbed_to_retain: bool = Field(True, description="add the forget questions with perturbed answers to retain")


class ULD(InterventionMethod):
    name = "uld"
    paper = ("Ji et al. 2024, Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework "
             "from Logit Difference")
    summary = "train a small LoRA assistant to remember the forget set; subtract its logits at inference"
    Config = ULDConfig
    uses_retain = True

    def setup(self, model, tokenizer, forget, retain) -> None:
        """Hook of the shared loop (nothing to prepare)."""

    def compute_loss(self, model, batch) -> LossOutput:
        forget_ce = ce_loss(model, batch.forget)
        logits = model(input_ids=batch.retain["input_ids"], attention_mask=batch.retain["attention_mask"]).logits
        kl = uniform_kl(logits, batch.retain["attention_mask"])
        loss = forget_ce + self.config.retain_weight * kl
        return LossOutput(loss, {"forget_ce": float(forget_ce.detach()), "retain_uniform_kl": float(kl.detach())})

    def build(self, model, tokenizer, forget, retain, out_dir: Path, progress, resume):
        from obliviate.train.loop import finetune

        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        if not forget:
            raise ConfigError("uld: the forget set is empty")
        depth = len(decoder_layers(model))
        n_layers = cfg.n_layers or min(depth, max(2, round(depth / 4)))
        torch.manual_seed(cfg.seed)
        uld = LogitDifference.for_model(model, n_layers, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.weight,
                                        cfg.filter_ratio)
        forget_side = augmented_forget(forget, cfg.n_augment)
        retain_side = list(retain) + (perturbed_as_retain(forget) if cfg.perturbed_to_retain else [])
        if not retain_side:
            raise ConfigError("uld: the retain side is empty (no retain items and no perturbed answers)")
        model.eval()
        with frozen(model):
            summary = finetune(self, AssistantModule(uld, model), tokenizer, forget_side, retain_side, Path(out_dir),
                               progress=progress, resume=resume)
        uld.requires_grad_(False)
        uld.release()
        summary.update({"assistant_layers": n_layers, "forget_examples": len(forget_side),
                        "retain_examples": len(retain_side)})
        return uld.eval(), summary
