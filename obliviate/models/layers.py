"""Where things live inside a Hugging Face causal LM: decoder layers, feed-forward blocks, MoE layers.

Found by structure rather than by a table of architectures, so the same code serves Llama
(`model.layers[i].mlp`), GPT-2 (`transformer.h[i].mlp`), Mixtral (`model.layers[i].mlp`, a sparse
MoE block), PEFT-wrapped models, and most other decoder-only models:

- `decoder_layers(model)`: the outermost `nn.ModuleList` with `num_hidden_layers` entries;
- `feed_forward(layer)`: the MLP (or mixture of experts) of one decoder layer, by its usual names;
- `moe_layers(model)`: every sparse MoE block, as its router, its experts and its top-k;
- `expert_tensors(moe, e)`: the parameters of one expert, whether the experts are a ModuleList
  of MLPs or stacked (E, ...) tensors (transformers ≥ 5 stores Mixtral/Qwen-MoE experts so);
- `record_routing(layers)`: a context that records each router's logits and choices per forward.

A router's forward returns its logits (tokens, E) alone, or first in a tuple; when the tuple also
holds the chosen expert indices (an integer tensor, as transformers' top-k routers return), those
are taken as the routing, else the top-k of the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from obliviate.errors import ConfigError

# Names of a decoder layer's feed-forward sub-module across Hugging Face architectures, in the order tried.
FEED_FORWARD_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "moe")


def num_layers(model: nn.Module) -> int | None:
    """The configured number of decoder layers (`num_hidden_layers`, GPT-2's `n_layer`), if any."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks: the outermost one with the configured number of entries.

    Outermost, so a ModuleList of the same length nested inside a block (e.g. a list of experts) is
    never taken for it. Without a configured depth, the outermost non-empty ModuleList.
    """
    n = num_layers(model)
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n)]
    if not lists:
        raise ConfigError(f"{type(model).__name__}: cannot find its list of {n or 'decoder'} layers")
    return min(lists, key=lambda item: item[0].count("."))[1]


def feed_forward(layer: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of a decoder layer's MLP or mixture-of-experts block."""
    for name in FEED_FORWARD_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise ConfigError(f"{type(layer).__name__}: no feed-forward sub-module named {' / '.join(FEED_FORWARD_NAMES)}")


@dataclass
class MoELayer:
    """One sparse mixture-of-experts block of a decoder layer."""

    index: int  # the decoder layer's position in `decoder_layers(model)`
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    n_experts: int
    top_k: int


def _moe_block(layer: nn.Module, index: int, default_top_k: int | None) -> MoELayer | None:
    for module in layer.modules():
        experts = getattr(module, "experts", None)
        router = getattr(module, "gate", None)
        if not isinstance(router, nn.Module):
            router = getattr(module, "router", None)
        if not isinstance(experts, nn.Module) or not isinstance(router, nn.Module):
            continue
        n = len(experts) if isinstance(experts, nn.ModuleList) else getattr(experts, "num_experts", None)
        top_k = getattr(module, "top_k", None) or getattr(router, "top_k", None) or default_top_k
        if n and top_k:
            return MoELayer(index, module, router, experts, int(n), int(top_k))
    return None


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every sparse MoE block, in layer order (empty for a dense model)."""
    config = getattr(model, "config", None)
    default_top_k = getattr(config, "num_experts_per_tok", None) if config is not None else None
    found = (_moe_block(layer, i, default_top_k) for i, layer in enumerate(decoder_layers(model)))
    return [moe for moe in found if moe is not None]


def expert_tensors(moe: MoELayer, expert: int) -> list[tuple[nn.Module, str, int | None]]:
    """(module, parameter name, slice) for each parameter of one expert.

    For stacked experts, the slice is the expert's index along dim 0 of every (E, ...) tensor of
    the experts module; for a ModuleList of experts, the slice is None (whole parameters).
    """
    if not 0 <= expert < moe.n_experts:
        raise ConfigError(f"expert {expert} is outside the {moe.n_experts} experts of layer {moe.index}")
    if isinstance(moe.experts, nn.ModuleList):
        out = []
        for module in moe.experts[expert].modules():
            out += [(module, name, None) for name, _ in module.named_parameters(recurse=False)]
        return out
    stacked = [(moe.experts, name, expert) for name, p in moe.experts.named_parameters(recurse=False)
               if p.dim() >= 2 and p.shape[0] == moe.n_experts]
    if not stacked:
        raise ConfigError(f"layer {moe.index}: cannot tell the experts' parameters apart in "
                          f"{type(moe.experts).__name__}")
    return stacked


def router_output(output, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, E), chosen experts (N, k)) from a router's forward output."""
    parts = output if isinstance(output, tuple) else (output,)
    logits = parts[0].reshape(-1, parts[0].shape[-1])
    chosen = next((p for p in parts[1:] if torch.is_tensor(p) and not p.is_floating_point()), None)
    if chosen is None:
        chosen = logits.topk(top_k, dim=-1).indices
    return logits, chosen.reshape(logits.shape[0], -1)


@contextmanager
def record_routing(layers: list[MoELayer]) -> Iterator[dict[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Record (router logits (N, E), chosen experts (N, k)) of every router call, by layer index.

    N is the batch's B·T tokens in row-major order, so `mask.reshape(-1)` of a (B, T) mask selects
    the same tokens. The logits keep their graph (a loss may be taken on them).
    """
    records: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {moe.index: [] for moe in layers}
    handles = []
    for moe in layers:
        def hook(_module, _args, output, moe=moe):
            records[moe.index].append(router_output(output, moe.top_k))

        handles.append(moe.router.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


# Names of the down-projection inside a feed-forward block (Llama/Mistral/Qwen, GPT-2, GPT-NeoX, Falcon, T5-style).
DOWN_PROJ_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2")


def down_projection(model: nn.Module, layer: int) -> nn.Module:
    """The down-projection (the feed-forward block's output matrix) of decoder layer `layer`."""
    _, mlp = feed_forward(decoder_layers(model)[layer])
    for name in DOWN_PROJ_NAMES:
        module = getattr(mlp, name, None)
        if isinstance(module, nn.Module) and getattr(module, "weight", None) is not None:
            return module
    raise ConfigError(f"layer {layer}'s {type(mlp).__name__} has no down-projection named "
                      f"{' / '.join(DOWN_PROJ_NAMES)}")


def down_projection_weight(module: nn.Module) -> torch.Tensor:
    """A down-projection's weight as (out = hidden, in = intermediate): nn.Linear stores it so, GPT-2's
    Conv1D transposed. Its columns are the layer's value vectors."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.T
