"""Representation Misdirection for Unlearning (RMU).

Li et al. 2024, *The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning*.

Push the residual stream after layer ℓ towards a fixed random direction on forget data, and keep it
where the frozen model had it on retain data:

    L = ‖h_ℓ(x_f) − c·u‖² + α · ‖h_ℓ(x_r) − h_ℓ^frozen(x_r)‖²

u ~ U[0, 1)^d normalised to unit length (seeded), each ‖·‖² a mean over the hidden dimension and the
scored tokens of a sequence, then over the batch (open-unlearning's reduction; the WMDP code takes a
plain mean over every token). Only the MLPs of layers ℓ−2..ℓ train.

Paper defaults (Zephyr-7B, 32 layers): ℓ = 7, update layers 5-7 (`mlp.down_proj` only), c = 6.5,
α = 1200, lr 5e-5 at a constant rate (`schedule=constant`, in `paper_defaults`), batch 4, 150
batches. Here ℓ scales with depth as round(7/32 · L), clamped to
[1, L−1], and every MLP weight of the updated layers trains unless `params` names a sub-module.

Choices for QA data and tiny models:
- scored tokens ("answer" positions): the positions whose next token is an answer token, i.e. the
  last prompt token through the last answer token before EOS. open-unlearning masks the positions
  *of* answer tokens, one later, which misses the position that predicts the first answer token:
  the one that matters most when answers are 1-3 words long. `positions=all` scores every
  non-padding token, as WMDP does on plain text.
- c and the step budget: c is set per model (the WMDP code uses 6.5 for Zephyr-7B and 300 for
  Yi-34B and Mixtral; open-unlearning's shipped `configs/trainer/RMU.yaml` uses c = 300 with
  α = 1000, layer 7 and the down-projections of layers 5-7, and its WMDP experiment lr 1e-5 for 10
  epochs at a constant rate). On the built-in world's models (2 layers,
  hidden 64, ℓ = 1) the forget term must win against α = 1200 times the retain drift, and it only
  does for large c: with lr 5e-3 and 20 epochs, forget10 on the small world (seed 0) keeps forget
  ROUGE at 1.00 for c = 30 and 0.97 for c = 60, and reaches 0.08 for c = 100 at model utility
  0.89 (target 0.94); on the tiny world c = 30 leaves forget ROUGE at 1.00, c = 100 gives 0.05.
  The world defaults are c = 100, lr 5e-3, 20 epochs (the paper takes 150 batches) with the
  paper's α = 1200; for Zephyr-scale models set c = 6.5, lr = 5e-5.
- frozen activations: h_ℓ^frozen is computed with `torch.func.functional_call` on the same model
  with the original values of the trained tensors swapped in, in eval mode and stopped at layer ℓ,
  so no second model is kept in memory (layers below ℓ−2 are frozen and identical anyway).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from obliviate.errors import ConfigError
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.models.layers import decoder_layers, feed_forward
from obliviate.train.data import IGNORE


def default_layer(n_layers: int) -> int:
    """ℓ = round(7/32 · L) clamped to [1, L−1]: the paper's layer 7 of 32, scaled to depth."""
    return min(max(round(7 * n_layers / 32), 1), max(n_layers - 1, 0))


def scored_positions(batch: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """(B, T) bool mask of the token positions whose activations are steered / anchored."""
    if which == "all":
        return batch["attention_mask"].bool()
    mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != IGNORE  # the position predicts an answer token
    return mask


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of (mean over masked tokens of the mean over d of (a − b)²); a, b (B, T, D)."""
    per_token = (a.float() - b.float()).pow(2).mean(dim=-1)  # (B, T)
    per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
    return per_seq.mean()


class _StopForward(Exception):
    """Raised by a hook once layer ℓ has run: nothing after it is needed for the frozen pass."""


def layer_output(model, layer: nn.Module, batch: dict[str, torch.Tensor], stop: bool = False,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The output hidden state (B, T, D) of `layer` for `batch`.

    `params` swaps parameter values in for this call only (functional_call); `stop` ends the
    forward pass right after `layer` (only for passes without gradients).
    """
    cache: list[torch.Tensor] = []

    def hook(_module, _args, output):
        cache.append(output[0] if isinstance(output, tuple) else output)
        if stop:
            raise _StopForward

    handle = layer.register_forward_hook(hook)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    try:
        if params is None:
            model(**inputs)
        else:
            functional_call(model, params, args=(), kwargs=inputs, strict=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return cache[0]


class RMUConfig(FinetuneConfig):
    layer: int | None = Field(None, description="layer ℓ whose output is steered (0-based); default "
                              "round(7/32 · n_layers) clamped to [1, n_layers−1], i.e. 7 for 32 layers")
    update_layers: list[int] | None = Field(None, description="layers whose `params` train; default ℓ−2..ℓ")
    params: str = Field("mlp", description="sub-module of each updated layer that trains: 'mlp' (the layer's "
                        "feed-forward block, whatever its name: all MLP or expert weights) or a path such as "
                        "'mlp.down_proj' (the paper's choice on Llama/Mistral; 'mlp.c_proj' on GPT-2)")
    lr: float = Field(5e-3, gt=0, description="peak learning rate (AdamW); world default, the paper uses "
                      "5e-5 on 7B models")
    epochs: int = Field(20, ge=1, description="passes over the forget set; world default (the paper: 150 "
                        "batches of 4)")
    steering_coeff: float = Field(100.0, description="c, the norm of the random target c·u; world default "
                                  "(paper: 6.5 on Zephyr-7B, 300 on Yi-34B; see the module docstring)", gt=0)
    alpha: float = Field(1200.0, description="α, weight of the retain activation-matching term", ge=0)
    positions: Literal["answer", "all"] = Field(
        "answer", description="tokens scored: 'answer' (positions predicting an answer token) or 'all' non-padding")


class RMU(FinetuneMethod):
    # WMDP's recipe (layer 7 of 32, layers 5-7): the layer stays relative to depth here (`layer`'s default)
    paper_defaults = {"lr": 5e-5, "epochs": 1, "max_steps": 150, "batch_size": 4, "grad_accum": 1,
                      "steering_coeff": 6.5, "alpha": 1200.0, "warmup_ratio": 0.0, "weight_decay": 0.0,
                      "schedule": "constant"}
    name = "rmu"
    paper = "Li et al. 2024, The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning"
    accepts_text = True
    summary = "steer layer-ℓ activations on forget data to a random vector, pin them on retain data"
    Config = RMUConfig
    uses_retain = True

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        layers = decoder_layers(model)
        n = len(layers)
        self.layer_index = cfg.layer if cfg.layer is not None else default_layer(n)
        if not 0 <= self.layer_index < n:
            raise ConfigError(f"rmu: layer={self.layer_index} is outside the model's {n} layers (0..{n - 1})")
        update = cfg.update_layers if cfg.update_layers is not None else list(
            range(max(self.layer_index - 2, 0), self.layer_index + 1))
        if any(not 0 <= i < n for i in update):
            raise ConfigError(f"rmu: update_layers={update} must lie in 0..{n - 1}")
        self.layer = layers[self.layer_index]

        for p in model.parameters():
            p.requires_grad_(False)
        names = {id(p): name for name, p in model.named_parameters()}
        self.frozen: dict[str, torch.Tensor] = {}  # original values of the trained tensors, by name
        for i in update:
            try:
                module = feed_forward(layers[i])[1] if cfg.params == "mlp" else layers[i].get_submodule(cfg.params)
            except (AttributeError, ConfigError) as err:
                raise ConfigError(f"rmu: layer {i} has no sub-module '{cfg.params}' (set params=...)") from err
            chosen = list(module.named_parameters())
            # Under LoRA only the adapters of the chosen modules train; the base weights stay frozen.
            if any("lora_" in n for n, _ in chosen):
                chosen = [(n, p) for n, p in chosen if "lora_" in n]
            for _, p in chosen:
                p.requires_grad_(True)
                self.frozen[names[id(p)]] = p.detach().clone()

        dim = model.get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(dim, generator=generator)  # U[0, 1)^d, as in the WMDP code
        self.control_vec = cfg.steering_coeff * u / u.norm()  # (D,)

    def _frozen_output(self, model, batch) -> torch.Tensor:
        base = getattr(model, "module", model)  # functional_call needs the unwrapped module's names
        was_training = base.training
        base.eval()
        try:
            with torch.no_grad():
                return layer_output(base, self.layer, batch, stop=True, params=self.frozen)
        finally:
            base.train(was_training)

    def compute_loss(self, model, batch) -> LossOutput:
        cfg = self.config
        h_f = layer_output(model, self.layer, batch.forget)  # (B, T, D)
        target = self.control_vec.to(h_f.device, h_f.dtype).expand_as(h_f)
        forget_loss = masked_mse(h_f, target, scored_positions(batch.forget, cfg.positions))
        logs = {"forget_loss": float(forget_loss.detach())}
        loss = forget_loss
        if batch.retain is not None:
            h_r = layer_output(model, self.layer, batch.retain)
            h_r0 = self._frozen_output(model, batch.retain)
            retain_loss = masked_mse(h_r, h_r0, scored_positions(batch.retain, cfg.positions))
            loss = loss + cfg.alpha * retain_loss
            logs["retain_loss"] = float(retain_loss.detach())
        return LossOutput(loss, logs)
