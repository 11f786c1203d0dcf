"""The model holder: one causal LM, its prompt format, token-by-token generation and the adapter hot-swap.

Generation is serialised by one lock (one model on one device): a request holds it from its prefill
to its last token, so it sees one model throughout. `swap` takes the same lock, so an adapter is
never changed under a running generation. The base weights are loaded once; a new adapter version
is loaded beside the old one with peft (`load_adapter`), made active (`set_adapter`) and the old one
deleted, so a swap costs the adapter's size, not the model's.

Decoding (`tokens`) is the loop of `InterventionModel.generate` for one row, written out so each
token can be streamed as it comes: the guard's logits processors (on a prompt the guard's classifier
flags; any other prompt runs on the bare model, which is what GUARD and ECO do to it), then greedy argmax (temperature
0 or unset) or sampling (temperature, top-p), stopping at the format's stop tokens, at a stop
string, or after `max_tokens`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from obliviate.errors import ConfigError
from obliviate.interventions.base import call_model, positions_from_mask
from obliviate.models.prompts import encode_prompt, format_of, make_format, use_format


@dataclass
class Sampling:
    """How one request decodes."""

    max_tokens: int = 32
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass
class Outcome:
    """What a finished generation reports besides its text."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    guarded: bool = False  # the guard flagged the prompt


class Engine:
    """A loaded model that generates and swaps LoRA adapters in place (module docstring)."""

    def __init__(self, model, tokenizer, name: str) -> None:
        self.base = model.eval()
        self.model = self.base
        self.tokenizer = tokenizer
        self.name = name
        self.fmt = format_of(tokenizer)
        self.version = 0  # the ledger's active model version served (0: the base)
        self.request_ids: list[str] = []  # requests the served adapter was trained to forget
        self.adapter: str | None = None
        self.lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, prompt: str | None = None) -> Engine:
        """Load `spec` (any model spec `obliviate.api.load_model` takes) in the format `prompt` names."""
        from obliviate.api import load_model

        model, tokenizer = load_model(spec, progress=False)
        if prompt is not None:
            use_format(tokenizer, make_format(prompt))
        return cls(model, tokenizer, spec)

    # -- prompts -------------------------------------------------------------------------------

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a conversation: the chat template's rendering, or, in a plain format, the last user
        message rendered as the format's question (plain formats have no turns)."""
        if self.fmt.chat:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                                      **dict(self.fmt.chat_kwargs))
            return encode_prompt(self.tokenizer, text, self.fmt)
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ConfigError("messages: a plain-format model needs a user message")
        return encode_prompt(self.tokenizer, self.fmt.render(users[-1], self.tokenizer), self.fmt)

    def text_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (with the tokenizer's special tokens, as the format adds them)."""
        return list(self.tokenizer(prompt, add_special_tokens=self.fmt.add_special_tokens())["input_ids"])

    def check_length(self, ids: Sequence[int], max_tokens: int) -> None:
        """A one-line ConfigError for an empty prompt, or one that with `max_tokens` overruns the model's context."""
        if not ids:
            raise ConfigError("prompt: empty")
        limit = getattr(self.base.config, "max_position_embeddings", None)
        if limit and len(ids) + max_tokens > limit:
            raise ConfigError(f"prompt: {len(ids)} tokens + max_tokens {max_tokens} exceed the model's context "
                              f"of {limit} tokens")

    def chat_stops(self) -> list[str]:
        return list(self.fmt.stop_strings())

    # -- the adapter ---------------------------------------------------------------------------

    def swap(self, version: int, adapter_dir: Path | None, request_ids: Sequence[str] = ()) -> bool:
        """Serve ledger version `version`: the adapter in `adapter_dir` on the base (None: the base alone).

        Returns whether anything changed. The base is never reloaded.
        """
        if version == self.version:
            return False
        with self.lock:
            if adapter_dir is None:
                if self.adapter is not None:
                    self.model.base_model.disable_adapter_layers()
                self.adapter = None
            else:
                name = f"v{version}"
                if self.model is self.base:
                    from peft import PeftModel

                    self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name,
                                                           is_trainable=False).eval()
                else:
                    self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
                    self.model.base_model.enable_adapter_layers()
                    self.model.set_adapter(name)
                    if self.adapter is not None and self.adapter != name:
                        self.model.delete_adapter(self.adapter)
                self.adapter = name
            self.version = version
            self.request_ids = list(request_ids)
        return True

    # -- decoding ------------------------------------------------------------------------------

    def stop_token_ids(self) -> list[int]:
        return self.fmt.stop_token_ids(self.tokenizer)

    @torch.inference_mode()
    def tokens(self, ids: Sequence[int], sampling: Sampling, intervention: Any, outcome: Outcome) -> Iterator[int]:
        """Generated token ids one by one (the caller holds `lock`); stop tokens are not yielded."""
        device = next(self.model.parameters()).device
        seq = torch.tensor([list(ids)], dtype=torch.long, device=device)
        mask = torch.ones_like(seq)
        # GUARD and ECO leave a prompt their classifier does not flag untouched: run it on the bare model,
        # without the wrapper's per-token cost.
        flags = intervention.detector.flags(self.tokenizer, seq, mask)[0] if intervention is not None else [False]
        outcome.guarded = bool(flags[0])
        run = intervention.wrap(self.model, self.tokenizer) if outcome.guarded else self.model
        processors = intervention.generation_processors(run, seq, mask) if outcome.guarded else []
        stops = set(self.stop_token_ids())
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed) if sampling.seed is not None else None
        step, past = seq, None
        outcome.prompt_tokens = len(ids)
        for _ in range(sampling.max_tokens):
            out = call_model(run, 1, input_ids=step, attention_mask=mask,
                             position_ids=positions_from_mask(mask, step.shape[1]), past_key_values=past,
                             use_cache=True)
            past = out.past_key_values
            scores = out.logits[:, -1].float()  # (1, V)
            for p in processors:
                scores = p(seq, scores)
            nxt = self._pick(scores, sampling, generator)
            if nxt in stops:
                outcome.finish_reason = "stop"
                return
            outcome.completion_tokens += 1
            yield nxt
            step = torch.tensor([[nxt]], dtype=torch.long, device=device)
            seq = torch.cat([seq, step], dim=1)
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        outcome.finish_reason = "length"

    @staticmethod
    def _pick(scores: torch.Tensor, sampling: Sampling, generator) -> int:
        if not sampling.temperature:
            return int(scores.argmax(-1))
        probs = (scores / sampling.temperature).softmax(-1)[0]  # (V,)
        if sampling.top_p is not None and sampling.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    def stream(self, ids: Sequence[int], sampling: Sampling, guard: Callable[[], Any], outcome: Outcome,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces as they are decoded, cut at the first stop string (held back while it may be forming).

        `guard()` gives the intervention to run under (None: none); it is read once the lock is held, so a
        guard extended before this call is in force. Setting `cancel` ends the generation after its token.
        """
        with self.lock:
            intervention = guard()
            produced: list[int] = []
            sent = 0
            hold = max((len(s) for s in sampling.stop if s), default=1) - 1
            for token in self.tokens(ids, sampling, intervention, outcome):
                if cancel is not None and cancel.is_set():
                    outcome.finish_reason = "cancelled"
                    return
                produced.append(token)
                text = self.tokenizer.decode(produced, skip_special_tokens=True)
                cut = min((k for k in (text.find(s) for s in sampling.stop if s) if k != -1), default=-1)
                if cut != -1:
                    if cut > sent:
                        yield text[sent:cut]
                    outcome.finish_reason = "stop"
                    return
                ready = len(text) - hold
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
                    ready = min(ready, len(text) - 1)
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
            text = self.tokenizer.decode(produced, skip_special_tokens=True)
            if len(text) > sent:
                yield text[sent:]

    def complete(self, ids: Sequence[int], sampling: Sampling, intervention: Any = None) -> tuple[str, Outcome]:
        """The whole text of one generation under `intervention` (None: unguarded) and its outcome."""
        outcome = Outcome()
        return "".join(self.stream(ids, sampling, lambda: intervention, outcome)), outcome
