"""Batched greedy generation and hidden-state read-out.

`generate_greedy` gives, for each prompt, the same text as an unbatched greedy loop. That text is
the decoded continuation only, cut at the first stop string and stripped. For speed, prompts are
sorted by length into left-padded batches, decoding reuses the KV cache, and a batch stops early
once every row has produced a stop string. Early stopping cannot change the result, because text
after the first stop string is cut anyway.

A plain transformers model (no wrapper, no logits-altering generation settings) is decoded by a lean
loop (`_decode`) instead of `model.generate`: the same prefill and cached steps, greedy by argmax, but a
finished row leaves the batch at once, so the steps after it cost only the rows still running, and no
per-step logits processors or stopping criteria run. Its tokens equal `model.generate`'s
(tests/test_lean_generation.py). Other models (interventions, PEFT wrappers) keep `model.generate`.

`known` gives, per prompt, tokens greedy decoding is already known to produce first: a teacher-forced
pass over a continuation (`ContinuationScores.greedy_prefix`, from scoring the true answer) shows the
model's top token at every position, and these are greedy decoding's own choices for as long as they
agree with the continuation. Decoding starts after them, and a prompt whose known tokens already end in
a stop token needs no decoding at all. In exact arithmetic this changes nothing; in floating point a
teacher-forced pass and a cached decoding step round differently, so, as with any change of batch
composition, a near-tie between two top tokens could resolve the other way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from obliviate.models.batching import _accepts_logits_to_keep
from obliviate.models.prompts import PromptFormat, encode_prompt, encode_prompts, format_of
from obliviate.models.scoring import eval_mode, model_device, pad_ids

# Generation settings under which `model.generate` is not plain greedy decoding: a model whose
# generation config sets any of these away from its default keeps `model.generate`.
_LOGITS_SETTINGS = ("repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
                    "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                    "min_length", "min_new_tokens", "sequence_bias", "exponential_decay_length_penalty",
                    "guidance_scale", "watermarking_config", "force_words_ids", "constraints")


class _StopStrings(StoppingCriteria):
    """Finish a row once its newest tokens decode to text containing a stop string.

    Only the last few tokens are decoded each step: a stop string ending at the newest token
    spans at most as many tokens as it has bytes (plus slack for tokens that decode to nothing).
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_width = prompt_width
        self.window = max(len(s.encode()) for s in self.stops) + 2

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        recent = input_ids[:, self.prompt_width :][:, -self.window :]
        texts = self.tokenizer.batch_decode(recent, skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop_at: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string, stripped."""
    cut = len(text)
    for s in stop_at:
        if s:
            k = text.find(s)
            if k != -1:
                cut = min(cut, k)
    return text[:cut].strip()


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def plain_decoding(model) -> bool:
    """Whether `model.generate(do_sample=False)` is plain greedy decoding of `model`'s own logits, which
    the lean loop reproduces: a transformers causal LM, unwrapped, with no logits-altering settings."""
    from transformers import GenerationConfig, PreTrainedModel

    if not isinstance(model, PreTrainedModel) or getattr(model.config, "is_encoder_decoder", False):
        return False
    if not _accepts_logits_to_keep(model) or "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    config, default = getattr(model, "generation_config", None), GenerationConfig()
    return config is None or all(getattr(config, k, None) == getattr(default, k, None) for k in _LOGITS_SETTINGS)


def _stopped(tokenizer, tokens: list[int], stops: Sequence[str], window: int) -> bool:
    """Whether the newest tokens decode to text holding a stop string (as `_StopStrings` checks)."""
    return bool(stops) and any(s in tokenizer.decode(tokens[-window:], skip_special_tokens=True) for s in stops)


def _done(tokenizer, tokens: list[int], budget: int, eos: set[int], stops: Sequence[str], window: int) -> bool:
    return len(tokens) >= budget or (bool(tokens) and tokens[-1] in eos) or _stopped(tokenizer, tokens, stops, window)


def _keep_rows(cache, keep: torch.Tensor) -> bool:
    """Keep batch rows `keep` of a plain dynamic cache in place; False for any other kind of cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return False
    cache.batch_select_indices(keep)
    return True


def _decode(model, rows: list[list[int]], started: list[list[int]], pad_id: int, finished
            ) -> list[list[int]] | None:
    """Greedy tokens after each of `rows` (prompt + the tokens `started` it), `started` included, one batch.

    `finished(tokens)` says when a row is done. A finished row leaves the batch at once. Returns None when
    the model's cache cannot drop rows (the caller then uses `model.generate`).
    """
    device = model_device(model)
    width = max(map(len, rows))
    ids, mask = pad_ids(rows, width, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): true positions, pads parked at 0
    # transformers 5 names the cache `cache`; earlier versions `past_key_values`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, nxt = getattr(out, name), out.logits[:, -1].float().argmax(-1)  # (B,)
    tokens = [list(s) for s in started]
    active = list(range(len(rows)))
    while True:
        keep = []
        for r, (i, t) in enumerate(zip(active, nxt.tolist(), strict=True)):
            tokens[i].append(t)
            if not finished(tokens[i]):
                keep.append(r)
        if not keep:
            return tokens
        if len(keep) < len(active):  # finished rows leave the batch
            index = torch.tensor(keep, device=device)
            if not _keep_rows(cache, index):
                return None
            mask, nxt, active = mask[index], nxt[index], [active[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)  # (b, T + step)
        pos = mask.sum(-1, keepdim=True) - 1  # (b, 1): each row's next position
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{name: cache})
        cache, nxt = getattr(out, name), out.logits[:, -1].float().argmax(-1)


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[list[int]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stop_at: Sequence[str] = ("\n",),
    stop_ids: Sequence[int] | None = None,
    known: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (texts, or token ids as given), in input order.

    A row stops at EOS (or any of `stop_ids`), or once its text holds a stop string. `known[i]`: tokens
    greedy decoding of prompt i is known to produce first (module docstring); used with the lean loop only.
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    eos = list(stop_ids) if stop_ids else tokenizer.eos_token_id
    stops = [s for s in stop_at if s]
    pad_id = _pad_id(tokenizer)
    if plain_decoding(model):
        eos_set = {eos} if isinstance(eos, int) else set(eos or [])
        return _generate_lean(model, tokenizer, ids, max_new_tokens, batch_size, stops, eos_set, pad_id, known)
    return _generate_hf(model, tokenizer, ids, max_new_tokens, batch_size, stops, eos, pad_id)


def _generate_lean(model, tokenizer, ids, max_new_tokens, batch_size, stops, eos, pad_id, known) -> list[str]:
    """`generate_greedy` by the lean loop, starting each row after its known tokens."""
    window = max((len(s.encode()) for s in stops), default=0) + 2
    finished = lambda t: _done(tokenizer, t, max_new_tokens, eos, stops, window)  # noqa: E731
    started = [[] for _ in ids] if known is None else [list(k) for k in known]
    if len(started) != len(ids):
        raise ValueError(f"{len(ids)} prompts but {len(started)} known prefixes")
    tokens: list[list[int]] = [[] for _ in ids]
    texts: dict[int, str] = {}  # rows a cache that cannot drop rows sent to `model.generate`
    todo = []
    for i, s in enumerate(started):
        # The known tokens up to the first point where decoding would have stopped.
        cut = next((k for k in range(1, len(s) + 1) if finished(s[:k])), None)
        if cut is not None:
            tokens[i] = s[:cut]
        else:
            todo.append(i)
    order = sorted(todo, key=lambda i: len(ids[i]) + len(started[i]))
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            got = _decode(model, [ids[i] + started[i] for i in batch], [started[i] for i in batch], pad_id, finished)
            if got is None:
                hf = _generate_hf(model, tokenizer, [ids[i] for i in batch], max_new_tokens, len(batch), stops,
                                  sorted(eos), pad_id)
                texts.update(zip(batch, hf, strict=True))
                continue
            for i, t in zip(batch, got, strict=True):
                tokens[i] = t
    decoded = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [texts[i] if i in texts else cut_at_stop(text, stops) for i, text in enumerate(decoded)]


def _generate_hf(model, tokenizer, ids, max_new_tokens, batch_size, stops, eos, pad_id) -> list[str]:
    """`generate_greedy` through `model.generate`."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = model_device(model)
    out: list[str] = [""] * len(ids)
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids, mask = pad_ids([ids[i] for i in batch], width, pad_id, left=True)
            criteria = StoppingCriteriaList([_StopStrings(tokenizer, stops, width)] if stops else [])
            gen = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=eos,
                stopping_criteria=criteria,
            )
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                out[i] = cut_at_stop(text, stops)
    return out


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    fmt: PromptFormat | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    stop_at: Sequence[str] | None = None,
    known: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Greedy answers to `questions`, each rendered as a prompt by `fmt` (default: the tokenizer's format).

    The budget and the stops are the format's unless given: plain stops at a newline, chat at the
    template's end-of-turn token; both at EOS. `known[i]`: tokens greedy decoding is known to produce
    first after question i's prompt in this format (module docstring).
    """
    fmt = fmt or format_of(tokenizer)
    prompts = encode_prompts(tokenizer, [fmt.render(q, tokenizer) for q in questions], fmt)
    return generate_greedy(model, tokenizer, prompts, max_new_tokens or fmt.max_new_tokens, batch_size,
                           fmt.stop_strings() if stop_at is None else stop_at, fmt.stop_token_ids(tokenizer), known)


@torch.inference_mode()
def hidden_states(
    model,
    ids_batch: Sequence[list[int]],
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_id: int = 0,
) -> list[np.ndarray]:
    """Hidden state at the last token of each sequence, one (n, hidden) float32 array per layer.

    Layer indices follow `output_hidden_states`: 0 is the embedding output and L is the final
    layer; negative indices count from the end. `layers=None` returns all L + 1 of them.
    """
    if any(len(x) == 0 for x in ids_batch):
        raise ValueError("hidden_states needs at least one token per sequence")
    device = model_device(model)
    order = sorted(range(len(ids_batch)), key=lambda i: len(ids_batch[i]))
    per_layer: list[list[np.ndarray]] | None = None
    chosen: list[int] = []
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            width = max(len(ids_batch[i]) for i in batch)
            ids, mask = pad_ids([ids_batch[i] for i in batch], width, pad_id, left=False)
            ids, mask = ids.to(device), mask.to(device)
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
            if per_layer is None:
                chosen = list(range(len(hs))) if layers is None else [range(len(hs))[k] for k in layers]
                per_layer = [[] for _ in chosen]
            last = mask.sum(-1) - 1  # (B,) index of the last real token (right padding)
            rows = torch.arange(len(batch), device=device)
            for acc, k in zip(per_layer, chosen, strict=True):
                acc.append(hs[k][rows, last].float().cpu().numpy())  # (B, hidden)
    if per_layer is None:
        return []
    inverse = np.argsort(order)  # back to input order
    return [np.concatenate(acc)[inverse] for acc in per_layer]
