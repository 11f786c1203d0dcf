"""Neuron Adjust (NA): shift the feed-forward pre-activations of a skill's neurons towards the retain distribution.

Li et al. 2025, *Effective Skill Unlearning through Intervention and Abstention* (NAACL; code
`Trustworthy-ML-Lab/effective_skill_unlearning`). Training-free; the weights are untouched.

1. **Probe.** Run the frozen model on the forget items and on the retain items (prompt + answer,
   every real token) and record each feed-forward neuron's pre-activation `(W_gate x)_j` in every
   layer (the reference hooks `mlp.gate_proj`'s output; here the input of the activation module,
   the same values, `interventions/ffn.py`). Fit a normal distribution per neuron and per set:
   N(μ_f, σ_f) on the forget skill, N(μ_r, σ_r) on the retained skills.
2. **Select.** Δ_j = μ_f,j − μ_r,j over the neurons of all layers together; the neurons whose Δ is
   among the top `percent` % (Δ ≥ the value at that percentile) are selected. The reference keeps
   3 % for its skill pairs (GSM8K/MBPP) and 0.5 % for languages.
3. **Adjust** at inference, at every position (`interventions/neuron_shift.py`): a selected
   neuron's value x with p_f(x) ≥ p_r(x) becomes

       x' = μ_r − σ_r (x − μ_f) / σ_f

   (mapped into the retain distribution, then reflected about μ_r); other values are kept.

Defaults: the paper's (`--defaults paper`) are `percent` 3.0 (the reference's skill setting) and
`rule="sample"`; the world's are `percent` 7.0 and `rule="likelihood"`. On the tiny world's skill
task (`world/skills.py`: 2 layers × 128 neurons) 3 % is 8 neurons, and moves arithmetic test
accuracy only from 0.92 to 0.52; 7 % (18 neurons) takes it to 0.20 while copying stays at 0.96 and
the facts at 0.92 (10 %: 0.12, with the facts down to 0.84). The probes use every forget and retain
item given (the reference's `--N` caps a probe at 200 examples: `max_items`).

Differs from the reference:
- `rule="likelihood"` (the default) changes every value with p_f ≥ p_r; the reference draws a
  number per value and changes it with probability 1 − p_r/(p_r + p_f) (between 1/2 and 1), which
  is `rule="sample"` (the paper defaults). The draw makes two scorings of one input differ and
  greedy generation stop being the argmax of the scored distribution, so the deterministic rule is
  the world default;
- σ is the standard deviation: the reference's running statistics store the variance under "std"
  (no square root), and its hook passes μ_f as σ_f; both are taken as slips;
- statistics are per neuron over every real token of prompt + answer in the project's prompt
  format (the reference probes the raw answer texts, one example per forward call).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from obliviate.errors import ConfigError
from obliviate.interventions.ffn import feed_forwards, real_tokens, record_inputs
from obliviate.interventions.neuron_shift import SD_FLOOR, NeuronShift
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import InterventionMethod, item_kind


class NeuronAdjustConfig(MethodConfig):
    percent: float = Field(7.0, gt=0, le=100, description="share (%) of all feed-forward neurons adjusted: those "
                           "whose forget mean exceeds their retain mean the most")
    rule: Literal["likelihood", "sample"] = Field(
        "likelihood", description="which values move: 'likelihood' (every value likelier under the forget "
        "distribution) or 'sample' (the reference's random draw); see the module docstring")
    max_items: int | None = Field(None, ge=1, description="probe at most this many forget and retain items each")
    batch_size: int = Field(16, ge=1, description="items per probing forward pass")


def sequences(tokenizer, items, max_items: int | None) -> list[list[int]]:
    """Prompt + answer token ids of each item, in the tokenizer's prompt format."""
    from obliviate.models.prompts import encode_pair

    return [p + a for p, a in (encode_pair(tokenizer, it.question, it.answer, eos=False)
                               for it in list(items)[:max_items])]


def neuron_stats(model, modules, rows, pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of every neuron's input to each module over every real token: two (L, I) tensors."""
    recorded = record_inputs(model, modules, rows, pad_id, real_tokens, batch_size)
    values = [torch.cat(chunks).double() for chunks in recorded]  # L × (N, I)
    return (torch.stack([v.mean(0) for v in values]).float(),
            torch.stack([v.std(0, unbiased=False) for v in values]).float().clamp(min=SD_FLOOR))


def top_percent(delta: torch.Tensor, percent: float) -> torch.Tensor:
    """Mask of the entries of `delta` at or above its top-`percent` % value (the reference's percentile rule)."""
    flat = delta.flatten().sort().values
    index = min(max(int(len(flat) * (1 - percent / 100)), 0), len(flat) - 1)
    return delta >= flat[index]


class NeuronAdjust(InterventionMethod):
    name = "neuron_adjust"
    paper = "Li et al. 2025, Effective Skill Unlearning through Intervention and Abstention"
    summary = "shift the forget skill's feed-forward pre-activations towards their retain distribution"
    Config = NeuronAdjustConfig
    uses_retain = True
    paper_defaults = {"rule": "sample", "percent": 3.0}

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        if not forget or not retain:
            raise ConfigError("neuron_adjust needs forget and retain items (the two skills' distributions)")
        acts = [f.act for f in feed_forwards(model, self.name)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        mu_f, sd_f = neuron_stats(model, acts, sequences(tokenizer, forget, cfg.max_items), pad, cfg.batch_size)
        mu_r, sd_r = neuron_stats(model, acts, sequences(tokenizer, retain, cfg.max_items), pad, cfg.batch_size)
        chosen = top_percent(mu_f - mu_r, cfg.percent)  # (L, I)
        layer, neuron = chosen.nonzero(as_tuple=True)
        stats = {"mu_retain": mu_r[chosen], "sd_retain": sd_r[chosen], "mu_forget": mu_f[chosen],
                 "sd_forget": sd_f[chosen]}
        shift = NeuronShift(layer, neuron, stats, cfg.rule, cfg.seed)
        return shift, {"neurons": int(chosen.sum()), "of": int(chosen.numel()),
                       "per_layer": chosen.sum(-1).tolist(),
                       "mean_gap": float((mu_f - mu_r)[chosen].mean()), "rule": cfg.rule}
