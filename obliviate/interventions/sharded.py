"""A sharded ensemble of LoRA stacks (S3T's model): the shards aggregated at the log-probabilities.

The frozen base model carries named peft LoRA adapters; each shard is a list of them that is active
together (its slices, `methods/s3t.py`). One forward pass runs the base model once per shard with
that shard's adapters active and returns

    logits = (1/m') Σ_s log softmax(l_s)        over the m' shards with at least one active slice

(all m shards' base model when none has one). This is the normalised geometric mean of the shards'
next-token distributions; a shard that knows a fact puts its mass on the answer, and shards that do
not spread theirs, so the fact survives the aggregation (a mean of probabilities would divide it by m).
Hidden states are the mean of the shards'. A shard left with no active slice after a deletion is the
bare base model and is left out of the mean, as SISA drops a shard that has no model.

The cache is one cache per shard (`ShardCaches`), so the scorer scores full sequences
(`shares_prompt_cache = False`).

Unlike the other interventions, the adapters are injected into the modules of the model they are
loaded onto (peft's LoRA layers): that model becomes the ensemble's, and the ensemble always runs
it, whatever model it wraps (training works on a copy of the base model, so the model given to the
method is left unchanged). `runs.load_run_model` loads a fresh base model for it. Saving writes
every adapter's tensors (named `adapter/parameter`) and the shards' adapter lists;
`load_intervention` injects them again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, call_model


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA of every slice: rank, scale and the modules it adapts."""

    r: int = 32
    alpha: int = 64
    targets: tuple[str, ...] | str = "all-linear"

    def peft_config(self):
        from peft import LoraConfig

        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=targets,
                          task_type="CAUSAL_LM")

    def state(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha,
                "targets": self.targets if isinstance(self.targets, str) else list(self.targets)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LoraSettings:
        targets = state["targets"]
        return cls(int(state["r"]), int(state["alpha"]), targets if isinstance(targets, str) else tuple(targets))


def add_adapter(model: nn.Module, name: str, lora: LoraSettings, seed: int) -> nn.Module:
    """`model` with a fresh LoRA adapter `name` (initialised from `seed`); a peft model is returned.

    The first adapter wraps the model (`get_peft_model`), later ones are added to it. The adapter's
    random initialisation is drawn from `torch.manual_seed(seed)`, so it depends on nothing else.
    """
    from peft import get_peft_model

    torch.manual_seed(seed)
    try:
        if hasattr(model, "peft_config"):
            model.add_adapter(name, lora.peft_config())
            return model
        return get_peft_model(model, lora.peft_config(), adapter_name=name)
    except ValueError as exc:
        raise ObliviateError(f"s3t LoRA targets {lora.targets}: {str(exc).splitlines()[0]}") from None


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters of adapter `name`, by their path in the model."""
    return {n: p for n, p in model.named_parameters() if name in n.split(".")}


@contextmanager
def active_adapters(peft_model: nn.Module, names: list[str]) -> Iterator[None]:
    """Run the model with exactly the adapters `names` active (none: the bare base model).

    Set on every LoRA layer directly (not through `PeftModel.set_adapter`, which takes one name and
    whose bookkeeping breaks when the adapter it calls active is deleted); the trainable flags are
    kept as they were.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    requires = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(list(names))
    for n, p in peft_model.named_parameters():
        p.requires_grad_(requires[n])
    yield


def drop_adapter(peft_model: nn.Module, name: str) -> None:
    """Delete adapter `name` and its weights from the model."""
    peft_model.base_model.delete_adapter(name)
    if getattr(peft_model, "active_adapter", None) == name:  # the wrapper's own record of the active one
        peft_model.active_adapter = next(iter(peft_model.peft_config), [])


def base_of(model: nn.Module) -> nn.Module:
    """The model inside a peft wrapper (whose modules hold the LoRA layers)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


class ShardCaches(list):
    """One KV cache per shard, continued together."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        first = next((c for c in self if c is not None), None)
        return 0 if first is None else int(first.get_seq_length())


class ShardedEnsemble(Intervention):
    """The mean log-probabilities of a base model under each shard's active adapters."""

    kind = "sharded_ensemble"
    shares_prompt_cache = False

    def __init__(self, peft_model: nn.Module, shards: list[list[str]], lora: LoraSettings) -> None:
        super().__init__()
        self.__dict__["peft_model"] = peft_model  # not a submodule: its weights are the base model's
        self.shards = [list(s) for s in shards]
        self.lora = lora

    def voting(self) -> list[list[str]]:
        """The shards that take part in the mean: those with an active slice (all when none has one)."""
        live = [s for s in self.shards if s]
        return live or [[] for _ in self.shards]

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        voters = self.voting()
        past = past_key_values if past_key_values is not None else ShardCaches([None] * len(voters))
        if not isinstance(past, ShardCaches) or len(past) != len(voters):
            raise ObliviateError("a cache passed to a sharded ensemble must come from the same ensemble")
        logps, hiddens, caches = [], [], ShardCaches()
        model = base_of(self.peft_model)  # the model holding the adapters (the wrapped one, once loaded)
        for names, cache in zip(voters, past, strict=True):
            with active_adapters(self.peft_model, names):
                out = call_model(model, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds,
                                 attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                                 use_cache=use_cache, output_hidden_states=output_hidden_states)
            logps.append(out.logits.float().log_softmax(-1))  # (B, T, V)
            hiddens.append(out.hidden_states)
            caches.append(out.past_key_values)
        logits = torch.stack(logps).mean(0).to(logps[0].dtype)
        hidden = None
        if output_hidden_states:
            hidden = tuple(torch.stack(layer).mean(0) for layer in zip(*hiddens, strict=True))
        cache = caches if use_cache else None
        return CausalLMOutputWithPast(logits=logits, hidden_states=hidden, past_key_values=cache)

    # -- persistence -------------------------------------------------------------------------

    def adapter_names(self) -> list[str]:
        return sorted(self.peft_model.peft_config) if hasattr(self.peft_model, "peft_config") else []

    def state_config(self) -> dict[str, Any]:
        return {"lora": self.lora.state(), "shards": self.shards, "adapters": self.adapter_names()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.adapter_names():
            for path, p in adapter_parameters(self.peft_model, name).items():
                out[f"{name}/{path}"] = p.detach()
        return out

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> ShardedEnsemble:
        lora = LoraSettings.from_state(config["lora"])
        peft_model = model
        for name in config["adapters"]:
            peft_model = add_adapter(peft_model, name, lora, seed=0)
            with torch.no_grad():
                for path, p in adapter_parameters(peft_model, name).items():
                    key = f"{name}/{path}"
                    if key not in tensors:
                        raise ObliviateError(f"sharded ensemble: missing tensor '{key}'")
                    p.copy_(tensors[key])
        peft_model.requires_grad_(False)
        unknown = {n for s in config["shards"] for n in s} - set(config["adapters"])
        if unknown:
            raise ObliviateError(f"sharded ensemble: shards name adapters that were not saved: {sorted(unknown)}")
        return cls(peft_model.eval(), config["shards"], lora).eval()
