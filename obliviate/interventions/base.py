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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.errors import ObliviateError
from obliviate.io import atomic_open, read_json, write_json

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
