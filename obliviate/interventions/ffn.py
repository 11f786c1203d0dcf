"""Feed-forward neurons: where they are, and recording their values on a set of QA items.

A dense feed-forward block computes `down(act(W_in x) ⊙ up(x))` (Llama; GPT-2 has no `up`). Two
places matter to the skill-unlearning methods (Li et al. 2025):

- the *pre-activations* `W_in x` (B, T, I): the input of the activation module (`act_fn` in Llama,
  `act` in GPT-2); neuron_adjust records and shifts them;
- the *key-space vector* `act(W_in x) ⊙ up(x)` (B, T, I): the input of the down (value) projection
  (`down_proj`, `c_proj`); key_space_detection bounds it.

Both are reached with hooks on those modules, found by name (`ACTIVATIONS`, `DOWN_PROJECTIONS`).
A mixture-of-experts block is refused: one activation module serves every expert, so a neuron's
values could not be told apart by expert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.models.layers import decoder_layers, feed_forward, moe_layers

ACTIVATIONS = ("act_fn", "act", "activation_fn", "activation")
DOWN_PROJECTIONS = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "fc_out")


@dataclass
class FeedForward:
    """One decoder layer's feed-forward block: its activation module and its down projection."""

    index: int
    act: nn.Module
    down: nn.Module


def _named(module: nn.Module, names: Sequence[str], what: str, index: int) -> nn.Module:
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, nn.Module):
            return found
    raise ConfigError(f"layer {index}: no {what} named {' / '.join(names)} in {type(module).__name__}")


def feed_forwards(model: nn.Module, method: str) -> list[FeedForward]:
    """The feed-forward block of every decoder layer of a dense model (a ConfigError for a mixture of experts)."""
    if moe_layers(model):
        raise ConfigError(f"{method}: mixture-of-experts feed-forward blocks are not supported (one activation "
                          "module serves every expert, so a neuron's values cannot be told apart)")
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        _, mlp = feed_forward(layer)
        out.append(FeedForward(i, _named(mlp, ACTIVATIONS, "activation module", i),
                               _named(mlp, DOWN_PROJECTIONS, "down projection", i)))
    if len({id(f.act) for f in out}) != len(out):
        raise ConfigError(f"{method}: the layers share one activation module; cannot hook one layer's neurons")
    return out


@contextmanager
def input_hooks(modules: Sequence[nn.Module], fn: Callable[[int, torch.Tensor], torch.Tensor | None]
                ) -> Iterator[None]:
    """Forward pre-hooks calling `fn(position in modules, input (B, T, I))` on each module's first input.

    When `fn` returns a tensor, it replaces that input. The hooks are removed on exit.
    """
    handles = []
    for k, module in enumerate(modules):
        def hook(_module, args, k=k):
            new = fn(k, args[0])
            return None if new is None else (new, *args[1:])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and their mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def record_inputs(model: nn.Module, modules: Sequence[nn.Module], rows: Sequence[list[int]], pad_id: int,
                  select: Callable[[torch.Tensor, list[int]], torch.Tensor], batch_size: int = 16
                  ) -> list[list[torch.Tensor]]:
    """For each module, the float32 rows `select(input (B, T, I), lengths)` keeps, per batch of token rows."""
    out: list[list[torch.Tensor]] = [[] for _ in modules]
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask = padded(chunk, pad_id)
        lengths = [len(r) for r in chunk]

        def keep(k: int, x: torch.Tensor, lengths=lengths) -> None:
            out[k].append(select(x.detach().float(), lengths).cpu())

        with input_hooks(modules, keep):
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    return out


def real_tokens(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(N, I): the values at every real (unpadded) position of a right-padded batch x (B, T, I)."""
    return torch.cat([x[b, :n] for b, n in enumerate(lengths)])


def last_tokens(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, I): the values at each row's last real position."""
    return torch.stack([x[b, n - 1] for b, n in enumerate(lengths)])
