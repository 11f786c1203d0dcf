"""key_space_detection's run-time rule: abstain when a query's key-space vector falls inside the forget hypercube.

Li et al. 2025, *Effective Skill Unlearning through Intervention and Abstention*. The query's vector
k (the input of one layer's feed-forward down projection at the prompt's last token, `interventions/ffn.py`)
is inside the hypercube when, in every dimension d,

    |k_d − μ_d| ≤ margin · κ · σ_d

(μ, σ: the forget queries' mean and standard deviation; κ: the smallest factor that holds every
forget query, fitted by `methods/key_space_detection.py`). An inside query is answered with the
refusal (`refusal_ids`, then EOS) instead of the model's answer:

- in generation, the refusal's tokens are emitted one by one (`RefusalProcessor`);
- in scoring, from the prompt's last token on, each position puts probability 1 − ε on the
  refusal's next token (EOS after it) and ε / (V − 1) on every other token (ε = `floor_prob`),
  so a forgotten answer scores about log(ε / V) per token and greedy decoding gives the refusal.

The prompt's end is found by the prompt format's marker (`interventions/regions.py`). Whether a row
abstains depends on its whole prompt, which a continuation fed against a shared prompt cache does
not show: `shares_prompt_cache` is False, and a forward that continues a cache is left alone
(generation applies the refusal through its logits processor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, cache_length, call_model
from obliviate.interventions.ffn import feed_forwards, input_hooks
from obliviate.interventions.regions import Region, find_regions


class KeySpaceAbstention(Intervention):
    """A hypercube in one layer's key space; queries inside it get the refusal (key_space_detection)."""

    kind = "key_space_abstention"
    shares_prompt_cache = False

    def __init__(self, layer: int, mean: torch.Tensor, std: torch.Tensor, kappa: float, margin: float,
                 refusal_ids: Sequence[int], eos_id: int, marker: Sequence[int], floor_prob: float = 1e-6) -> None:
        super().__init__()
        if not 0 < floor_prob < 1:
            raise ObliviateError(f"key_space_detection: floor_prob must be in (0, 1), got {floor_prob}")
        self.layer = int(layer)
        self.mean, self.std = mean.float(), std.float()
        self.kappa, self.margin = float(kappa), float(margin)
        self.refusal_ids, self.eos_id = [int(t) for t in refusal_ids], int(eos_id)
        self.marker = [int(t) for t in marker]
        self.floor_prob = float(floor_prob)

    # -- the rule ----------------------------------------------------------------------------

    def inside(self, keys: torch.Tensor) -> torch.Tensor:
        """(B,) bool: whether each key vector (B, I) lies inside the hypercube."""
        bound = self.margin * self.kappa * self.std.to(keys.device)
        return ((keys.float() - self.mean.to(keys.device)).abs() <= bound).all(-1)

    def forced(self, j: int) -> int:
        """The token a flagged row says at step j after the prompt (the refusal, then EOS)."""
        return self.refusal_ids[j] if j < len(self.refusal_ids) else self.eos_id

    def _run_base(self, base, regions: list[Region] | None = None, **kwargs) -> tuple[Any, list[bool], list[Region]]:
        """The base model's output and, for each row, whether its query (prompt's last token) is inside."""
        ffn = feed_forwards(base, "key_space_detection")[self.layer]
        seen: list[torch.Tensor] = []

        def keep(_k: int, x: torch.Tensor) -> None:
            seen.append(x.detach())

        with input_hooks([ffn.down], keep):
            out = call_model(base, **kwargs)
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        regions = find_regions(ids, mask[:, -ids.shape[1] :], self.marker) if regions is None else regions
        rows = [max(r.prompt_end - 1, r.start) for r in regions]
        keys = seen[0][torch.arange(ids.shape[0], device=seen[0].device), torch.tensor(rows, device=seen[0].device)]
        return out, self.inside(keys).tolist(), regions

    # -- running -----------------------------------------------------------------------------

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        kwargs = dict(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                      output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep)
        if cache_length(past_key_values) > 0:
            return call_model(wrapped.base, **kwargs)  # a continuation: generation refuses through its processor
        if input_ids is None:
            raise ObliviateError("key_space_detection needs token ids to find the query (got inputs_embeds)")
        out, flags, regions = self._run_base(wrapped.base, **kwargs)
        if not any(flags):
            return out
        logits = out.logits.clone()  # (B, n, V): the last n of the T positions
        first = input_ids.shape[1] - logits.shape[1]
        low = math.log(self.floor_prob / (logits.shape[-1] - 1))
        for b, (flag, r) in enumerate(zip(flags, regions, strict=True)):
            if not flag:
                continue
            for p in range(max(r.prompt_end - 1, first, r.start), r.end):  # position p predicts token p + 1
                row = torch.full_like(logits[b, p - first], low)
                row[self.forced(p - (r.prompt_end - 1))] = math.log1p(-self.floor_prob)
                logits[b, p - first] = row
        out.logits = logits
        return out

    @torch.no_grad()
    def flags(self, base, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bool]:
        """Whether each prompt row (B, W) abstains."""
        from obliviate.interventions.base import positions_from_mask

        _, flags, _ = self._run_base(base, input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=positions_from_mask(attention_mask, input_ids.shape[1]),
                                     use_cache=False, logits_to_keep=1)
        return flags

    def generation_processors(self, wrapped, input_ids, attention_mask) -> list:
        return [RefusalProcessor(self, self.flags(wrapped.base, input_ids, attention_mask), input_ids.shape[1])]

    # -- persistence -------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {"layer": self.layer, "kappa": self.kappa, "margin": self.margin, "refusal_ids": self.refusal_ids,
                "eos_id": self.eos_id, "marker": self.marker, "floor_prob": self.floor_prob}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> KeySpaceAbstention:
        return cls(config["layer"], tensors["mean"], tensors["std"], config["kappa"], config["margin"],
                   config["refusal_ids"], config["eos_id"], config["marker"], config["floor_prob"])


class RefusalProcessor(LogitsProcessor):
    """In rows that abstain, only the refusal's next token (then EOS) is allowed."""

    def __init__(self, rule: KeySpaceAbstention, flags: Sequence[bool], prompt_width: int) -> None:
        self.rule, self.flags, self.prompt_width = rule, list(flags), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [b for b, flag in enumerate(self.flags) if flag]
        if not rows:
            return scores
        scores = scores.clone()
        token = self.rule.forced(input_ids.shape[1] - self.prompt_width)
        scores[rows] = -math.inf
        scores[rows, token] = 0.0
        return scores
