"""ULD's run-time rule: subtract an assistant's logits from the target's.

Ji et al. 2024, *Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework
from Logit Difference* (code `UCSB-NLP-Chang/ULD`). The assistant is the target's own embeddings,
its first K decoder layers, its final norm and LM head, plus LoRA adapters on every linear layer
of those K layers. It is trained to *remember* the forget set (and to be uniform elsewhere), so

    kept     = log p_target ≥ min(max_v log p_target + log r, the ⌊rV⌋-th largest log p_target)
    logits   = l_target + w · l_assist   on kept tokens,     w = −0.8,  r = 0.01
             = max(kept logits) − 10³    on dropped tokens

removes what the assistant remembers, and only among the tokens the target finds plausible
(ULD's relative-top filter; at least ⌊rV⌋ tokens are kept). Dropped tokens are masked, as ULD's
greedy decoder does (`next_token_logits[mask] = -1e3` in its `gen_util.py`): left unmasked they
would keep the raw target logit while kept tokens lose w·l_assist, and a large assistant logit on
the kept tokens would hand the argmax to a token the filter dropped.

Differs from the reference: (1) the mask also applies when scoring, because ULD's own `forward`
(used for its teacher-forced probabilities) leaves dropped tokens unmasked, so its scores describe
another distribution than the one its decoder samples; here both come from one rule. (2) The
masked logit is 10³ below the best kept one rather than the constant −10³, because logits are
shift-invariant and an absolute constant need not be below them; it stays finite so that
log-probabilities and entropies (Min-K%++) of masked tokens stay finite.

The assistant shares the target's modules instead of copying them: a model of the same class
with K layers is instantiated on the meta device and its submodules are replaced by the target's
(embeddings, layers 0..K−1, final norm, head). LoRA adds its term through forward hooks that exist
only while the assistant runs, so the target itself is never changed and only the adapters are
saved. Works for any architecture whose K-layer instance has the target's module structure
(Llama-style `model.layers`, GPT-2's `transformer.h`, ...).

The cache is a pair (target cache, assistant cache), not a `DynamicCache`, so the scorer scores
full sequences (`shares_prompt_cache = False`). Hidden states are the target's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, call_model
from obliviate.models.layers import decoder_layers

# ---------------------------------------------------------------------------------------------
# The assistant: the target's first K layers, sharing its modules
# ---------------------------------------------------------------------------------------------


def _same_structure(a: nn.Module, b: nn.Module) -> bool:
    shapes = lambda m: ([(n, tuple(p.shape)) for n, p in m.named_parameters()],  # noqa: E731
                        [(n, tuple(t.shape)) for n, t in m.named_buffers()])
    return type(a) is type(b) and shapes(a) == shapes(b)


def _share_modules(dst: nn.Module, src: nn.Module) -> None:
    """Replace every submodule of `dst` by `src`'s module at the same path where they match."""
    for name, child in list(dst.named_children()):
        other = src._modules.get(name)
        if other is None:
            raise ObliviateError(f"assistant: the target has no module '{name}' to share")
        if _same_structure(child, other):
            setattr(dst, name, other)
        else:
            _share_modules(child, other)


def truncated_model(target: nn.Module, n_layers: int) -> nn.Module:
    """A model of the target's class running its first `n_layers` layers, sharing its modules."""
    total = len(decoder_layers(target))
    if not 1 <= n_layers <= total:
        raise ObliviateError(f"assistant layers must be in 1..{total}, got {n_layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = n_layers
    for key in ("layer_types",):
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, getattr(config, key)[:n_layers])
    with torch.device("meta"):
        assistant = type(target)(config)
    _share_modules(assistant, target)
    leftover = [n for n, t in [*assistant.named_parameters(), *assistant.named_buffers()] if t.is_meta]
    if leftover:
        raise ObliviateError(f"assistant for {type(target).__name__}: cannot share {leftover[:3]} with the target")
    return assistant.eval()


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer (nn.Linear or GPT-2's transposed Conv1D), else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return tuple(module.weight.shape)  # (in, out)
    return None


def linear_modules(layers: nn.ModuleList, n_layers: int) -> dict[str, nn.Module]:
    """Every linear module of the first `n_layers` blocks, by path ("3.self_attn.q_proj")."""
    out = {}
    for i in range(n_layers):
        for name, module in layers[i].named_modules():
            if _linear_shape(module) is not None:
                out[f"{i}.{name}"] = module
    return out


# ---------------------------------------------------------------------------------------------
# LoRA through hooks
# ---------------------------------------------------------------------------------------------


class LoraAdapters(nn.Module):
    """LoRA pairs (A: r × in, B: out × r) added as output + (α/r)·B·A·dropout(x) by forward hooks.

    Initialised as peft does: A Kaiming-uniform, B = 0, so the adapters start as a no-op.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], r: int = 16, alpha: float = 32.0,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.r, self.alpha = int(r), float(alpha)
        self.names = sorted(shapes)
        self.pairs = nn.ModuleDict()
        for name in self.names:
            fan_in, fan_out = shapes[name]
            pair = nn.Module()
            pair.A = nn.Parameter(torch.empty(self.r, fan_in))
            pair.B = nn.Parameter(torch.zeros(fan_out, self.r))
            nn.init.kaiming_uniform_(pair.A, a=math.sqrt(5))
            self.pairs[name.replace(".", "__")] = pair
        self.dropout = nn.Dropout(dropout)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def pair(self, name: str) -> nn.Module:
        return self.pairs[name.replace(".", "__")]

    @contextmanager
    def active(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Hooks on `modules` (path -> module) adding each LoRA term, removed on exit."""
        handles = []
        try:
            for name in self.names:
                handles.append(modules[name].register_forward_hook(self._hook(self.pair(name))))
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, pair: nn.Module):
        def hook(module, args, output):
            x = self.dropout(args[0]).to(pair.A.dtype)
            delta = F.linear(F.linear(x, pair.A), pair.B) * self.scale
            return output + delta.to(output.dtype)

        return hook

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{w}": getattr(self.pair(n), w) for n in self.names for w in ("A", "B")}


# ---------------------------------------------------------------------------------------------
# The intervention
# ---------------------------------------------------------------------------------------------


@dataclass
class PairCache:
    """The caches of the target and the assistant, continued together."""

    target: Any
    assistant: Any

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.target is None else int(self.target.get_seq_length())


# How far below the best kept token a token dropped by the relative-top filter is put.
MASK_GAP = 1e3


def relative_top_mask(target: torch.Tensor, ratio: float) -> torch.Tensor:
    """True where ULD's relative-top filter keeps a token; target logits (..., V) -> bool (..., V)."""
    logp = target.float().log_softmax(-1)
    k = max(1, int(ratio * logp.shape[-1]))
    kth = logp.topk(k, dim=-1).values[..., -1:]  # the k-th largest log-prob
    threshold = torch.minimum(kth, logp.max(-1, keepdim=True).values + math.log(ratio))
    return logp >= threshold


def combine_logits(target: torch.Tensor, assistant: torch.Tensor, weight: float, ratio: float) -> torch.Tensor:
    """l_t + w·l_a on the tokens the relative-top filter keeps, the rest masked (module docstring); (..., V)."""
    keep = relative_top_mask(target, ratio)
    combined = target.float() + weight * assistant.float()
    best = combined.masked_fill(~keep, float("-inf")).amax(-1, keepdim=True)  # at least one token is kept
    return torch.where(keep, combined, best - MASK_GAP).to(target.dtype)


class LogitDifference(Intervention):
    """Target logits plus w times a LoRA assistant's (ULD)."""

    kind = "logit_difference"
    shares_prompt_cache = False

    def __init__(self, n_layers: int, lora: LoraAdapters, weight: float = -0.8, filter_ratio: float = 0.01) -> None:
        super().__init__()
        if not 0 < filter_ratio <= 1:
            raise ObliviateError(f"filter_ratio must be in (0, 1], got {filter_ratio}")
        self.n_layers = int(n_layers)
        self.lora = lora
        self.weight = float(weight)
        self.filter_ratio = float(filter_ratio)
        self._assistants: dict[int, nn.Module] = {}  # id(target) -> assistant (not a submodule)

    @classmethod
    def for_model(cls, model: nn.Module, n_layers: int, r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                  weight: float = -0.8, filter_ratio: float = 0.01) -> LogitDifference:
        """A fresh intervention (no-op adapters) for `model`."""
        modules = linear_modules(decoder_layers(model), n_layers)
        lora = LoraAdapters({n: _linear_shape(m) for n, m in modules.items()}, r, alpha, dropout)
        return cls(n_layers, lora.to(next(model.parameters()).device), weight, filter_ratio)

    def assistant(self, target: nn.Module) -> nn.Module:
        if id(target) not in self._assistants:
            self._assistants = {id(target): truncated_model(target, self.n_layers)}
        return self._assistants[id(target)]

    def release(self) -> None:
        self._assistants = {}

    def assistant_forward(self, target: nn.Module, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """The assistant's output (the LoRA terms active for this call only)."""
        assistant = self.assistant(target)
        with self.lora.active(linear_modules(decoder_layers(assistant), self.n_layers)):
            return call_model(assistant, logits_to_keep, **kwargs)

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        past = past_key_values if past_key_values is not None else PairCache(None, None)
        if not isinstance(past, PairCache):
            raise ObliviateError("a cache passed to ULD must come from the same intervention")
        common = dict(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=use_cache)
        out = call_model(wrapped.base, logits_to_keep, past_key_values=past.target,
                         output_hidden_states=output_hidden_states, **common)
        assist = self.assistant_forward(wrapped.base, logits_to_keep, past_key_values=past.assistant, **common)
        logits = combine_logits(out.logits, assist.logits, self.weight, self.filter_ratio)
        cache = PairCache(out.past_key_values, assist.past_key_values) if use_cache else None
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states, past_key_values=cache)

    # -- persistence -------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "r": self.lora.r, "alpha": self.lora.alpha,
                "dropout": self.lora.dropout.p, "weight": self.weight, "filter_ratio": self.filter_ratio}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.lora.tensors()

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> LogitDifference:
        out = cls.for_model(model, config["n_layers"], config["r"], config["alpha"], config["dropout"],
                            config["weight"], config["filter_ratio"])
        with torch.no_grad():
            for key, value in out.lora.tensors().items():
                if key not in tensors:
                    raise ObliviateError(f"ULD adapters: missing tensor '{key}'")
                value.copy_(tensors[key])
        out.requires_grad_(False)
        return out.eval()
