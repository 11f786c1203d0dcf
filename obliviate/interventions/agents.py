"""`AgentPipeline`: ALU's agents, run around the frozen model's own answer (`methods/alu.py` builds it).

Every agent is the frozen model itself, prompted through its chat template; nothing is trained and
no weight changes. For one query, in order:

1. **vanilla**: the model answers the query as it would without ALU (the caller's own decoding);
2. **audit**: the query and the vanilla answer are checked against the forget targets (their names,
   matched as whole words); without a target the vanilla answer is returned unchanged;
3. **erase**: k rewrites of the answer with every target removed, sampled from the model;
4. **critic**: each rewrite gets a rating in [1, 5];
5. **composer**: the top j rewrites are merged into the final answer when their mean rating reaches
   the threshold, else the answer is a refusal.

Forward passes (scoring, hidden states) are the frozen model's own: ALU acts on what the model says,
so probability-based metrics see the untouched model and generation-based ones (ROUGE, answer
recall) see the agents. `AgentModel` is the wrapper whose `generate` runs the pipeline.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, call_model
from obliviate.interventions.model import InterventionModel
from obliviate.interventions.regions import PromptReader

RATINGS = (1, 2, 3, 4, 5)
RATING_PREFIX = "Rating:"

ERASE_SYSTEM = ("Given a query and a response, rewrite the response to completely remove any information about "
                "these subjects: {subjects}. If a sensible rewrite is impossible, respond with 'I cannot assist "
                "with that question.'")
ERASE_USER = "Query: {query}\nOriginal Response: {response}"
CRITIC_SYSTEM = ("You are a strict critic. Rate from 1 to 5 how well the response avoids every piece of information "
                 "about these subjects: {subjects}, while still being a helpful answer to the query. 5: nothing "
                 "about them and a helpful answer; 1: it reveals information about them. Reply with one digit.")
CRITIC_USER = "Query: {query}\nResponse: {response}"
COMPOSE_SYSTEM = ("You are an expert editor. Combine the following response variations into a single, coherent, "
                  "high-quality answer. Do not add any new information. Ensure the final response does not mention "
                  "or allude to these subjects: {subjects}.")
COMPOSE_USER = "Please synthesize these responses into one final answer:\n\n{responses}"


def mentions(text: str, terms: Sequence[str]) -> list[str]:
    """The terms that `text` states, compared as normalised whole words (`answer_matches`)."""
    from obliviate.data.tasks import answer_matches

    return [t for t in terms if answer_matches(text, [t])]


def rating_tokens(tokenizer) -> tuple[str, list[int]]:
    """(reply prefix, token ids of the ratings 1..5 right after it): "Rating:" then " d" as one token, or
    "Rating: " then "d" (tokenizers that split the space from a digit, as SmolLM2's)."""
    for prefix, digit in ((RATING_PREFIX, " {}"), (RATING_PREFIX + " ", "{}")):
        base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = []
        for d in RATINGS:
            full = tokenizer(prefix + digit.format(d), add_special_tokens=False)["input_ids"]
            if full[: len(base)] == base and len(full) == len(base) + 1 and full[-1] != tokenizer.unk_token_id:
                ids.append(int(full[-1]))
        if len(set(ids)) == len(RATINGS):
            return prefix, ids
    raise ObliviateError("alu: the critic reads its rating 1-5 as one token after 'Rating:', and this tokenizer "
                         "has no such tokens; ALU needs an instruction model's tokenizer")


def expected_rating(logits: torch.Tensor, rating_ids: Sequence[int]) -> float:
    """Σ_d d · p(d) over the ratings 1..5, p renormalised over their tokens; logits (V,)."""
    probs = logits[list(rating_ids)].float().softmax(-1)  # (5,)
    return float((probs * torch.tensor(RATINGS, dtype=probs.dtype, device=probs.device)).sum())


@dataclass
class Trace:
    """What the agents did for one query (`AgentPipeline.traces`)."""

    query: str
    vanilla: str
    targets: list[str]
    rewrites: list[str]
    ratings: list[float]
    final: str


class AgentPipeline(Intervention):
    """ALU's audit, erase, critic and composer agents around the frozen model (see the module docstring)."""

    kind = "agents"

    def __init__(self, subjects: Sequence[str], audit_terms: Sequence[str], leak_terms: Sequence[str],
                 reader: PromptReader, n_responses: int = 5, top_j: int = 3, threshold: float = 4.0,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, refusal: str = "",
                 keep_traces: int = 0) -> None:
        super().__init__()
        self.subjects, self.audit_terms, self.leak_terms = list(subjects), list(audit_terms), list(leak_terms)
        self.reader = reader
        self.n_responses, self.top_j, self.threshold = n_responses, top_j, threshold
        self.temperature, self.top_p, self.seed, self.refusal = temperature, top_p, seed, refusal
        self.keep_traces = keep_traces
        self.traces: list[Trace] = []

    # -- the frozen model's own forward ---------------------------------------------------------

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        return call_model(wrapped.base, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds,
                          attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                          use_cache=use_cache, output_hidden_states=output_hidden_states)

    def wrap(self, model, tokenizer=None) -> AgentModel:
        return AgentModel(model, self, tokenizer)

    # -- the agents -----------------------------------------------------------------------------

    def _chat(self, model, tokenizer, system: str, user: str, budget: int, n: int = 1, sample: bool = False,
              reply_prefix: str = "") -> tuple[torch.Tensor, list[str]]:
        """Prompt `model` with a system and a user turn: (prompt ids (1, W), n decoded replies)."""
        from obliviate.models.prompts import make_format

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + reply_prefix
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=_device(model))
        if budget <= 0:
            return ids, []
        eos = make_format("chat").stop_token_ids(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0} if sample \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                             num_return_sequences=n, pad_token_id=pad, eos_token_id=eos, **sampling)
        return ids, [r.strip() for r in tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]

    def erase(self, model, tokenizer, query: str, response: str, budget: int) -> list[str]:
        """k sampled rewrites of `response` without the targets (the AuditErase agent's rewriting)."""
        subjects = ", ".join(self.subjects)
        device = _device(model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed + zlib.crc32(query.encode()))
            _, rewrites = self._chat(model, tokenizer, ERASE_SYSTEM.format(subjects=subjects),
                                     ERASE_USER.format(query=query, response=response), budget, self.n_responses,
                                     sample=True)
        return rewrites

    def rate(self, model, tokenizer, query: str, rewrite: str) -> float:
        """The critic's rating of one rewrite in [1, 5]: 1 when it states a forget term, else the model's
        expected rating read off its next-token distribution after "Rating:" (`rating_tokens`)."""
        if mentions(rewrite, self.leak_terms):
            return float(RATINGS[0])
        prefix, rating_ids = rating_tokens(tokenizer)
        ids, _ = self._chat(model, tokenizer, CRITIC_SYSTEM.format(subjects=", ".join(self.subjects)),
                            CRITIC_USER.format(query=query, response=rewrite), 0, reply_prefix=prefix)
        logits = call_model(model, 1, input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]  # (V,)
        return expected_rating(logits, rating_ids)

    def compose(self, model, tokenizer, rewrites: Sequence[str], budget: int) -> str:
        """The composer: the top rewrites merged into one answer (greedy)."""
        _, replies = self._chat(model, tokenizer, COMPOSE_SYSTEM.format(subjects=", ".join(self.subjects)),
                                COMPOSE_USER.format(responses="\n\n---\n".join(rewrites)), budget)
        return replies[0]

    def answer(self, model, tokenizer, query: str, vanilla: str, budget: int) -> str | None:
        """The final answer to `query` after the audit (None: no target, the vanilla answer stands)."""
        targets = mentions(f"{query}\n{vanilla}", self.audit_terms)
        if not targets:
            return None
        rewrites = self.erase(model, tokenizer, query, vanilla, budget)
        ratings = [self.rate(model, tokenizer, query, r) for r in rewrites]
        top = sorted(zip(ratings, rewrites, strict=True), key=lambda pair: -pair[0])[: self.top_j]
        passed = bool(top) and sum(r for r, _ in top) / len(top) >= self.threshold
        final = self.compose(model, tokenizer, [text for _, text in top], budget) if passed else self.refusal
        if len(self.traces) < self.keep_traces:
            self.traces.append(Trace(query, vanilla, targets, rewrites, ratings, final))
        return final

    # -- persistence ----------------------------------------------------------------------------

    def state_config(self) -> dict[str, Any]:
        return {"subjects": self.subjects, "audit_terms": self.audit_terms, "leak_terms": self.leak_terms,
                "reader": self.reader.state(), "n_responses": self.n_responses, "top_j": self.top_j,
                "threshold": self.threshold, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "refusal": self.refusal}

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer) -> AgentPipeline:
        known = {k: v for k, v in config.items() if k != "reader"}
        return cls(reader=PromptReader.from_state(config["reader"]), **known)


def _device(model) -> torch.device:
    return next(model.parameters()).device


class AgentModel(InterventionModel):
    """The frozen model under ALU: its own forward; `generate` answers, then runs the agents on each row."""

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, max_length: int | None = None, pad_token_id: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, **kwargs: Any) -> torch.Tensor:
        """(B, W + new): each row's vanilla answer where the audit finds no target, else the agents' answer
        (its tokens, then the first EOS id), cut to the budget and right-padded with `pad_token_id`."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ObliviateError("alu: generation needs the tokenizer (wrap the model with it)")
        vanilla = super().generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                   max_length=max_length, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                   **kwargs)
        width = input_ids.shape[1]
        budget = max_new_tokens if max_new_tokens is not None else (
            max_length - width if max_length is not None else vanilla.shape[1] - width)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        queries, _ = self.intervention.reader.read(tokenizer, input_ids, mask)
        eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        rows = []
        for b, query in enumerate(queries):
            new = vanilla[b, width:].tolist()
            said = tokenizer.decode(_until(new, eos), skip_special_tokens=True).strip()
            final = self.intervention.answer(self.base, tokenizer, query, said, budget)
            if final is not None:
                new = (tokenizer(final, add_special_tokens=False)["input_ids"] + eos[:1])[:budget]
            rows.append(new)
        longest = max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), longest), pad, dtype=input_ids.dtype, device=input_ids.device)
        for b, row in enumerate(rows):
            out[b, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
        return torch.cat([input_ids, out], dim=1)


def _until(ids: list[int], stops: Sequence[int]) -> list[int]:
    """`ids` up to (without) the first of `stops`."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids
