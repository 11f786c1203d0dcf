"""Shared losses over answer tokens.

ℓ(x, y) is the NLL of the answer tokens y given the prompt x. `answer_nll` returns it per sequence,
as a mean over answer tokens (TOFU's convention) or a sum (NPO's sequence log-probability).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.train.data import IGNORE


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) for next-token prediction and the mask of scored positions.

    logits (B, T, V), labels (B, T) -> logp (B, T-1), mask (B, T-1).
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    logp = -F.cross_entropy(logits.transpose(1, 2).float(), safe, reduction="none")
    return logp * mask, mask


def answer_nll(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """ℓ(x, y) per sequence, (B,): mean (or sum) NLL over answer tokens."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp, mask = token_logprobs(out.logits, batch["labels"])
    total = -logp.sum(dim=1)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def ce_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Standard token-level cross-entropy over all answer tokens in the batch (scalar)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp, mask = token_logprobs(out.logits, batch["labels"])
    return -logp.sum() / mask.sum().clamp(min=1)
