"""GUARD's run-time rule: restricted decoding after prompts the classifier flags.

Deng et al. 2025, *GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection*.
When the prompt classifier flags a prompt, the tokens that would spell a forbidden term are
banned at every position after the prompt:

- **token matching**: each forbidden term is a token sequence t_1..t_m (with and without a
  leading space). Its first token t_1 is banned everywhere; when the tokens produced so far end
  with t_1..t_j (j < m), its continuation t_{j+1} is banned too, so a term cannot be completed
  even from a sub-token prefix that slipped through (another term's token, a different split);
- **semantic matching**: vocabulary tokens whose embedding is close to a term's (cosine ≥ a
  threshold, computed when the rule is built) are banned everywhere, like first tokens.

Special tokens (EOS, padding) are never banned, so generation can always stop.

In generation a banned token gets probability 0 (its logit is set to −∞ by
`GuardLogitsProcessor`). For scoring, where a zero would make a log-probability −∞, the
restriction is a renormalisation with a floor: at a restricted position with banned set B and
ε = `floor_prob`,

    p'(v) = p(v) / (1 − p(B)) / (1 + |B|ε)    v ∉ B
    p'(v) = ε / (1 + |B|ε)                    v ∈ B

(logits of banned tokens replaced by logsumexp_{v∉B} logit_v + log ε). It is a distribution, its
argmax is the restricted generation's, and banned answer tokens score about log ε.

The restriction depends on the whole prompt and on every token after it, which a continuation
fed against a shared prompt cache does not show; `shares_prompt_cache` is False, so the scorer
runs prompt + answer as one sequence. A forward call that continues a cache is not restricted:
generation applies the rule through its logits processor instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, cache_length, call_model
from obliviate.interventions.classifier import PromptClassifier
from obliviate.interventions.detector import Detector
from obliviate.interventions.regions import PromptReader, Region
from obliviate.models.prompts import PromptFormat


class RestrictedDecoding(Intervention):
    """Classifier-gated bans on the tokens of forbidden terms (GUARD)."""

    kind = "restricted_decoding"
    shares_prompt_cache = False

    def __init__(self, classifier: PromptClassifier, terms: list[str], term_ids: list[list[int]],
                 semantic_ids: list[int], protected_ids: list[int], marker: list[int], fmt: PromptFormat,
                 floor_prob: float = 1e-6) -> None:
        super().__init__()
        if not 0 < floor_prob < 1:
            raise ObliviateError(f"floor_prob must be in (0, 1), got {floor_prob}")
        self.detector = Detector(classifier, PromptReader(tuple(marker), fmt))
        self.terms = list(terms)
        self.term_ids = [list(t) for t in term_ids]
        self.semantic_ids = sorted(set(semantic_ids))
        self.protected_ids = sorted(set(protected_ids))
        self.floor_prob = float(floor_prob)
        protected = set(self.protected_ids)
        # Banned everywhere: first tokens of terms and semantic neighbours.
        self.static_ban = sorted(({t[0] for t in self.term_ids} | set(self.semantic_ids)) - protected)
        # prefix (t_1..t_j) -> continuations t_{j+1}, for every proper prefix of every term.
        self.continuations: dict[tuple[int, ...], set[int]] = {}
        for t in self.term_ids:
            for j in range(1, len(t)):
                if t[j] not in protected:
                    self.continuations.setdefault(tuple(t[:j]), set()).add(t[j])
        self.max_prefix = max((len(t) - 1 for t in self.term_ids), default=0)

    @property
    def classifier(self) -> PromptClassifier:
        """The prompt classifier that gates this intervention."""
        return self.detector.classifier

    # -- the rule ----------------------------------------------------------------------------

    def continuing(self, produced: Sequence[int]) -> set[int]:
        """Tokens that would continue a term whose proper prefix `produced` ends with."""
        out: set[int] = set()
        produced = list(produced)
        for j in range(1, min(self.max_prefix, len(produced)) + 1):
            out |= self.continuations.get(tuple(produced[-j:]), set())
        return out

    def banned_after(self, produced: Sequence[int]) -> set[int]:
        """Tokens banned as the next token after `produced` (the tokens after the prompt)."""
        return set(self.static_ban) | self.continuing(produced)

    def ban_mask(self, produced_per_position: Sequence[Sequence[int]], vocab: int, device) -> torch.Tensor:
        """(n, vocab) bool: the banned next tokens after each of n token histories."""
        mask = torch.zeros(len(produced_per_position), vocab, dtype=torch.bool, device=device)
        mask[:, self.static_ban] = True
        for k, produced in enumerate(produced_per_position):
            extra = self.continuing(produced)
            if extra:
                mask[k, sorted(extra)] = True
        return mask

    def flags_and_regions(self, tokenizer, input_ids, attention_mask) -> tuple[list[bool], list[Region]]:
        flags, regions, _ = self.detector.flags(tokenizer, input_ids, attention_mask)
        return [bool(f) for f in flags], regions

    def restrict(self, logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
        """Floor-renormalised logits (see the module docstring); logits, banned (N, V)."""
        x = logits.float()
        allowed = x.masked_fill(banned, -math.inf).logsumexp(-1, keepdim=True)  # (N, 1)
        return torch.where(banned, allowed + math.log(self.floor_prob), x).to(logits.dtype)

    # -- running -----------------------------------------------------------------------------

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        out = call_model(wrapped.base, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds,
                         attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache,
                         output_hidden_states=output_hidden_states)
        if cache_length(past_key_values) > 0:
            return out  # a continuation: generation restricts it through generation_processors
        if input_ids is None:
            raise ObliviateError("GUARD needs token ids to classify a prompt (got inputs_embeds)")
        flags, regions = self.flags_and_regions(wrapped.tokenizer, input_ids, attention_mask)
        if not any(flags):
            return out
        logits = out.logits.clone()  # (B, n, V): the last n of the T positions
        first = input_ids.shape[1] - logits.shape[1]
        for b, (flag, r) in enumerate(zip(flags, regions, strict=True)):
            # Position p predicts token p + 1; restricted from the prompt's last token on.
            cols = list(range(max(r.prompt_end - 1, first, r.start), r.end))
            if not flag or not cols:
                continue
            seq = input_ids[b].tolist()
            mask = self.ban_mask([seq[r.prompt_end : p + 1] for p in cols], logits.shape[-1], logits.device)
            idx = torch.tensor(cols, device=logits.device) - first
            logits[b, idx] = self.restrict(logits[b, idx], mask)
        out.logits = logits
        return out

    def generation_processors(self, wrapped, input_ids, attention_mask) -> list:
        flags, _ = self.flags_and_regions(wrapped.tokenizer, input_ids, attention_mask)
        return [GuardLogitsProcessor(self, flags, input_ids.shape[1])]

    # -- persistence -------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {**self.detector.state(), "terms": self.terms, "term_ids": self.term_ids,
                "semantic_ids": self.semantic_ids, "protected_ids": self.protected_ids, "floor_prob": self.floor_prob}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> RestrictedDecoding:
        detector = Detector.from_state(config)
        return cls(detector.classifier, config["terms"], config["term_ids"], config["semantic_ids"],
                   config["protected_ids"], list(detector.reader.marker), detector.reader.fmt, config["floor_prob"])


class GuardLogitsProcessor(LogitsProcessor):
    """Sets the logits of banned tokens to −∞ in rows whose prompt was flagged.

    Usable with HF `generate` on the bare model too: `flags` per row, `prompt_width` the padded
    prompt width (tokens after it are the ones produced so far).
    """

    def __init__(self, rule: RestrictedDecoding, flags: Sequence[bool], prompt_width: int) -> None:
        self.rule = rule
        self.flags = list(flags)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        rows = [b for b, flag in enumerate(self.flags) if flag]
        if rows:
            produced = [input_ids[b, self.prompt_width :].tolist() for b in rows]
            mask = self.rule.ban_mask(produced, scores.shape[-1], scores.device)
            scores[rows] = scores[rows].masked_fill(mask, -math.inf)
        return scores
