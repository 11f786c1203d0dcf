"""Key Space Detection (KSD): abstain on queries whose feed-forward key vector falls in the forget skill's hypercube.

Li et al. 2025, *Effective Skill Unlearning through Intervention and Abstention* (NAACL; code
`Trustworthy-ML-Lab/effective_skill_unlearning`). Training-free; the weights are untouched.

1. **Probe.** For every forget query, take the key-space vector k ∈ R^I at the query's last token:
   the input of the down (value) projection of one feed-forward layer, act(W_gate x) ⊙ (W_up x)
   (the reference hooks `model.layers.31.mlp.down_proj`, the last layer of Llama-3-8B;
   `interventions/ffn.py`).
2. **Bound.** μ and σ per dimension over the forget queries, and the tightest factor κ that puts
   every forget query inside the hypercube μ ± κσ:

       κ = max over queries and dimensions of |k_d − μ_d| / σ_d

3. **Abstain.** At inference a query with |k_d − μ_d| ≤ margin · κ · σ_d in every dimension d
   gets the refusal (`refusal`) instead of an answer (`interventions/key_space.py`); any other
   query runs the model unchanged.

Defaults: `layer` −1 (the last layer, as the reference); `margin` 2.0 (the reference's run for
forgetting GSM8K, math: `--adjusting_hyperparam 2`; it uses 1.4 for MBPP, code); the refusal is
one of the project's refusal sentences (the reference's is "Sorry, your query is not valid").

Differs from the reference:
- κ is computed exactly as above; the reference bisects for it to a tolerance of 1e-5;
- only the query (the prompt's last token) is tested; the reference's hook tests every forward
  call, so a generated token can also trigger abstention mid-answer. The query alone decides here,
  so scoring and generation agree;
- the query vectors are read from prompts in the project's prompt format, with σ the sample
  standard deviation (n − 1), as the reference's `get_mean_std`.
"""

from __future__ import annotations

import torch
from pydantic import Field

from obliviate.data.refusals import REFUSALS
from obliviate.errors import ConfigError
from obliviate.interventions.ffn import feed_forwards, last_tokens, record_inputs
from obliviate.interventions.key_space import KeySpaceAbstention
from obliviate.interventions.regions import prompt_marker
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import InterventionMethod, item_kind

SD_FLOOR = 1e-6  # a dimension constant over the forget queries keeps this much room


class KeySpaceDetectionConfig(MethodConfig):
    layer: int = Field(-1, description="feed-forward layer whose down-projection input is the key space "
                       "(negative: from the last)")
    margin: float = Field(2.0, gt=0, description="the hypercube is μ ± margin·κ·σ (κ: the tightest factor that "
                          "holds every forget query)")
    refusal: str = Field(REFUSALS[5], min_length=1, description="what an abstaining query is answered")
    floor_prob: float = Field(1e-6, gt=0, lt=1, description="scoring: probability left to tokens off the refusal")
    batch_size: int = Field(16, ge=1, description="queries per probing forward pass")


def query_rows(tokenizer, items) -> list[list[int]]:
    """Each item's prompt token ids in the tokenizer's prompt format."""
    from obliviate.models.prompts import encode_prompt, format_of

    fmt = format_of(tokenizer)
    return [encode_prompt(tokenizer, fmt.render(it.question, tokenizer), fmt) for it in items]


class KeySpaceDetection(InterventionMethod):
    name = "key_space_detection"
    paper = "Li et al. 2025, Effective Skill Unlearning through Intervention and Abstention"
    summary = "abstain on queries whose feed-forward key vector lies in the forget queries' hypercube"
    Config = KeySpaceDetectionConfig
    paper_defaults = {"layer": -1, "margin": 2.0}

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        from obliviate.models.prompts import encode_pair, format_of

        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        if len(forget) < 2:
            raise ConfigError("key_space_detection needs at least 2 forget items to bound their key vectors")
        ffns = feed_forwards(model, self.name)
        if not -len(ffns) <= cfg.layer < len(ffns):
            raise ConfigError(f"key_space_detection: layer={cfg.layer} is outside the model's {len(ffns)} layers")
        layer = cfg.layer % len(ffns)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        keys = self._keys(model, ffns[layer].down, tokenizer, forget, pad)  # (N, I)
        mean, std = keys.mean(0), keys.std(0, unbiased=True).clamp(min=SD_FLOOR)
        kappa = float(((keys - mean).abs() / std).max())
        _, refusal = encode_pair(tokenizer, forget[0].question, cfg.refusal.strip(), eos=False)
        marker = prompt_marker(tokenizer, format_of(tokenizer), [it.question for it in forget])
        rule = KeySpaceAbstention(layer, mean, std, kappa, cfg.margin, refusal, tokenizer.eos_token_id, marker,
                                  cfg.floor_prob)
        summary = {"layer": layer, "dims": int(keys.shape[1]), "kappa": kappa,
                   "forget_inside": float(rule.inside(keys).float().mean())}
        if retain:
            summary["retain_inside"] = float(rule.inside(self._keys(model, ffns[layer].down, tokenizer, retain,
                                                                    pad)).float().mean())
        return rule, summary

    def _keys(self, model, down, tokenizer, items, pad: int) -> torch.Tensor:
        rows = query_rows(tokenizer, items)
        return torch.cat(record_inputs(model, [down], rows, pad, last_tokens, self.config.batch_size)[0]).double()
