"""The reference model π_ref: the frozen starting model, held at the least memory cost.

Preference-style losses (NPO, DPO) and KL retain terms compare the model being trained, π_θ, with
the model it started from, π_ref. There are three ways to have π_ref:

- **adapter** — the model is a PEFT (LoRA) model, so π_ref is the same network with the adapter
  switched off (`with model.disable_adapter():`). No second copy in memory. Note that this is the
  *base* model: it equals the starting model only while the adapter starts as a no-op (LoRA's
  standard init); "auto" checks this and does not pick "adapter" when it is not so.
- **precompute** — the loss needs only log π_ref(y|x) of fixed (x, y) pairs of the forget set, so
  these are computed once in `setup` and looked up by `batch.forget_index`. No model is held during
  training. Impossible for terms that need π_ref's full next-token distributions (a KL on retain
  batches, which are drawn at random).
- **copy** — a frozen deep copy: one more model in memory, works for everything.
- **auto** — adapter for a PEFT model (when its adapter starts as a no-op), else precompute when
  the method allows it, else copy.

Every reference computation runs under `torch.no_grad()` with the network in eval mode (no
dropout). Outputs are on the device of the model being trained.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field

from obliviate.config import StrictConfig
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.train.data import IGNORE, UnlearnBatch, collate, encode_items
from obliviate.train.losses import token_logprobs

RefMode = Literal["auto", "copy", "adapter", "precompute"]


class ReferenceConfig(StrictConfig):
    """Mixin for the config of a method with a reference model π_ref."""

    ref: RefMode = Field(
        "auto",
        description="how to hold the frozen reference model: 'adapter' (a LoRA model with its adapter "
        "switched off, no extra memory), 'precompute' (cache the reference log-probs of the forget set "
        "once, no model held), 'copy' (a frozen deep copy), 'auto' (adapter, else precompute, else copy)",
    )


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency, but stay usable without it
        return False
    return isinstance(_unwrap(model), PeftModel)


def _unwrap(model):
    """The bare model under an accelerate/DDP wrapper."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _answer_ids(labels: torch.Tensor) -> list[tuple[int, ...]]:
    """The answer token ids of each row of a padded label batch."""
    return [tuple(row[row != IGNORE].tolist()) for row in labels]


@contextmanager
def _frozen(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class Reference:
    """π_ref for one unlearning run. Call `setup` once before training.

    `needs_logits`: the method asks for full reference distributions (`logits`), which rules out
    "precompute".
    """

    def __init__(self, mode: RefMode = "auto", needs_logits: bool = False) -> None:
        self.requested = mode
        self.needs_logits = needs_logits
        self.mode: str | None = None  # resolved in setup
        self._copy = None
        # answer-set name -> (summed log-probs (N,), answer token ids per item, to check lookups)
        self._cache: dict[str, tuple[torch.Tensor, list[tuple[int, ...]]]] = {}

    # ---- setup -------------------------------------------------------------------------------

    def setup(
        self,
        model,
        tokenizer,
        forget_items: Sequence[QAItem],
        retain_items: Sequence[QAItem] = (),
        *,
        max_length: int | None = None,
        batch_size: int = 16,
        extra_answers: dict[str, Sequence[str]] | None = None,
    ) -> str:
        """Resolve the mode and prepare π_ref from `model` as it is now; returns the mode.

        `extra_answers` names other answer sets for the forget questions (e.g. refusals) whose
        reference log-probs a method will ask for; "precompute" caches them too. `max_length` must
        be the one the training loop encodes with, so cached and live sequences are the same.
        `retain_items` is accepted for a uniform call; no mode needs it now.
        """
        del retain_items
        self.mode = self._resolve(model, tokenizer, forget_items, max_length)
        if self.mode == "copy":
            self._copy = copy.deepcopy(_unwrap(model)).eval()
            self._copy.requires_grad_(False)
        elif self.mode == "precompute":
            answer_sets: dict[str, Sequence[str] | None] = {"forget": None, **(extra_answers or {})}
            self._precompute(model, tokenizer, forget_items, answer_sets, max_length, batch_size)
        return self.mode

    def _resolve(self, model, tokenizer, forget_items, max_length) -> str:
        peft = is_peft_model(model)
        if self.requested == "adapter" and not peft:
            raise ConfigError("ref=adapter needs a PEFT (LoRA) model, and this model has no adapter; "
                              "use ref=copy or ref=precompute")
        if self.requested == "precompute" and self.needs_logits:
            raise ConfigError("ref=precompute cannot serve this method: it needs the reference model's full "
                              "next-token distributions; use ref=copy, or ref=adapter with a LoRA model")
        if self.requested != "auto":
            return self.requested
        if peft and self._adapter_is_noop(model, tokenizer, forget_items, max_length):
            return "adapter"
        return "copy" if self.needs_logits else "precompute"

    def _adapter_is_noop(self, model, tokenizer, forget_items, max_length) -> bool:
        """Does switching the adapter off leave the outputs unchanged (i.e. base == starting model)?"""
        if not forget_items:
            return True
        enc, _ = encode_items(tokenizer, forget_items[:4], max_length=max_length)
        batch = collate(enc, _pad_id(tokenizer))
        with_adapter = self._forward(model, batch, adapter_off=False)
        without = self._forward(model, batch, adapter_off=True)
        return torch.allclose(with_adapter, without, atol=1e-5, rtol=1e-4)

    def _precompute(self, model, tokenizer, forget_items, answer_sets, max_length, batch_size) -> None:
        for name, answers in answer_sets.items():
            enc, _ = encode_items(tokenizer, forget_items, max_length=max_length, answers=answers)
            sums = [torch.zeros(0)]
            for start in range(0, len(enc), batch_size):
                batch = collate(enc[start : start + batch_size], _pad_id(tokenizer))
                logits = self._forward(model, batch, adapter_off=False)  # (b, T, V)
                logp, _ = token_logprobs(logits, batch["labels"].to(logits.device))
                sums.append(logp.sum(dim=1).float().cpu())
            answer_ids = [tuple(t for t in e.labels if t != IGNORE) for e in enc]
            self._cache[name] = (torch.cat(sums), answer_ids)

    # ---- queries -----------------------------------------------------------------------------

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full reference logits (B, T, V) for a padded batch (copy and adapter modes only)."""
        if self.mode is None:
            raise RuntimeError("Reference.setup was not called")
        if self.mode == "precompute":
            raise ConfigError("this loss needs the reference model's full distributions, which "
                              "ref=precompute does not keep; use ref=copy, or ref=adapter with a LoRA model")
        if self.mode == "copy":
            device = _device(model)
            if _device(self._copy) != device:  # the loop may move the model after setup
                self._copy.to(device)
            return self._forward(self._copy, batch, adapter_off=False)
        return self._forward(model, batch, adapter_off=True)

    def sequence_logprobs(
        self, model, batch: dict[str, torch.Tensor], index: torch.Tensor | None = None, name: str = "forget"
    ) -> torch.Tensor:
        """log π_ref(y|x) summed over answer tokens, (B,).

        In precompute mode the rows are looked up by `index` (positions in the forget set) in the
        answer set `name` ("forget": the true answers, or a name given to `setup` in `extra_answers`).
        """
        if self.mode == "precompute":
            return self._lookup(model, batch, index, name)
        with torch.no_grad():
            logp, _ = token_logprobs(self.logits(model, batch), batch["labels"].to(_device(model)))
            return logp.sum(dim=1)

    def forget_logprobs(self, model, batch: UnlearnBatch) -> torch.Tensor:
        """log π_ref(y|x) summed over answer tokens for the forget batch, (B,)."""
        return self.sequence_logprobs(model, batch.forget, batch.forget_index, "forget")

    def _lookup(self, model, batch, index, name) -> torch.Tensor:
        if name not in self._cache:
            raise KeyError(f"no precomputed reference log-probs named {name!r}; "
                           "pass it to setup(extra_answers=)")
        if index is None:
            raise ConfigError("ref=precompute needs the forget-set positions of the batch "
                              "(batch.forget_index)")
        sums, answer_ids = self._cache[name]
        index = index.cpu()
        if [answer_ids[int(i)] for i in index] != _answer_ids(batch["labels"]):
            raise ConfigError("the precomputed reference log-probs do not match this batch (the forget set "
                              "was encoded differently); use ref=copy")
        return sums[index].to(_device(model))

    def _forward(self, model, batch: dict[str, torch.Tensor], adapter_off: bool) -> torch.Tensor:
        net = _unwrap(model)
        inputs = _to(batch, _device(net))
        with _frozen(net):
            if adapter_off:
                with net.disable_adapter():
                    return net(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            return net(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
