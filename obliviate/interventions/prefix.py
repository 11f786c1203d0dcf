"""Prefix interventions: embeddings placed before the inputs (soft prompts, in-context examples).

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

**Rows may differ.** A prefix can be *gated* by a forget-prompt `Detector` (the classifier of ECO
and GUARD): rows whose prompt it does not flag get no prefix and run exactly as the bare model
(their BOS stays, their positions are not shifted, the prefix columns are masked out). And
`InContextExamples` chooses each row's context from its question. Rows then hold prefixes of
different lengths P_b, right-aligned in a block of width W = max P_b (the free columns masked), and
row b's tokens are shifted by P_b − 1. What each row got is recorded for the cache the call returns,
so a generation that continues it is treated alike; a cache re-batched by someone else could not
be, so such interventions do not share prompt caches with the scorer (`shares_prompt_cache`).
A batch where no row gets a prefix runs the bare model alone.

The three kinds are in `obliviate.interventions.prefix_kinds`:

- `SoftPrompt`: K trained vectors (Lester et al. 2021; with SPUL's P-tuning encoder, Liu et al.
  2021, during training).
- `InContextPrefix`: real context tokens (the prompt baseline); equal to feeding the tokens
  themselves, `context + input[1:]`.
- `InContextExamples`: ICUL's context per query, the forget examples nearest to the question
  (by prompt embedding) followed by fixed correct examples.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from obliviate.interventions.detector import Detector
from obliviate.interventions.regions import PromptReader

STATIC = "static"  # the key of a prefix that is the same for every row
_KV_MEMO = 256  # prefix caches kept per intervention (one per distinct in-context selection)


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts in front of every encoding, or None if it adds none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


@dataclass
class _Layout:
    """Where each row's prefix is in a cache: W columns in front of the caller's tokens."""

    width: int  # W
    prefix_mask: torch.Tensor  # (B, W): 1 on a row's own prefix columns
    shift: torch.Tensor  # (B, 1): added to the caller's positions
    on: torch.Tensor  # (B,) bool: rows with a prefix (their BOS is masked)

    @classmethod
    def uniform(cls, batch: int, width: int, shift: int, device) -> _Layout:
        """Every row with the same prefix of `width` columns (width 0: no row has one)."""
        return cls(width, torch.ones(batch, width, dtype=torch.long, device=device),
                   torch.full((batch, 1), shift, dtype=torch.long, device=device),
                   torch.full((batch,), width > 0, dtype=torch.bool, device=device))


class PrefixIntervention(Intervention):
    """Base of interventions that put a prefix before the inputs (see the module docstring)."""

    reads_questions = False  # whether `select` needs each row's question text

    def __init__(self, bos_id: int | None = None, detector: Detector | None = None) -> None:
        super().__init__()
        self.bos_id = None if bos_id is None else int(bos_id)
        self.detector = detector
        self._kv: OrderedDict[Hashable, tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- what subclasses define ---------------------------------------------------------------

    def prefix_embeds(self, base: nn.Module, key: Hashable = STATIC) -> torch.Tensor:
        """What is cached before an input, as input embeddings of `base`: (P, H), BOS included."""
        raise NotImplementedError

    @property
    def prefix_length(self) -> int:
        """P, the cached positions of the static prefix (the BOS included)."""
        raise NotImplementedError

    def select(self, questions: Sequence[str]) -> list[Hashable]:
        """The prefix key of each question's row; the static prefix by default."""
        return [STATIC] * len(questions)

    @property
    def reader(self) -> PromptReader | None:
        return self.detector.reader if self.detector is not None else None

    # -- bookkeeping --------------------------------------------------------------------------

    @property
    def shares_prompt_cache(self) -> bool:  # type: ignore[override]
        return self.detector is None and not self.reads_questions

    def visible_cache_length(self, past: Any) -> int:
        layout = self._layouts.get(past)
        return max(0, cache_length(past) - (layout.width if layout is not None else self.prefix_length))

    def release(self) -> None:
        self._kv.clear()
        self._layouts = weakref.WeakKeyDictionary()

    def detector_state(self) -> dict[str, Any]:
        return {"detector": self.detector.state()} if self.detector is not None else {}

    def _prefix_kv(self, base: nn.Module, key: Hashable) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of prefix `key`, each (1, H_kv, P, D); memoised without grad."""
        device = next(base.parameters()).device
        version = (id(base), device, parameter_versions(self), parameter_versions(base))
        memo = self._kv.get(key)
        if not torch.is_grad_enabled() and memo is not None and memo[0] == version:
            self._kv.move_to_end(key)
            return memo[1]
        embeds = self.prefix_embeds(base, key).to(device)[None]  # (1, P, H)
        p = embeds.shape[1]
        out = base(inputs_embeds=embeds, attention_mask=torch.ones(1, p, dtype=torch.long, device=device),
                   position_ids=torch.arange(p, device=device)[None], use_cache=True)
        kv = [(layer[0], layer[1]) for layer in out.past_key_values]
        if not torch.is_grad_enabled():
            self._kv[key] = (version, kv)
            while len(self._kv) > _KV_MEMO:
                self._kv.popitem(last=False)
        return kv

    # -- planning a batch ---------------------------------------------------------------------

    def _row_keys(self, tokenizer, input_ids: torch.Tensor | None, mask: torch.Tensor) -> list[Hashable | None]:
        """The prefix key of every row, None for a row that gets no prefix."""
        batch = mask.shape[0]
        if self.detector is None and not self.reads_questions:
            return [STATIC] * batch
        if input_ids is None:
            raise ObliviateError(f"{type(self).__name__} reads the prompt: it needs token ids (got inputs_embeds)")
        if tokenizer is None:
            raise ObliviateError(f"{type(self).__name__} reads the prompt: wrap(model, tokenizer)")
        if self.detector is not None:
            flags, _, questions = self.detector.flags(tokenizer, input_ids, mask)
        else:
            questions, _ = self.reader.read(tokenizer, input_ids, mask)
            flags = np.ones(batch, dtype=bool)
        rows = [b for b in range(batch) if flags[b]]
        keys: list[Hashable | None] = [None] * batch
        for b, key in zip(rows, self.select([questions[b] for b in rows]) if rows else [], strict=True):
            keys[b] = key
        return keys

    def _assemble(self, base: nn.Module, keys: list[Hashable | None], device) -> tuple[_Layout, DynamicCache | None]:
        """The layout and the prefix cache (None when no row has a prefix) of one fresh batch."""
        batch = len(keys)
        unique = list(dict.fromkeys(k for k in keys if k is not None))
        if not unique:
            return _Layout.uniform(batch, 0, 0, device), None
        kvs = {k: self._prefix_kv(base, k) for k in unique}
        length = {k: int(kv[0][0].shape[-2]) for k, kv in kvs.items()}
        width = max(length.values())
        drop = 1 if self.bos_id is not None else 0  # the caller's BOS gives way to the prefix's
        if len(unique) == 1 and all(k is not None for k in keys):  # one prefix for all: a view, no copy
            kv = kvs[unique[0]]
            layers = [(kk.expand(batch, -1, -1, -1), vv.expand(batch, -1, -1, -1)) for kk, vv in kv]
            return _Layout.uniform(batch, width, width - drop, device), DynamicCache(layers, config=base.config)
        prefix_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        shift = torch.zeros(batch, 1, dtype=torch.long, device=device)
        layers = []
        for layer in range(len(kvs[unique[0]])):
            kk0, vv0 = kvs[unique[0]][layer]
            kk = kk0.new_zeros(batch, kk0.shape[1], width, kk0.shape[3])  # (B, H_kv, W, D); free columns masked
            vv = vv0.new_zeros(batch, vv0.shape[1], width, vv0.shape[3])
            for b, k in enumerate(keys):
                if k is not None:
                    kk[b, :, width - length[k]:] = kvs[k][layer][0][0]
                    vv[b, :, width - length[k]:] = kvs[k][layer][1][0]
            layers.append((kk, vv))
        for b, k in enumerate(keys):
            if k is not None:
                prefix_mask[b, width - length[k]:] = 1
                shift[b] = length[k] - drop
        on = torch.tensor([k is not None for k in keys], device=device)
        return _Layout(width, prefix_mask, shift, on), DynamicCache(layers, config=base.config)

    def _static_layout(self, batch: int, device) -> _Layout:
        """Every row with the static prefix: the layout of a cache this intervention did not record."""
        p = self.prefix_length
        return _Layout.uniform(batch, p, p - (1 if self.bos_id is not None else 0), device)

    def _mask_bos(self, input_ids, mask: torch.Tensor, on: torch.Tensor, fresh: bool) -> torch.Tensor:
        """The caller's mask with the first real column (its BOS) of each prefixed row masked out."""
        rows = torch.nonzero(on & mask.bool().any(-1)).squeeze(-1)
        first = mask.argmax(-1)[rows]  # first real column of each such row
        if fresh and input_ids is not None and bool((input_ids[rows, first] != self.bos_id).any()):
            raise ObliviateError(f"{type(self).__name__}: every input must start with the BOS token "
                                 f"(id {self.bos_id}); the prefix takes its place")
        mask = mask.clone()
        mask[rows, first] = 0
        return mask

    # -- running ------------------------------------------------------------------------------

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds) -> CausalLMOutputWithPast:
        base = wrapped.base
        embeds = inputs_embeds if inputs_embeds is not None else base.get_input_embeddings()(input_ids)  # (B, T, H)
        device = embeds.device
        mask = attention_mask.to(device)
        fresh = cache_length(past_key_values) == 0
        if fresh:
            layout, past_key_values = self._assemble(base, self._row_keys(wrapped.tokenizer, input_ids, mask), device)
        else:
            layout = self._layouts.get(past_key_values)
            if layout is None:
                if not self.shares_prompt_cache:
                    raise ObliviateError(f"{type(self).__name__}: continue only caches it returned, un-rebatched")
                layout = self._static_layout(embeds.shape[0], device)
            if cache_length(past_key_values) < layout.width:
                raise ObliviateError("a cache passed to a prefix intervention must come from the same intervention")
        if self.bos_id is not None and layout.width:
            mask = self._mask_bos(input_ids, mask, layout.on, fresh)
        out = call_model(
            base, logits_to_keep,
            inputs_embeds=embeds,
            attention_mask=torch.cat([layout.prefix_mask.to(mask.dtype), mask], dim=1),  # (B, W + S)
            position_ids=position_ids.to(device) + layout.shift,
            past_key_values=past_key_values,
            use_cache=use_cache or layout.width > 0,
            output_hidden_states=output_hidden_states,
        )
        cache = out.past_key_values if use_cache else None
        if cache is not None and not self.shares_prompt_cache:
            self._layouts[cache] = layout
        return CausalLMOutputWithPast(logits=out.logits, hidden_states=out.hidden_states, past_key_values=cache)
