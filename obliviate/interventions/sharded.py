"""A sharded ensemble of LoRA stacks (S3T's model): the shards aggregated at the log-probabilities.

The frozen base model carries named peft LoRA adapters; each shard is a list of them that is active
together (its slices, `methods/s3t.py`). One forward pass runs the base model once per shard with
that shard's adapters active, and aggregates the m' shards that have an active slice (all m shards'
base model when none has one; a shard left with no active slice after a deletion is the bare base
model and is left out, as SISA drops a shard that has no model):

- `mixture` (default): the ensemble is the mixture of the shards' sequence distributions,
  p(x) = (1/m') Σ_s p_s(x), so its next-token distribution weights each shard by its probability
  of the text so far, prompt included:
      p(x_t+1 | x_≤t) = Σ_s w_s(t) p_s(x_t+1 | x_≤t),   w_s(t) = p_s(x_≤t) / Σ_s' p_s'(x_≤t)
  A fact is known by the one shard that trained on it; the shard that has read about a subject
  finds the question about it likely and takes over the answer.
- `mean_logprob`: logits = (1/m') Σ_s log softmax(l_s), the normalised geometric mean of the shards'
  next-token distributions (equal to the mean of their logits after the softmax). Each shard is
  trusted equally on every prompt; on the world, where every shard confidently answers the facts of
  its own people, this loses most of what any one shard knows (docs/methods.md, *Exact unlearning*).

Hidden states are the mean of the shards'.

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
    """One KV cache per shard, continued together, with what the mixture carries over between calls:
    each shard's log-probability of the tokens so far (`cum`, (S, B)) and its last next-token
    log-probabilities (`last`, (S, B, V))."""

    cum: torch.Tensor | None = None
    last: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        first = next((c for c in self if c is not None), None)
        return 0 if first is None else int(first.get_seq_length())


AGGREGATES = ("mixture", "mean_logprob")


def mixture_logprobs(logp: torch.Tensor, ids: torch.Tensor | None, mask: torch.Tensor,
                     past: ShardCaches) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_mix (B, T, V), log p_s of the tokens so far (S, B, T)) for shard log-probs `logp` (S, B, T, V).

    p_mix(· | x_≤t) = Σ_s w_s(t) p_s(· | x_≤t),  w_s(t) ∝ p_s(x_≤t): the next-token distribution of the
    mixture (1/m) Σ_s p_s of the shards' *sequence* distributions. A token counts only when the one
    before it is real (padding and a row's first token are skipped); the cache carries the rest.
    """
    shards, batch, width, _ = logp.shape
    mask = mask.to(logp.device).float()
    has_past = past.last is not None
    before = torch.zeros_like(logp[:, :, :1]) if not has_past else past.last[:, :, None]
    prev = torch.cat([before, logp[:, :, :-1]], dim=2)  # (S, B, T, V): the prediction of each given token
    if ids is None:  # embeddings given: no token to score, the weights stay as they were
        token = torch.zeros(shards, batch, width, device=logp.device)
    else:
        token = prev.gather(-1, ids[None, :, :, None].expand(shards, -1, -1, 1)).squeeze(-1)
    scored = mask * torch.cat([mask.new_full((batch, 1), float(has_past)), mask[:, :-1]], dim=1)  # (B, T)
    start = past.cum[:, :, None] if past.cum is not None else 0.0
    cum = start + (token * scored).cumsum(-1)  # (S, B, T): log p_s(x_≤t)
    weights = cum.log_softmax(0)[..., None]  # (S, B, T, 1)
    return torch.logsumexp(weights + logp, dim=0), cum


class ShardedEnsemble(Intervention):
    """A base model under each shard's active adapters, aggregated (`aggregate`, module docstring)."""

    kind = "sharded_ensemble"
    shares_prompt_cache = False

    def __init__(self, peft_model: nn.Module, shards: list[list[str]], lora: LoraSettings,
                 aggregate: str = "mixture") -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ObliviateError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        self.__dict__["peft_model"] = peft_model  # not a submodule: its weights are the base model's
        self.shards = [list(s) for s in shards]
        self.lora = lora
        self.aggregate = aggregate

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
        mixture = self.aggregate == "mixture"
        logps, hiddens, caches = [], [], ShardCaches()
        model = base_of(self.peft_model)  # the model holding the adapters (the wrapped one, once loaded)
        for names, cache in zip(voters, past, strict=True):
            with active_adapters(self.peft_model, names):
                out = call_model(model, 0 if mixture else logits_to_keep, input_ids=input_ids,
                                 inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 position_ids=position_ids, past_key_values=cache, use_cache=use_cache,
                                 output_hidden_states=output_hidden_states)
            logps.append(out.logits.float().log_softmax(-1))  # (B, T, V)
            hiddens.append(out.hidden_states)
            caches.append(out.past_key_values)
        stacked = torch.stack(logps)  # (S, B, T, V)
        if mixture:
            width = stacked.shape[2]
            logits, cum = mixture_logprobs(stacked, input_ids, attention_mask[:, -width:], past)
            caches.cum, caches.last = cum[:, :, -1], stacked[:, :, -1]
            logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
        else:
            logits = stacked.mean(0)
        hidden = None
        if output_hidden_states:
            hidden = tuple(torch.stack(layer).mean(0) for layer in zip(*hiddens, strict=True))
        cache = caches if use_cache else None
        return CausalLMOutputWithPast(logits=logits.to(logps[0].dtype), hidden_states=hidden, past_key_values=cache)

    # -- persistence -------------------------------------------------------------------------

    def adapter_names(self) -> list[str]:
        return sorted(self.peft_model.peft_config) if hasattr(self.peft_model, "peft_config") else []

    def state_config(self) -> dict[str, Any]:
        return {"lora": self.lora.state(), "shards": self.shards, "adapters": self.adapter_names(),
                "aggregate": self.aggregate}

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
        return cls(peft_model.eval(), config["shards"], lora, config.get("aggregate", "mean_logprob")).eval()
