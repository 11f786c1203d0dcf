"""Prefix interventions: embeddings placed before every input (soft prompts, in-context examples).

The frozen model reads one document, [BOS | prefix | input without its BOS]:

    caller's tokens  BOS x_1..x_n at positions 0..n, mask m (B, S)
    model sees       BOS at 0, prefix at 1..K, x_i at i + K; the caller's own BOS is masked out

The BOS + prefix part (P = K + 1 positions) is run once into a KV cache, memoised while neither
the prefix nor the model changes, and every call continues that cache, so the caller never sees
the prefix: logits and hidden states come back for the caller's T tokens only. A cache the
wrapper returns already holds the prefix; when it is passed back in, only the P ones in front of
the mask are added (and the caller's first real column, its BOS, masked again). Such a cache is an
ordinary `DynamicCache`, so the scorer's prompt sharing works unchanged. With gradients enabled
(training a soft prompt) the prefix cache is recomputed on every call, so the gradient reaches the
prefix through its keys and values.

Masking the caller's BOS keeps a single BOS at position 0, where the model saw it in training
(PEFT's prompt tuning puts the virtual tokens before the BOS instead). It requires every input to
start with the tokenizer's BOS, as every encoding in obliviate does; an input that does not is
refused. For a tokenizer without a BOS (`bos_id=None`) the prefix is simply prepended.

- `SoftPrompt`: K trained vectors (Lester et al. 2021; with SPUL's P-tuning encoder, Liu et al.
  2021, during training).
- `InContextPrefix`: real context tokens (ICUL and the prompt baseline); equal to feeding the
  tokens themselves, `context + input[1:]`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.interventions.base import (
    Intervention,
    cache_length,
    call_model,
    parameter_versions,
)


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts in front of every encoding, or None if it adds none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


class PrefixIntervention(Intervention):
    """Base of interventions that put a prefix before every input (see the module docstring)."""

    def __init__(self, bos_id: int | None = None) -> None:
        super().__init__()
        self.bos_id = None if bos_id is None else int(bos_id)
        self._memo: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def prefix_embeds(self, base: nn.Module) -> torch.Tensor:
        """What is cached before every input, as input embeddings of `base`: (P, H), BOS included."""
        raise NotImplementedError

    @property
    def prefix_length(self) -> int:
        """P, the cached positions (the BOS included)."""
        raise NotImplementedError

    def visible_cache_length(self, past: Any) -> int:
        return max(0, cache_length(past) - self.prefix_length)

    def release(self) -> None:
        self._memo = None

    def _prefix_kv(self, base: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of the prefix, each (1, H_kv, P, D); memoised without grad."""
        device = next(base.parameters()).device
        key = (id(base), device, parameter_versions(self), parameter_versions(base))
        if not torch.is_grad_enabled() and self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        embeds = self.prefix_embeds(base).to(device)[None]  # (1, P, H)
        p = embeds.shape[1]
        out = base(inputs_embeds=embeds, attention_mask=torch.ones(1, p, dtype=torch.long, device=device),
                   position_ids=torch.arange(p, device=device)[None], use_cache=True)
        kv = [(layer[0], layer[1]) for layer in out.past_key_values]
        if not torch.is_grad_enabled():
            self._memo = (key, kv)
        return kv

    def _mask_and_check_bos(self, input_ids, mask: torch.Tensor, fresh: bool) -> torch.Tensor:
        """The caller's mask with each row's first real column (its BOS) masked out."""
        rows = torch.arange(mask.shape[0], device=mask.device)
        first = mask.argmax(-1)  # (B,) first real column (0 for an all-padding row, already masked)
        if fresh and input_ids is not None:
            real = mask.any(-1)
            if bool((input_ids[rows, first] != self.bos_id)[real].any()):
                raise ObliviateError(f"{type(self).__name__}: every input must start with the BOS token "
                                     f"(id {self.bos_id}); the prefix takes its place")
        mask = mask.clone()
        mask[rows, first] = 0
        return mask

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds) -> CausalLMOutputWithPast:
        base = wrapped.base
        p = self.prefix_length
        embeds = inputs_embeds if inputs_embeds is not None else base.get_input_embeddings()(input_ids)  # (B, T, H)
        batch, device = embeds.shape[0], embeds.device
        fresh = cache_length(past_key_values) == 0
        if fresh:
            kv = self._prefix_kv(base)
            past_key_values = DynamicCache([(kk.expand(batch, -1, -1, -1), vv.expand(batch, -1, -1, -1))
                                            for kk, vv in kv], config=base.config)
        elif cache_length(past_key_values) < p:
            raise ObliviateError("a cache passed to a prefix intervention must come from the same intervention")
        mask = attention_mask.to(device)
        shift = p
        if self.bos_id is not None:
            mask = self._mask_and_check_bos(input_ids, mask, fresh)
            shift = p - 1  # the caller's token at position i (i ≥ 1) goes to i + K
        out = call_model(
            base, logits_to_keep,
            inputs_embeds=embeds,
            attention_mask=torch.cat([mask.new_ones(batch, p), mask], dim=1),  # (B, P + S)
            position_ids=position_ids.to(device) + shift,
            past_key_values=past_key_values,
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )
        return CausalLMOutputWithPast(logits=out.logits, hidden_states=out.hidden_states,
                                      past_key_values=out.past_key_values if use_cache else None)


class SoftPrompt(PrefixIntervention):
    """K trainable input vectors after the BOS of every input.

    During training the vectors may come from an `encoder` module (SPUL's P-tuning MLP); `bake()`
    stores its output as a plain (K, H) tensor, which is all that is saved and loaded.
    """

    kind = "soft_prompt"

    def __init__(self, prompt: torch.Tensor | None = None, encoder: nn.Module | None = None,
                 num_tokens: int | None = None, bos_id: int | None = None) -> None:
        super().__init__(bos_id)
        if (prompt is None) == (encoder is None):
            raise ValueError("give exactly one of prompt and encoder")
        self.encoder = encoder
        self.prompt = nn.Parameter(prompt.detach().clone()) if prompt is not None else None
        self._num_tokens = int(prompt.shape[0]) if prompt is not None else int(num_tokens)

    @property
    def prefix_length(self) -> int:
        return self._num_tokens + (self.bos_id is not None)

    def virtual_tokens(self, base: nn.Module) -> torch.Tensor:
        """The K vectors, (K, H), in the model's dtype."""
        dtype = base.get_input_embeddings().weight.dtype
        if self.encoder is not None:
            device = next(self.encoder.parameters()).device
            return self.encoder(torch.arange(self._num_tokens, device=device)).to(dtype)
        return self.prompt.to(dtype)

    def prefix_embeds(self, base: nn.Module) -> torch.Tensor:
        tokens = self.virtual_tokens(base)
        if self.bos_id is None:
            return tokens
        emb = base.get_input_embeddings()
        bos = emb(torch.tensor([self.bos_id], device=emb.weight.device)).to(tokens.device)
        return torch.cat([bos, tokens], dim=0)  # (1 + K, H)

    @torch.no_grad()
    def bake(self, base: nn.Module) -> SoftPrompt:
        """The same prompt as a plain tensor (drops the encoder)."""
        return SoftPrompt(prompt=self.virtual_tokens(base).float(), bos_id=self.bos_id).requires_grad_(False)

    def state_config(self) -> dict[str, Any]:
        return {"num_tokens": self._num_tokens, "bos_id": self.bos_id}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.prompt is None:
            raise ObliviateError("bake() a soft prompt with an encoder before saving it")
        return {"prompt": self.prompt}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> SoftPrompt:
        out = cls(prompt=tensors["prompt"], bos_id=config.get("bos_id"))
        out.requires_grad_(False)
        return out.to(next(model.parameters()).device)


class InContextPrefix(PrefixIntervention):
    """Real context tokens before every input: ICUL's examples or a prompt baseline's instruction.

    `context_ids` start with the BOS when the tokenizer adds one (`bos_id`).
    """

    kind = "in_context"

    def __init__(self, context_ids: list[int], context: str = "", bos_id: int | None = None) -> None:
        super().__init__(bos_id)
        if len(context_ids) < 1 + (bos_id is not None):
            raise ObliviateError("an in-context prefix needs at least one token besides the BOS")
        if bos_id is not None and context_ids[0] != bos_id:
            raise ObliviateError("an in-context prefix with a BOS must start with it")
        self.context = context
        self.register_buffer("context_ids", torch.tensor(context_ids, dtype=torch.long), persistent=False)

    @classmethod
    def from_text(cls, tokenizer, context: str) -> InContextPrefix:
        """The context encoded as the tokenizer encodes any text (with its BOS)."""
        ids = list(tokenizer(context, add_special_tokens=True)["input_ids"])
        return cls(ids, context, tokenizer_bos(tokenizer))

    @property
    def prefix_length(self) -> int:
        return int(self.context_ids.shape[0])

    def prefix_embeds(self, base: nn.Module) -> torch.Tensor:
        emb = base.get_input_embeddings()
        return emb(self.context_ids.to(emb.weight.device))

    def state_config(self) -> dict[str, Any]:
        return {"context": self.context, "context_ids": self.context_ids.tolist(), "bos_id": self.bos_id}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> InContextPrefix:
        return cls(list(config["context_ids"]), config.get("context", ""), config.get("bos_id"))
