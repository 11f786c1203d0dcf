"""Per-item gradient norms: the white-box GradNorm membership score.

GradNorm (Mimir, Duan et al. 2024; open-unlearning's `GradNormAttack`): for each item, the
gradient of its mean answer NLL with respect to every parameter, and the mean over parameters of
the gradients' p-norms. Members of the training set sit near a minimum of their loss, so their
gradients are small; the membership score is the negated norm (higher = more likely a member).

Scoring with a backward pass lives here, beside the suite that uses it, rather than in `models`
(which sits below `train` in the import layers). One backward pass per item, with gradients for
every parameter: opt-in, as it costs a training step's memory. Parameters that do not require
gradients (a frozen model, an intervention's base) get them for the duration; flags and `.grad`
are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from obliviate.data.schema import QAItem
from obliviate.models.prompts import DEFAULT_FORMAT, PromptFormat
from obliviate.train.data import collate, encode_items
from obliviate.train.losses import answer_nll


def answer_gradient_norms(model, tokenizer, items: Sequence[QAItem], fmt: PromptFormat = DEFAULT_FORMAT,
                          p: float = 2.0) -> np.ndarray:
    """(n,): per item, mean over parameters of ‖∂ mean-answer-NLL / ∂θ‖_p."""
    if p not in (1.0, 2.0, float("inf")):
        raise ValueError(f"p must be 1, 2 or inf, got {p}")
    params = [q for q in model.parameters() if q.is_floating_point()]
    saved = [(q.requires_grad, q.grad) for q in params]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = params[0].device
    was_training = model.training
    model.eval()
    out = []
    try:
        for q in params:
            q.requires_grad_(True)
            q.grad = None
        for enc in encode_items(tokenizer, items, fmt)[0]:
            batch = {k: v.to(device) for k, v in collate([enc], pad_id).items()}
            answer_nll(model, batch).sum().backward()
            norms = [q.grad.detach().float().norm(p) for q in params if q.grad is not None]
            out.append(float(torch.stack(norms).mean()) if norms else 0.0)
            for q in params:
                q.grad = None
    finally:
        for q, (flag, grad) in zip(params, saved, strict=True):
            q.requires_grad_(flag)
            q.grad = grad
        model.train(was_training)
    return np.asarray(out, dtype=float)
