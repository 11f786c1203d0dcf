"""The three prefix interventions: a soft prompt (SPUL), in-context examples (ICUL) and a fixed prefix (the
prompt baseline); `obliviate.interventions.prefix` holds what they share (the prefix cache, the gate).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from obliviate.errors import ObliviateError
from obliviate.interventions.classifier import get_embedder
from obliviate.interventions.detector import Detector
from obliviate.interventions.prefix import STATIC, PrefixIntervention, tokenizer_bos
from obliviate.interventions.regions import PromptReader


class SoftPrompt(PrefixIntervention):
    """K trainable input vectors after the BOS of every input (of flagged inputs, with a detector).

    During training the vectors may come from an `encoder` module (SPUL's P-tuning MLP); `bake()`
    stores its output as a plain (K, H) tensor, which is all that is saved and loaded.
    """

    kind = "soft_prompt"

    def __init__(self, prompt: torch.Tensor | None = None, encoder: nn.Module | None = None,
                 num_tokens: int | None = None, bos_id: int | None = None, detector: Detector | None = None) -> None:
        super().__init__(bos_id, detector)
        if (prompt is None) == (encoder is None):
            raise ValueError("give exactly one of prompt and encoder")
        self.encoder = encoder
        self.prompt = nn.Parameter(prompt.detach().clone()) if prompt is not None else None
        self._num_tokens = int(prompt.shape[0]) if prompt is not None else int(num_tokens)

    @property
    def prefix_length(self) -> int:
        return self._num_tokens + (self.bos_id is not None)

    def virtual_tokens(self, base: nn.Module) -> torch.Tensor:
        """The K vectors, (K, H), in the model's dtype."""
        dtype = base.get_input_embeddings().weight.dtype
        if self.encoder is not None:
            device = next(self.encoder.parameters()).device
            return self.encoder(torch.arange(self._num_tokens, device=device)).to(dtype)
        return self.prompt.to(dtype)

    def prefix_embeds(self, base: nn.Module, key: Hashable = STATIC) -> torch.Tensor:
        tokens = self.virtual_tokens(base)
        if self.bos_id is None:
            return tokens
        emb = base.get_input_embeddings()
        bos = emb(torch.tensor([self.bos_id], device=emb.weight.device)).to(tokens.device)
        return torch.cat([bos, tokens], dim=0)  # (1 + K, H)

    @torch.no_grad()
    def bake(self, base: nn.Module, detector: Detector | None = None) -> SoftPrompt:
        """The same prompt as a plain tensor (drops the encoder), gated by `detector` if given."""
        return SoftPrompt(prompt=self.virtual_tokens(base).float(), bos_id=self.bos_id,
                          detector=detector).requires_grad_(False)

    def state_config(self) -> dict[str, Any]:
        return {"num_tokens": self._num_tokens, "bos_id": self.bos_id, **self.detector_state()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.prompt is None:
            raise ObliviateError("bake() a soft prompt with an encoder before saving it")
        return {"prompt": self.prompt}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> SoftPrompt:
        detector = Detector.from_state(config["detector"]) if config.get("detector") else None
        out = cls(prompt=tensors["prompt"], bos_id=config.get("bos_id"), detector=detector)
        out.requires_grad_(False)
        return out.to(next(model.parameters()).device)


class InContextPrefix(PrefixIntervention):
    """Real context tokens before every input (every flagged input, with a detector): the prompt baseline.

    `context_ids` start with the BOS when the tokenizer adds one (`bos_id`).
    """

    kind = "in_context"

    def __init__(self, context_ids: list[int], context: str = "", bos_id: int | None = None,
                 detector: Detector | None = None) -> None:
        super().__init__(bos_id, detector)
        if len(context_ids) < 1 + (bos_id is not None):
            raise ObliviateError("an in-context prefix needs at least one token besides the BOS")
        if bos_id is not None and context_ids[0] != bos_id:
            raise ObliviateError("an in-context prefix with a BOS must start with it")
        self.context = context
        self.register_buffer("context_ids", torch.tensor(context_ids, dtype=torch.long), persistent=False)

    @classmethod
    def from_text(cls, tokenizer, context: str, detector: Detector | None = None) -> InContextPrefix:
        """The context encoded as the tokenizer encodes any text (with its BOS)."""
        ids = list(tokenizer(context, add_special_tokens=True)["input_ids"])
        return cls(ids, context, tokenizer_bos(tokenizer), detector)

    @property
    def prefix_length(self) -> int:
        return int(self.context_ids.shape[0])

    def prefix_embeds(self, base: nn.Module, key: Hashable = STATIC) -> torch.Tensor:
        emb = base.get_input_embeddings()
        return emb(self.context_ids.to(emb.weight.device))

    def state_config(self) -> dict[str, Any]:
        return {"context": self.context, "context_ids": self.context_ids.tolist(), "bos_id": self.bos_id,
                **self.detector_state()}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> InContextPrefix:
        detector = Detector.from_state(config["detector"]) if config.get("detector") else None
        return cls(list(config["context_ids"]), config.get("context", ""), config.get("bos_id"), detector)


class InContextExamples(PrefixIntervention):
    """ICUL's context, chosen per query: [BOS] + the k forget examples nearest to it + the correct examples.

    `forget_blocks[i]` are the token ids of forget example i (its flipped label or refusal and the
    separator, no BOS), `correct_ids` those of the correct examples, the same for every query.
    `forget_keys` (n, d) embed each forget example's prompt with `embedder`; a query's question,
    read from its tokens by `reader`, is embedded the same way and the k examples of highest cosine
    similarity are used, in their original order. With k ≥ n every query gets every example.
    """

    kind = "in_context_examples"

    def __init__(self, forget_blocks: Sequence[Sequence[int]], correct_ids: Sequence[int],
                 forget_keys: torch.Tensor | np.ndarray,
                 embedder: str, per_query: int, reader: PromptReader, bos_id: int | None = None,
                 detector: Detector | None = None, texts: Sequence[str] = ()) -> None:
        super().__init__(bos_id, detector)
        if not forget_blocks or per_query < 1:
            raise ObliviateError("in-context examples need at least one forget example per query")
        self.forget_blocks = [list(b) for b in forget_blocks]
        self.correct_ids = list(correct_ids)
        self.embedder = embedder
        self.per_query = min(int(per_query), len(self.forget_blocks))
        self.texts = list(texts)  # the examples as text, for reading a saved run
        self._reader = reader
        self.forget_keys = np.asarray(forget_keys.detach().float().cpu() if isinstance(forget_keys, torch.Tensor)
                                      else forget_keys, dtype=np.float32)  # (n, d)
        self._query_memo: dict[str, np.ndarray] = {}

    @property
    def reads_questions(self) -> bool:  # type: ignore[override]
        return self.per_query < len(self.forget_blocks)

    @property
    def reader(self) -> PromptReader:
        return self._reader

    def context_ids(self, key: Hashable) -> list[int]:
        chosen = range(len(self.forget_blocks)) if key == STATIC else key
        head = [self.bos_id] if self.bos_id is not None else []
        return head + [t for i in chosen for t in self.forget_blocks[i]] + self.correct_ids

    @property
    def prefix_length(self) -> int:
        """The longest context a query can get."""
        longest = sorted((len(b) for b in self.forget_blocks), reverse=True)[: self.per_query]
        return (self.bos_id is not None) + sum(longest) + len(self.correct_ids)

    def select(self, questions: Sequence[str]) -> list[Hashable]:
        if not self.reads_questions:
            return [STATIC] * len(questions)
        todo = [q for q in dict.fromkeys(questions) if q not in self._query_memo]
        if todo:
            for q, e in zip(todo, get_embedder(self.embedder).encode(todo), strict=True):
                self._query_memo[q] = e
        queries = np.stack([self._query_memo[q] for q in questions])  # (b, d), unit norm
        sims = queries @ self.forget_keys.T  # (b, n)
        top = np.argsort(-sims, axis=1, kind="stable")[:, : self.per_query]
        return [tuple(sorted(int(i) for i in row)) for row in top]

    def prefix_embeds(self, base: nn.Module, key: Hashable = STATIC) -> torch.Tensor:
        emb = base.get_input_embeddings()
        return emb(torch.tensor(self.context_ids(key), dtype=torch.long, device=emb.weight.device))

    def state_config(self) -> dict[str, Any]:
        return {"forget_blocks": self.forget_blocks, "correct_ids": self.correct_ids, "embedder": self.embedder,
                "per_query": self.per_query, "reader": self._reader.state(), "bos_id": self.bos_id,
                "texts": self.texts, **self.detector_state()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"forget_keys": torch.from_numpy(self.forget_keys)}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> InContextExamples:
        detector = Detector.from_state(config["detector"]) if config.get("detector") else None
        return cls(config["forget_blocks"], config["correct_ids"], tensors["forget_keys"], config["embedder"],
                   config["per_query"], PromptReader.from_state(config["reader"]), config.get("bos_id"), detector,
                   config.get("texts", ()))
