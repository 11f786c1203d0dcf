"""Interventions: what an inference-time method produces, and the wrapper that runs it.

An inference-time method leaves the model's weights alone. What it learns or builds (a soft
prompt, an in-context prefix, a prompt classifier with an embedding corruption, a restricted-decoding
rule, an assistant model) is an `Intervention`. `intervention.wrap(model, tokenizer)` returns an
`InterventionModel`: a module that holds the frozen model and keeps its interface, so every metric,
attack and probe runs on it unchanged::

    with intervention.applied(model, tokenizer) as wrapped:
        run_qa_suite(wrapped, tokenizer, forget, retain)

The interface kept is what `obliviate.models` calls:

- `forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
  output_hidden_states)` returns logits (B, T, V) and hidden states (B, T, H) for exactly the T
  tokens given, and a cache to pass back in. Prefixes an intervention adds are never visible.
- `generate(...)`: greedy or sampled decoding with stopping criteria and logits processors. HF's
  own `generate` cannot drive a module whose forward it does not know, so the loop is written here.
- `config`, `generation_config`, `device`, `name_or_path`, `get_input_embeddings()`.
- `shares_prompt_cache`: whether a prompt's cache may be re-batched and continued by the scorer
  (`score_continuations` falls back to full sequences when it is False).

Nothing is written into the frozen model: hooks are registered for one call and removed in a
`finally`, and the wrapper starts in the model's own train/eval mode. Applying and removing an
intervention leaves the model's state bitwise unchanged.

Saving mirrors weights: `intervention.save(dir)` writes `intervention.json` (kind, config) and,
when there are tensors, `intervention.safetensors`; `load_intervention(dir, model, tokenizer)` in
`obliviate.interventions` restores it for a freshly loaded frozen model.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.io import atomic_open, read_json, write_json

if TYPE_CHECKING:
    from obliviate.interventions.model import InterventionModel

STATE_JSON = "intervention.json"
STATE_TENSORS = "intervention.safetensors"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the interventions
# ---------------------------------------------------------------------------------------------


def accepts_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def call_model(model: nn.Module, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
    """`model(**kwargs)`, keeping only the last `logits_to_keep` positions' logits (0: all).

    Models whose forward has no `logits_to_keep` get it applied afterwards.
    """
    if logits_to_keep and accepts_logits_to_keep(model):
        return model(logits_to_keep=logits_to_keep, **kwargs)
    out = model(**kwargs)
    if logits_to_keep:
        out.logits = out.logits[:, -logits_to_keep:]
    return out


def cache_length(past: Any) -> int:
    """Tokens already held by a KV cache (0 for None or an empty cache)."""
    if past is None:
        return 0
    return int(past.get_seq_length())


def positions_from_mask(mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Positions of the last `new_tokens` columns: each token's index among its row's real tokens.

    mask (B, S) over every token so far -> (B, new_tokens); padding is parked at 0.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new_tokens:]


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor: it cannot be modified outside inference mode
        return 0


def parameter_versions(module: nn.Module) -> int:
    """A number that changes whenever a parameter or buffer of `module` is modified in place."""
    return sum(_version(t) for t in module.parameters()) + sum(_version(t) for t in module.buffers())


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off `requires_grad` on every parameter for the duration, then restore each flag."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss: mean next-token cross-entropy over labels != -100."""
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
    )


# ---------------------------------------------------------------------------------------------
# The intervention
# ---------------------------------------------------------------------------------------------


class Intervention(nn.Module):
    """The state of an inference-time method and the rule that runs the frozen model with it.

    Subclasses set `kind` (the name `load_intervention` finds them by), implement `run`, and give
    their state as `state_config()` (JSON) plus `state_tensors()`, restored by `from_state`.
    """

    kind: ClassVar[str]
    shares_prompt_cache: ClassVar[bool] = True

    @abstractmethod
    def run(
        self,
        wrapped: InterventionModel,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any,
        use_cache: bool,
        logits_to_keep: int,
        output_hidden_states: bool,
        inputs_embeds: torch.Tensor | None,
    ) -> CausalLMOutputWithPast:
        """One forward pass of the frozen model `wrapped.base` under the intervention.

        `attention_mask` covers every token so far as the caller sees them (B, S); `position_ids`
        (B, T) are the caller's positions of the T new tokens.
        """

    def visible_cache_length(self, past: Any) -> int:
        """Tokens held by `past` that the caller has seen (hidden prefixes excluded)."""
        return cache_length(past)

    def generation_processors(self, wrapped: InterventionModel, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor) -> list:
        """Logits processors `generate` adds for prompts `input_ids` (B, W); none by default."""
        return []

    # -- persistence --------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    @abstractmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], model, tokenizer) -> Intervention:
        """Rebuild the intervention for `model` from what `save` wrote."""

    def save(self, out_dir: str | Path) -> Path:
        """Write `intervention.json` and, if any, `intervention.safetensors` into `out_dir`."""
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_tensors().items()}
        if tensors:
            with atomic_open(out / STATE_TENSORS, "wb") as handle:
                handle.write(save(tensors))
        write_json(out / STATE_JSON, {"kind": self.kind, "format_version": FORMAT_VERSION,
                                      "config": self.state_config(), "tensors": sorted(tensors)})
        return out

    # -- application --------------------------------------------------------------------------

    def wrap(self, model: nn.Module, tokenizer=None) -> InterventionModel:
        """The frozen `model` under this intervention, as a module with the model's interface."""
        from obliviate.interventions.model import InterventionModel

        return InterventionModel(model, self, tokenizer)

    @contextmanager
    def applied(self, model: nn.Module, tokenizer=None) -> Iterator[InterventionModel]:
        """`with intervention.applied(model, tok) as wrapped:` — the model is untouched afterwards."""
        was_training = model.training
        wrapped = self.wrap(model, tokenizer)
        try:
            yield wrapped
        finally:
            self.release()
            model.train(was_training)

    def release(self) -> None:
        """Drop anything memoised for a wrapped model (prefix caches, assistants)."""


def read_state(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(intervention.json contents, tensors) of a saved intervention directory."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / STATE_JSON).is_file():
        raise ObliviateError(f"{path}: not an intervention directory (no {STATE_JSON})")
    meta = read_json(path / STATE_JSON)
    tensors = load_file(str(path / STATE_TENSORS)) if (path / STATE_TENSORS).is_file() else {}
    missing = set(meta.get("tensors", [])) - set(tensors)
    if missing:
        raise ObliviateError(f"{path}/{STATE_TENSORS}: missing tensors {sorted(missing)}")
    return meta, tensors

