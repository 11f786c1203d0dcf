"""neuron_adjust's run-time rule: shift selected feed-forward pre-activations towards the retain distribution.

Li et al. 2025, *Effective Skill Unlearning through Intervention and Abstention*. Each selected
neuron j of layer l has a retain distribution N(μ_r, σ_r) and a forget distribution N(μ_f, σ_f)
of its pre-activation (fitted by `methods/neuron_adjust.py`). At every position, a value x that is
at least as likely under the forget distribution as under the retain one, p_f(x) ≥ p_r(x), is
mapped into the retain distribution and reflected about its mean:

    x' = 2μ_r − (μ_r + σ_r (x − μ_f) / σ_f) = μ_r − σ_r (x − μ_f) / σ_f

Values likelier under the retain distribution are left alone. With `rule="sample"` (the
reference's draw) a value with p_f ≥ p_r is changed only with probability 1 − p_r / (p_r + p_f),
drawn from a generator seeded afresh on every forward call.

The rule acts on each position alone, so a prompt's cache may be shared and continued.
"""

from __future__ import annotations

from typing import Any

import torch

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, call_model
from obliviate.interventions.ffn import feed_forwards, input_hooks

RULES = ("likelihood", "sample")
STATS = ("mu_retain", "sd_retain", "mu_forget", "sd_forget")
SD_FLOOR = 1e-4  # the smallest standard deviation a fitted distribution keeps (a constant neuron)


class NeuronShift(Intervention):
    """Per-neuron distribution shift of feed-forward pre-activations (neuron_adjust)."""

    kind = "neuron_shift"

    def __init__(self, layer: torch.Tensor, neuron: torch.Tensor, stats: dict[str, torch.Tensor],
                 rule: str = "likelihood", seed: int = 0) -> None:
        super().__init__()
        if rule not in RULES:
            raise ObliviateError(f"neuron_adjust: unknown rule {rule!r}; choose one of {', '.join(RULES)}")
        self.layer, self.neuron = layer.long(), neuron.long()
        self.stats = {k: stats[k].float() for k in STATS}
        self.rule, self.seed = rule, int(seed)

    def layers(self) -> list[int]:
        return sorted(set(self.layer.tolist()))

    def shift(self, x: torch.Tensor, layer: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (B, T, I) with the selected neurons of `layer` shifted (a new tensor)."""
        pick = self.layer == layer
        idx = self.neuron[pick].to(x.device)
        mu_r, sd_r, mu_f, sd_f = (self.stats[k][pick].to(x.device) for k in STATS)
        v = x[..., idx].float()  # (B, T, n)
        log_r = -torch.log(sd_r) - 0.5 * ((v - mu_r) / sd_r) ** 2  # log N(v; μ_r, σ_r) + const
        log_f = -torch.log(sd_f) - 0.5 * ((v - mu_f) / sd_f) ** 2
        change = log_f >= log_r
        if self.rule == "sample":
            u = torch.rand(v.shape, generator=generator, device="cpu").to(v.device)
            change &= u >= torch.sigmoid(log_r - log_f)  # p_r / (p_r + p_f)
        moved = mu_r - sd_r * (v - mu_f) / sd_f
        out = x.clone()
        out[..., idx] = torch.where(change, moved, v).to(x.dtype)
        return out

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        ffns = feed_forwards(wrapped.base, "neuron_adjust")
        layers = self.layers()
        generator = torch.Generator().manual_seed(self.seed) if self.rule == "sample" else None
        with input_hooks([ffns[i].act for i in layers], lambda k, x: self.shift(x, layers[k], generator)):
            return call_model(wrapped.base, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, use_cache=use_cache,
                              output_hidden_states=output_hidden_states)

    # -- persistence -------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {"rule": self.rule, "seed": self.seed, "neurons": int(self.neuron.numel())}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"layer": self.layer, "neuron": self.neuron, **self.stats}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> NeuronShift:
        return cls(tensors["layer"], tensors["neuron"], {k: tensors[k] for k in STATS}, config["rule"],
                   config.get("seed", 0))

