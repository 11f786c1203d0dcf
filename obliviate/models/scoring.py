"""Batched teacher-forced scoring: per-token log-probabilities of continuations after prompts.

For a prompt x and a continuation y = (y_1..y_n), the scores are, for every t,

    logprob_t      = log p(y_t | x, y_<t)
    argmax_match_t = [argmax_v p(v | x, y_<t) == y_t]
    mu_t           = E_{v~p}[log p_v]          (Min-K%++, Zhang et al. 2024)
    var_t          = Var_{v~p}[log p_v]

Scoring is the inner loop of every evaluation, so `score_continuations` shares work wherever the
maths allows. A QA item scores its answer, its paraphrased answer and several perturbed answers,
all after the same question prompt, so each prompt goes through the model once:

- **Packed** (plain transformers models): one row holds a prompt followed by all of its
  continuations, [x | y^1 | y^2 | ...]. A custom 4D attention mask lets every continuation token
  see the prompt and its own earlier tokens only, and position ids restart after the prompt for
  each continuation, so every token sees exactly what it would see in its own sequence
  x + y^j. Rows are grouped so that a forward pass holds no more tokens than a padded batch of
  `batch_size` whole sequences. Whether a model honours such masks is checked once per model on a
  small probe against separate full sequences; a model that does not is scored another way.
- **Cached** (wrappers that extend a prompt's KV cache but take only 2D masks, such as prefix
  interventions): each group of prompts is encoded once in a left-padded prefill that keeps only
  the last position's logits (they predict y_1); the prompt KV cache is repeated once per
  continuation, and the continuations run in right-padded forward passes whose attention mask is
  [prompt mask | continuation mask] and whose positions carry on from each prompt's true length.
- **Concatenated** (everything else): every prompt + continuation is one full sequence.

The final continuation token is never fed, because it predicts nothing that gets scored. Log-probs
are computed only at real (unpadded) positions, as a float32 log-softmax over row chunks of
bounded size followed by a gather, so no (B, T, V) float32 tensor is ever built.

`score_texts` scores every token after the first of whole sequences (passages, membership
inference), where there is no shared prefix to exploit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from obliviate.errors import ConfigError, ObliviateError
from obliviate.models.batching import (  # noqa: F401  (re-exported: the public names of scoring)
    QA_FIELDS,
    ContinuationScores,
    _accepts_logits_to_keep,
    _assemble,
    _empty_scores,
    _expandable,
    _row_scores,
    _score_concatenated,
    _score_spans,
    _select_rows,
    eval_mode,
    model_device,
    pad_ids,
)
from obliviate.models.packing import _honours_packed_masks, _score_packed
from obliviate.models.prompts import PromptFormat, encode_qa, format_of

# ---------------------------------------------------------------------------------------------
# Shared-prompt scoring
# ---------------------------------------------------------------------------------------------


def _prefill(model, prompts: Sequence[Sequence[int]], pad_id: int, logits_to_keep: bool):
    """Encode prompts once, left-padded so that position -1 is every prompt's last token.

    Returns (last-position logits (b, V), KV cache of (b, H, P, D) per layer, prompt mask (b, P)).
    """
    device = model_device(model)
    ids, mask = pad_ids(prompts, max(len(p) for p in prompts), pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, P): true positions, pads parked at 0
    keep = {"logits_to_keep": 1} if logits_to_keep else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)
    return out.logits[:, -1], out.past_key_values, mask


def _score_after_prefill(model, cache, p_mask, rows, conts, token_stats, pad_id):
    """Scores of y_2..y_n of each continuation, fed as y_1..y_{n-1} against its prompt's cache.

    `rows[k]` is the prefill row of continuation k. Returns flat per-token columns.
    """
    device = p_mask.device
    width = max(len(c) for c in conts) - 1
    ids, mask = pad_ids([c[:-1] for c in conts], width, pad_id, left=False)
    ids, mask = ids.to(device), mask.to(device)
    pos = p_mask.sum(-1)[rows, None] + torch.arange(width, device=device)  # (N, C): after each prompt
    attn = torch.cat([p_mask[rows], mask], dim=1)  # (N, P + C)
    past = _select_rows(cache, rows, getattr(model, "config", None))  # (N, H, P, D) per layer
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=past,
                   use_cache=True).logits  # (N, C, V)
    targets = pad_ids([c[1:] for c in conts], width, pad_id, left=False)[0].to(device)
    valid = mask.bool()
    return _row_scores(logits[valid], targets[valid], token_stats)


def _score_shared(model, prompts, continuations, chunk, batch_size, token_stats, pad_id, logits_to_keep):
    """Scores of all continuations of the prompts in `chunk`: one prefill, then cached batches.

    Returns {(i, j): ContinuationScores}, or None when the model's cache cannot be repeated.
    """
    first_logits, cache, p_mask = _prefill(model, [prompts[i] for i in chunk], pad_id, logits_to_keep)
    longest = max(len(c) for i in chunk for c in continuations[i])
    if not _expandable(cache, p_mask.shape[1] + longest):
        return None
    device = p_mask.device
    # Longest continuations first, so each batch pads little and memory peaks on the first one.
    pairs = sorted(
        ((k, i, j) for k, i in enumerate(chunk) for j, c in enumerate(continuations[i]) if len(c)),
        key=lambda t: -len(continuations[t[1]][t[2]]),
    )
    scores = {}
    for s in range(0, len(pairs), batch_size):
        batch = pairs[s : s + batch_size]
        conts = [continuations[i][j] for _, i, j in batch]
        rows = torch.tensor([k for k, _, _ in batch], device=device)
        y1 = torch.tensor([c[0] for c in conts], device=device)
        first = _row_scores(first_logits[rows], y1, token_stats)  # y_1 from the prompt's last logits
        splits = [len(c) - 1 for c in conts]
        if max(splits) > 0:
            rest = _score_after_prefill(model, cache, p_mask, rows, conts, token_stats, pad_id)
        else:
            rest = [col[:0] for col in first]
        for (_, i, j), sc in zip(batch, _assemble(first, rest, splits, token_stats), strict=True):
            scores[(i, j)] = sc
    return scores


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


@torch.inference_mode()
def score_continuations(
    model,
    prompts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    batch_size: int = 32,
    token_stats: bool = False,
    pad_id: int = 0,
    progress: bool = False,
    share_prompt: bool = True,
) -> list[list[ContinuationScores]]:
    """Scores of `continuations[i][j]` after `prompts[i]`, as `result[i][j]`.

    `batch_size` bounds the continuations per forward pass. `pad_id` only fills padded slots,
    which are masked. With `share_prompt=False` (or a model whose cache cannot be repeated),
    every prompt+continuation is run as one full sequence instead; the scores are the same.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for i, conts in enumerate(continuations):
        if not prompts[i] and any(len(c) for c in conts):
            raise ObliviateError(f"prompt {i} is empty: its first continuation token has no context")
    results: list[list[ContinuationScores]] = [[_empty_scores(token_stats) for _ in c] for c in continuations]
    # Prompts sorted by length, so each prefill chunk pads little.
    order = sorted((i for i, c in enumerate(continuations) if any(len(x) for x in c)), key=lambda i: len(prompts[i]))
    total = sum(sum(1 for c in continuations[i] if len(c)) for i in order)
    with eval_mode(model), _progress(total, progress, "scoring") as bar:
        if share_prompt and order and _honours_packed_masks(model, pad_id):
            for scores in _score_packed(model, prompts, continuations, order, batch_size, token_stats, pad_id):
                for (i, j), sc in scores.items():
                    results[i][j] = sc
                if bar is not None:
                    bar.update(len(scores))
            return results
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        keep = _accepts_logits_to_keep(model)
        # A wrapper whose forward depends on more than a prompt's cache (an intervention) opts out.
        share_prompt = share_prompt and getattr(model, "shares_prompt_cache", True)
        for chunk in chunks:
            scores = None
            if share_prompt:
                scores = _score_shared(model, prompts, continuations, chunk, batch_size, token_stats, pad_id, keep)
            if scores is None:
                scores = _score_concatenated(model, prompts, continuations, chunk, batch_size, token_stats, pad_id)
            for (i, j), sc in scores.items():
                results[i][j] = sc
            if bar is not None:
                bar.update(len(scores))
    return results


@torch.inference_mode()
def score_texts(
    model,
    texts_ids: Sequence[list[int]],
    batch_size: int = 32,
    token_stats: bool = False,
    pad_id: int = 0,
    progress: bool = False,
) -> list[ContinuationScores]:
    """Scores of every token after the first of each sequence (n - 1 tokens for n ids)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    results = [_empty_scores(token_stats) for _ in texts_ids]
    order = sorted((i for i in range(len(texts_ids)) if len(texts_ids[i]) > 1), key=lambda i: len(texts_ids[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    with eval_mode(model), _progress(len(order), progress, "scoring") as bar:
        for batch in batches:
            scores = _score_spans(model, [texts_ids[i] for i in batch], [1] * len(batch), token_stats, pad_id)
            for i, s in zip(batch, scores, strict=True):
                results[i] = s
            if bar is not None:
                bar.update(len(batch))
    return results


# ---------------------------------------------------------------------------------------------
# QA items
# ---------------------------------------------------------------------------------------------


def score_qa(
    model,
    tokenizer,
    items: Sequence,
    fmt: PromptFormat | None = None,
    fields: Sequence[str] = QA_FIELDS,
    batch_size: int = 32,
    token_stats: bool = False,
    eos: bool = True,
    progress: bool = False,
) -> list[dict[str, object]]:
    """Per item, scores of its answers after its `question` prompt (TOFU style).

    Returns one dict per item with a key per requested field: "answer" -> ContinuationScores,
    "paraphrased_answer" -> ContinuationScores or None when the item has none, and
    "perturbed_answers" -> list of ContinuationScores. Paraphrased *questions* are different
    prompts and are not scored here.
    """
    unknown = [f for f in fields if f not in QA_FIELDS]
    if unknown:
        raise ConfigError(f"unknown QA field(s) {unknown}; choose from {list(QA_FIELDS)}")
    # Each prompt is tokenized once and every answer in one batched call; the ids equal `encode_pair`'s
    # (tests/test_models.py checks the scores against it). The format is the tokenizer's unless given.
    prompts, conts = encode_qa(tokenizer, [item.question for item in items], [_answers(item, fields) for item in items],
                               fmt or format_of(tokenizer), eos=eos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = score_continuations(model, prompts, conts, batch_size, token_stats, pad_id, progress)
    results = []
    for item, scores in zip(items, scored, strict=True):
        rest = iter(scores)  # consumed in the order _answers produced them
        out: dict[str, object] = {}
        for field in fields:
            if field == "answer":
                out[field] = next(rest)
            elif field == "paraphrased_answer":
                out[field] = None if item.paraphrased_answer is None else next(rest)
            else:
                out[field] = [next(rest) for _ in item.perturbed_answers]
        results.append(out)
    return results


def _answers(item, fields: Sequence[str]) -> list[str]:
    """The answer texts of `item` to score, field by field in the order of `fields`."""
    texts: list[str] = []
    for field in fields:
        if field == "answer":
            texts.append(item.answer)
        elif field == "paraphrased_answer":
            texts += [] if item.paraphrased_answer is None else [item.paraphrased_answer]
        else:
            texts += list(item.perturbed_answers)
    return texts
