"""ECO's run-time rule: corrupt the input embeddings of prompts the classifier flags.

Liu et al. 2024, *Large Language Model Unlearning via Embedding-Corrupted Prompts*. For a flagged
prompt, a forward hook on the embedding layer changes the embeddings e (H,) of chosen prompt
tokens, during the prefill only; tokens after the prompt (answers being scored, generated tokens)
are never corrupted. The corruptions (`dims` = k, z ~ N(0, 1), and the strength σ in units of
the mean L2 norm ‖e‖ of the embedding matrix's rows, so that σ = 1 is noise as large as a whole
embedding whatever the hidden size):

    rand_noise_first_n   e[:k]   += σ·‖e‖·z
    rand_noise_top_k     e[top]  += σ·‖e‖·z      top = the k entries of largest |e|
    zero_out_top_k       e[top]   = 0
    flip_sign_top_k      e[top]   = −e[top]

Chosen tokens are the subject's tokens where the prompt contains a forget subject (the paper uses
an entity tagger; the forget set's subjects stand in for it), else every prompt token but the
last. Special tokens (BOS) are never corrupted: they carry no content. The prompt is found by
the format's marker (`regions.py`).

**Answers.** When a full prompt + answer sequence is scored (teacher forcing), ECO's evaluator
corrupts the answer's entity tokens as well (`eco/attack/model.py`: the token tagger reads prompt
+ answer; without a tagger, every token but the last). With `corrupt_answers` (the default) the
same happens here: the subject's tokens in the answer too when the prompt names a subject, else
every token of the sequence but the last. A prefill of the prompt alone (generation) has no answer
tokens and is corrupted as before, so scoring and generation see the same prompt corruption; the
scorer runs full sequences (`shares_prompt_cache` is False). With `corrupt_answers=False` (this
project's variant) only the prompt is ever corrupted, so teacher-forced scores describe exactly
the distribution that generates.

The noise of a prompt is drawn from a generator seeded by (seed, the prompt's token ids): the same
prompt is corrupted identically in every batch, in both scoring paths and after save/load. Noise
for the positions that only scoring corrupts is drawn after the prompt's, from the same generator.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from obliviate.errors import ConfigError, ObliviateError
from obliviate.interventions.base import Intervention, cache_length, call_model
from obliviate.interventions.classifier import PromptClassifier
from obliviate.interventions.detector import Detector

CORRUPTIONS = ("rand_noise_first_n", "rand_noise_top_k", "zero_out_top_k", "flip_sign_top_k")
NOISY = ("rand_noise_first_n", "rand_noise_top_k")


def corrupt(e: torch.Tensor, kind: str, dims: int, strength: float, z: torch.Tensor | None) -> torch.Tensor:
    """Corrupted copy of embeddings e (n, H); `strength` is absolute, z (n, dims) standard normal."""
    e = e.clone()
    if kind == "rand_noise_first_n":
        e[:, :dims] += strength * z.to(e.dtype)
        return e
    top = e.abs().topk(dims, dim=-1).indices  # (n, dims)
    if kind == "rand_noise_top_k":
        return e.scatter_add(-1, top, strength * z.to(e.dtype))
    if kind == "zero_out_top_k":
        return e.scatter(-1, top, 0.0)
    if kind == "flip_sign_top_k":
        return e.scatter(-1, top, -e.gather(-1, top))
    raise ConfigError(f"unknown corruption '{kind}' (choose from {', '.join(CORRUPTIONS)})")


def _occurrences(seq: list[int], pattern: list[int]) -> list[int]:
    m = len(pattern)
    return [i for i in range(len(seq) - m + 1) if seq[i : i + m] == pattern]


@dataclass
class _Plan:
    row: int
    positions: list[int]
    noise: torch.Tensor | None  # (n, dims)


class EmbeddingCorruption(Intervention):
    """Classifier-gated corruption of prompt embeddings (ECO)."""

    kind = "embedding_corruption"

    def __init__(self, detector: Detector, corruption: str, strength: float, dims: int, embed_scale: float,
                 subject_ids: list[list[int]] | None = None, seed: int = 0, skip_ids: Sequence[int] = (),
                 corrupt_answers: bool = True) -> None:
        super().__init__()
        if corruption not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption '{corruption}' (choose from {', '.join(CORRUPTIONS)})")
        self.detector = detector
        self.corruption = corruption
        self.strength = float(strength)
        self.dims = int(dims)
        self.embed_scale = float(embed_scale)
        self.subject_ids = [list(s) for s in subject_ids or []]
        self.seed = int(seed)
        self.skip_ids = sorted(int(i) for i in skip_ids)
        self.corrupt_answers = bool(corrupt_answers)

    @property
    def shares_prompt_cache(self) -> bool:  # type: ignore[override]
        """A continued prompt cache would leave the answer uncorrupted: score full sequences instead."""
        return not self.corrupt_answers

    @property
    def classifier(self) -> PromptClassifier:
        """The prompt classifier that gates this intervention."""
        return self.detector.classifier

    # -- planning ----------------------------------------------------------------------------

    def _hits(self, seq: list[int], start: int, end: int) -> list[int]:
        """Positions in [start, end) covered by an occurrence of a subject, sorted."""
        span = seq[start:end]
        return sorted({start + i + j for s in self.subject_ids for i in _occurrences(span, s) for j in range(len(s))})

    def _positions(self, seq: list[int], start: int, prompt_end: int) -> list[int]:
        """The prompt positions corrupted in [start, prompt_end): subject tokens, else all but the last."""
        skip = set(self.skip_ids)
        return [p for p in self._hits(seq, start, prompt_end) or range(start, prompt_end - 1) if seq[p] not in skip]

    def _answer_positions(self, seq: list[int], start: int, prompt_end: int, end: int) -> list[int]:
        """What scoring corrupts beyond `_positions` with `corrupt_answers`: the subject's tokens in the
        answer [prompt_end, end), or, when the prompt names no subject, every token up to the last."""
        if not self.corrupt_answers or end <= prompt_end:
            return []
        skip = set(self.skip_ids)
        extra = self._hits(seq, prompt_end, end) if self._hits(seq, start, prompt_end) else \
            range(max(start, prompt_end - 1), end - 1)
        return [p for p in extra if seq[p] not in skip]

    def _noise(self, prompt: list[int], n: int, n_extra: int = 0) -> torch.Tensor | None:
        """(n + n_extra, dims) standard normal; the first n rows do not depend on n_extra."""
        if self.corruption not in NOISY:
            return None
        digest = zlib.crc32(np.asarray(prompt, dtype=np.int64).tobytes()) ^ (self.seed * 2_654_435_761 % (1 << 32))
        gen = torch.Generator().manual_seed(int(digest))
        first = torch.randn(n, self.dims, generator=gen)
        return torch.cat([first, torch.randn(n_extra, self.dims, generator=gen)]) if n_extra else first

    def plans(self, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[_Plan]:
        """What to corrupt in each row of a prefill: flagged rows and their chosen positions."""
        flags, regions, _ = self.detector.flags(tokenizer, input_ids, attention_mask)
        plans = []
        for b, (r, flagged) in enumerate(zip(regions, flags, strict=True)):
            if not flagged or r.prompt_end <= r.start:
                continue
            seq = input_ids[b].tolist()
            pos = self._positions(seq, r.start, r.prompt_end)
            extra = self._answer_positions(seq, r.start, r.prompt_end, r.end)
            if pos or extra:
                plans.append(_Plan(b, pos + extra, self._noise(seq[r.start : r.prompt_end], len(pos), len(extra))))
        return plans

    # -- running -----------------------------------------------------------------------------

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        base = wrapped.base
        kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                      use_cache=use_cache, output_hidden_states=output_hidden_states)
        if cache_length(past_key_values) > 0:  # continuing a prompt: never corrupted
            return call_model(base, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if input_ids is None:
            raise ObliviateError("ECO needs token ids to classify a prompt (got inputs_embeds)")
        plans = self.plans(wrapped.tokenizer, input_ids, attention_mask)
        if not plans:
            return call_model(base, logits_to_keep, input_ids=input_ids, **kwargs)
        strength = self.strength * self.embed_scale  # absolute noise scale

        def hook(module, args, output):  # output (B, T, H): the input embeddings
            output = output.clone()
            for p in plans:
                pos = torch.tensor(p.positions, device=output.device)
                noise = None if p.noise is None else p.noise.to(output.device)
                output[p.row, pos] = corrupt(output[p.row, pos], self.corruption, self.dims, strength, noise)
            return output

        handle = base.get_input_embeddings().register_forward_hook(hook)
        try:
            return call_model(base, logits_to_keep, input_ids=input_ids, **kwargs)
        finally:
            handle.remove()

    # -- persistence -------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {**self.detector.state(), "corruption": self.corruption, "strength": self.strength,
                "dims": self.dims, "embed_scale": self.embed_scale, "subject_ids": self.subject_ids,
                "seed": self.seed, "skip_ids": self.skip_ids, "corrupt_answers": self.corrupt_answers}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> EmbeddingCorruption:
        # Saved before `corrupt_answers` existed: those corrupted the prompt only.
        return cls(Detector.from_state(config), config["corruption"], config["strength"], config["dims"],
                   config["embed_scale"], config["subject_ids"], config["seed"], config.get("skip_ids", ()),
                   config.get("corrupt_answers", False))

    def with_strength(self, strength: float) -> EmbeddingCorruption:
        """The same intervention with another σ (shares the classifier)."""
        return EmbeddingCorruption(self.detector, self.corruption, strength, self.dims, self.embed_scale,
                                   self.subject_ids, self.seed, self.skip_ids, self.corrupt_answers)
