"""`InterventionModel`: a frozen model wrapped by an intervention, keeping the model's interface.

It scores log-probabilities, generates and exposes hidden states exactly as the model does, so every
metric and attack runs the same code on an unlearned model and on a wrapped one (`Intervention.wrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, lm_loss, positions_from_mask

# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------

# forward() keywords that are derived here (positions of the cache) and safely ignored.
_IGNORED_FORWARD = {"cache_position"}
# generate() keywords that do not change greedy/sampled decoding here and are accepted as HF's are.
_IGNORED_GENERATE_KWARGS = {"output_scores", "output_logits", "output_attentions", "synced_gpus"}


class InterventionModel(nn.Module):
    """A frozen causal LM under an intervention, with the LM's interface (see the module docstring)."""

    def __init__(self, base: nn.Module, intervention: Intervention, tokenizer=None) -> None:
        super().__init__()
        self.base = base
        self.intervention = intervention
        self.tokenizer = tokenizer
        # A fresh module is in training mode; take the model's own mode so `eval_mode` restores
        # the model to what it was, not to training.
        self.train(base.training)

    # -- what callers read off a model --------------------------------------------------------

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return getattr(self.base, "generation_config", None)

    @property
    def device(self) -> torch.device:
        device = getattr(self.base, "device", None)
        return device if isinstance(device, torch.device) else next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    @property
    def name_or_path(self) -> str:
        return getattr(self.base, "name_or_path", "") or getattr(self.base.config, "_name_or_path", "")

    @property
    def shares_prompt_cache(self) -> bool:
        return self.intervention.shares_prompt_cache

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        unknown = sorted(k for k, v in kwargs.items()
                         if v is not None and v is not False and k not in _IGNORED_FORWARD)
        if unknown:
            raise ObliviateError(f"{type(self.intervention).__name__}: unsupported forward argument(s) {unknown}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, new = ref.shape[:2]
        if attention_mask is None:
            # Without a mask every token so far is real; the caller's view excludes hidden prefixes.
            seen = self.intervention.visible_cache_length(past_key_values) if past_key_values is not None else 0
            attention_mask = torch.ones(batch, seen + new, dtype=torch.long, device=ref.device)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, new)
        out = self.intervention.run(
            self, input_ids, attention_mask, position_ids, past_key_values,
            bool(use_cache) if use_cache is not None else bool(getattr(self.config, "use_cache", True)),
            int(logits_to_keep or 0),
            bool(output_hidden_states), inputs_embeds,
        )
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            out.loss = lm_loss(out.logits, labels)
        return out

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_beams: int = 1,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stopping_criteria: Sequence | None = None,
        logits_processor: Sequence | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Token ids (B, W + new) of `input_ids` (B, W, left-padded) and their continuations.

        Follows HF's decoder-only `generate`: logits processors, then greedy argmax or sampling
        (temperature, top-k, top-p; unset ones come from the model's generation config, as in HF);
        rows that finished (EOS or a stopping criterion) are padded with `pad_token_id`; decoding
        stops when every row has finished or after the budget. The generation config's own
        processors (repetition penalty, banned words, ...) are not applied.
        """
        unknown = sorted(k for k, v in kwargs.items()
                         if v is not None and v is not False and k not in _IGNORED_GENERATE_KWARGS)
        if unknown or num_beams != 1:
            raise ObliviateError(f"generate on an intervention: unsupported argument(s) {unknown or ['num_beams']}")
        gen_cfg = self.generation_config
        setting = lambda value, name, default: value if value is not None else (  # noqa: E731
            getattr(gen_cfg, name, None) if getattr(gen_cfg, name, None) is not None else default)
        do_sample = bool(setting(do_sample, "do_sample", False))
        batch, width = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        eos = _eos_ids(eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None))
        pad = pad_token_id if pad_token_id is not None else getattr(gen_cfg, "pad_token_id", None)
        pad = pad if pad is not None else (eos[0] if eos else 0)
        if max_new_tokens is None:
            max_new_tokens = (max_length - width) if max_length is not None else (
                getattr(gen_cfg, "max_new_tokens", None) or 20)
        processors = LogitsProcessorList(self.intervention.generation_processors(self, input_ids, mask))
        processors.extend(logits_processor or [])
        warpers = LogitsProcessorList()
        if do_sample:
            warpers = _sampling_warpers(setting(temperature, "temperature", 1.0), setting(top_k, "top_k", 0),
                                        setting(top_p, "top_p", 1.0))
        ids, step_ids, past = input_ids, input_ids, None
        unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        for _ in range(max(0, max_new_tokens)):
            if use_cache:
                out = self(input_ids=step_ids, attention_mask=mask, position_ids=positions_from_mask(
                    mask, step_ids.shape[1]), past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
            else:
                out = self(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1]),
                           use_cache=False, logits_to_keep=1)
            scores = processors(ids, out.logits[:, -1].float())  # (B, V)
            if do_sample:
                probs = warpers(ids, scores).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            step_ids = nxt[:, None]
            if eos:
                unfinished &= ~torch.isin(nxt, torch.tensor(eos, device=nxt.device))
            if stopping_criteria:
                for criterion in stopping_criteria:
                    unfinished &= ~criterion(ids, scores).to(unfinished.device)
            if not unfinished.any():
                break
        return ids


def _eos_ids(eos) -> list[int]:
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _sampling_warpers(temperature: float | None, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers
