"""WAGLE: weight attribution picks the weights to unlearn with, any fine-tuning method trains only them.

Jia et al. 2024, *WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in Large
Language Models* (NeurIPS 2024). The influence of each weight θ_i on unlearning is attributed from
a bi-level view (unlearn on the forget set, then stay optimal on the retain set), with the retain
loss's Hessian approximated by γ·I; the score of weight i is

    S_i = | (θ_i − (1/γ) · [∇ℓ_r(θ)]_i) · [∇ℓ_f(θ)]_i |

where ∇ℓ_f and ∇ℓ_r are the gradients of the answer cross-entropy on the forget and retain sets,
each summed over mini-batches (as many retain batches as forget batches). The `mask_ratio` share
of all trainable entries with the highest scores, ranked across the whole model, forms the mask m;
then the base method (any fine-tuning method of the table, `base`) runs unchanged except that its
gradients are multiplied by m, so only the selected weights move.

Defaults of the authors' code (OPTML-Group/WAGLE, score type "snip_advanced"): γ = 1e-3 (`mu`),
gradients of the plain cross-entropy summed over the unlearning data loader, masks at ratios 0.1 to
1.0 with the README's example of 0.8 (80% of the weights selected) on TOFU; bases GradDiff and NPO
with those methods' own hyperparameters.

`base_args` sets the base method's config as `key=value` pairs separated by commas (for example
`--set base=npo --set base_args=lr=1e-3,beta=0.2`); without it the base runs with its own (world)
defaults and WAGLE's seed.

Differs from the reference: the authors zero the gradients of unselected weights as well; here a
parameter with no selected entry is also frozen for the run (so the optimiser skips it), and with
weight decay the unselected entries of partly selected parameters, which decay like the rest, are
put back to their starting values at the end. The mask is kept in the run directory while the run
is unfinished (one byte per weight), so a resumed run trains the same weights.

World defaults: base NPO at its world defaults, mask ratio 0.8, γ = 1e-3. On the tiny world (forget10,
seed 0) this ends as NPO alone does (forget answer probability 0.98 -> 0.46, retain 0.91; NPO: 0.46
and 0.92): Adam's steps are per entry, so training 80% of the entries is nearly training all. The
mask matters at small ratios: with GradDiff on 20% of the weights the attribution mask takes the
forget probability to 0.39 (retain 0.88), a random mask of the same size only to 0.89 (retain 0.98).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import Field

from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneMethod, Method, MethodConfig
from obliviate.train.data import collate, encode_items
from obliviate.train.losses import ce_loss

MASK_FILE = "wagle_mask.pt"


class WAGLEConfig(MethodConfig):
    base: str = Field("npo", description="the fine-tuning method that trains the selected weights (any fine-tuning "
                      "method of `obliviate methods`)")
    base_args: str = Field("", description="the base method's config as comma-separated key=value pairs, e.g. "
                           "'lr=1e-3,beta=0.2' (empty: its defaults)")
    mask_ratio: float = Field(0.8, gt=0, le=1, description="share of the trainable weights selected by their "
                              "attribution score (the authors' README example: 0.8)")
    hessian_gamma: float = Field(1e-3, gt=0, description="γ, the retain-loss Hessian taken as γ·I in the score "
                                 "(the authors' `mu`)")


def _parse_base_args(text: str) -> dict[str, str]:
    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"wagle: base_args entry {pair!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def summed_gradients(model, tokenizer, items, batch_size: int, max_length: int | None) -> dict[str, torch.Tensor]:
    """Σ over mini-batches of ∇ (answer cross-entropy of the batch), per trainable parameter (float32)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    enc, _ = encode_items(tokenizer, items, max_length=max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout, as the authors score in eval mode
    try:
        for start in range(0, len(enc), batch_size):
            batch = {k: v.to(device) for k, v in collate(enc[start : start + batch_size], pad_id).items()}
            grads = torch.autograd.grad(ce_loss(model, batch), list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    total[name] += g.float()
    finally:
        model.train(was_training)
    return total


def attribution_scores(model, grad_forget: dict[str, torch.Tensor], grad_retain: dict[str, torch.Tensor],
                       gamma: float) -> dict[str, torch.Tensor]:
    """S = |(θ − ∇ℓ_r / γ) ⊙ ∇ℓ_f| per trainable parameter."""
    params = dict(model.named_parameters())
    return {n: ((params[n].detach().float() - grad_retain[n] / gamma) * g_f).abs() for n, g_f in grad_forget.items()}


def top_mask(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """True on the round(ratio · N) highest scores of all N entries, ranked across every tensor."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = min(max(int(round(ratio * flat.numel())), 1), flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[flat.topk(k).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


@contextmanager
def masked_training(model, mask: dict[str, torch.Tensor], restore: bool) -> Iterator[None]:
    """Train only the entries where `mask` is True: gradients are masked, fully unselected parameters frozen.

    The gradient hooks cover the frozen parameters too, in case a base method unfreezes some in its
    own setup. With `restore`, unselected entries are put back to their values on entry when the block ends.
    """
    params = dict(model.named_parameters())
    masked = [n for n, m in mask.items() if not bool(m.all())]
    frozen = [n for n in masked if not bool(mask[n].any())]
    saved = {n: params[n].detach().clone() for n in masked} if restore else {}
    live = {n: mask[n] for n in masked}

    def hook(name):
        def apply(grad):
            m = live[name]
            if m.device != grad.device:  # the loop may move the model after the hooks are set
                live[name] = m = m.to(grad.device)
            return grad * m
        return apply

    handles = [params[n].register_hook(hook(n)) for n in masked]
    for n in frozen:
        params[n].requires_grad_(False)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for n in frozen:
            params[n].requires_grad_(True)
        with torch.no_grad():
            for n, start in saved.items():
                m = mask[n].to(params[n].device)
                params[n].copy_(torch.where(m, params[n], start.to(params[n].device)))


class WAGLE(Method):
    name = "wagle"
    family = "fine-tuning"
    paper = ("Jia et al. 2024, WAGLE: Strategic Weight Attribution for Effective "
             "and Modular Unlearning in Large Language Models")
    accepts_text = True
    summary = "weight attribution selects the weights; a base fine-tuning method (base=npo, ...) trains only them"
    Config = WAGLEConfig

    def __init__(self, config: WAGLEConfig | None = None) -> None:
        super().__init__(config)
        from obliviate.methods import get_method

        cls = get_method(self.config.base)
        if not issubclass(cls, FinetuneMethod):
            raise ConfigError(f"wagle: base '{self.config.base}' is not a fine-tuning method (family: {cls.family})")
        values = {"seed": self.config.seed, **_parse_base_args(self.config.base_args)}
        self.base: FinetuneMethod = cls(build_config(cls.Config, values, source=f"wagle base_args ({cls.name})"))
        self.uses_retain = True  # the attribution score needs retain gradients
        self.mask: dict[str, torch.Tensor] | None = None

    def compute_mask(self, model, tokenizer, forget, retain) -> dict[str, torch.Tensor]:
        """The attribution mask of `model` on (forget, retain), per trainable parameter."""
        cfg, base_cfg = self.config, self.base.config
        batch_size, max_length = base_cfg.batch_size, base_cfg.max_length
        g_f = summed_gradients(model, tokenizer, forget, batch_size, max_length)
        if retain:  # as many retain batches as forget batches, drawn with the seed
            n = min(math.ceil(len(forget) / batch_size) * batch_size, len(retain))
            sample = random.Random(cfg.seed).sample(list(retain), n)
            g_r = summed_gradients(model, tokenizer, sample, batch_size, max_length)
        else:
            g_r = {k: torch.zeros_like(v) for k, v in g_f.items()}
        return top_mask(attribution_scores(model, g_f, g_r, cfg.hessian_gamma), cfg.mask_ratio)

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MASK_FILE
        if resume and path.exists():
            self.mask = torch.load(path, weights_only=True)
        else:
            self.mask = {n: m.cpu() for n, m in self.compute_mask(model, tokenizer, forget, retain).items()}
            torch.save(self.mask, path)
        selected = sum(int(m.sum()) for m in self.mask.values())
        total = sum(m.numel() for m in self.mask.values())
        with masked_training(model, self.mask, restore=self.base.config.weight_decay > 0):
            summary = self.base.unlearn(model, tokenizer, forget, retain, out_dir, progress=progress, resume=resume)
        path.unlink(missing_ok=True)  # needed only to resume an unfinished run (one byte per weight)
        return {**summary, "base": self.base.name, "selected_weights": selected, "trainable_weights": total}
