"""Packed scoring: a prompt and all of its continuations in one row, [x | y^1 | y^2 | ...].

A custom 4D attention mask lets every continuation token see the prompt and its own earlier tokens
only, and position ids restart after the prompt for each continuation, so every token sees exactly
what it would see in its own sequence x + y^j. Whether a model honours such masks is checked once
per model (`honours_packed_masks`) on a small probe against separate full sequences.

Tokens that begin every prompt of a call (a chat template's system turn and date, often most of a
short question's prompt) are encoded once: their KV cache is repeated for every row, and the rows
hold only what follows them, attending to the cached keys through the mask's first columns. The
probe checks that path too, and a model that fails it is packed without the shared prefix.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from obliviate.models.batching import (
    _accepts_logits_to_keep,
    _assemble,
    _expandable,
    _row_scores,
    _score_concatenated,
    _select_rows,
    model_device,
)

# ---------------------------------------------------------------------------------------------
# Packed scoring: a prompt and all its continuations in one row
# ---------------------------------------------------------------------------------------------

# Longest packed row; an item with more continuation tokens is split over several rows.
_MAX_PACKED_ROW = 1024
# Models already probed: (custom 4D masks honoured, and with a cached shared prefix too).
_PACKING_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# A prefix shorter than this is not worth a separate forward pass.
_MIN_SHARED_PREFIX = 8


def _shared_prefix(prompts, order) -> int:
    """Length of the token prefix common to every prompt in `order`, leaving each prompt at least
    its last token (it predicts the first continuation token); 0 when shorter than worth caching."""
    common = os.path.commonprefix([list(prompts[i]) for i in order])
    h = min(len(common), min(len(prompts[i]) for i in order) - 1)
    return h if h >= _MIN_SHARED_PREFIX else 0


def _encode_prefix(model, ids: list[int]):
    """The KV cache of `ids` at positions 0..len-1 (batch 1)."""
    device = model_device(model)
    out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.arange(len(ids), device=device)[None],
                use_cache=True, **({"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}))
    return out.past_key_values


def _packed_rows(prompts, continuations, order, limit: int) -> list[tuple[int, list[int]]]:
    """(prompt i, its continuation indices) per row; a row's fed length stays within `limit`
    unless a single continuation alone exceeds it."""
    rows = []
    for i in order:
        cur, length = [], len(prompts[i])
        for j, c in enumerate(continuations[i]):
            if not len(c):
                continue
            if cur and length + len(c) - 1 > limit:
                rows.append((i, cur))
                cur, length = [], len(prompts[i])
            cur.append(j)
            length += len(c) - 1
        rows.append((i, cur))
    return rows


def _score_packed(model, prompts, continuations, order, batch_size, token_stats, pad_id):
    """Yields {(i, j): ContinuationScores} per forward pass of packed rows.

    A pass holds at most as many tokens as a padded batch of `batch_size` of its longest whole
    sequences (prompt + continuation), so peak memory matches plain batched scoring.
    """
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    limit = min(_MAX_PACKED_ROW, window) if window else _MAX_PACKED_ROW
    rows = _packed_rows(prompts, continuations, order, limit)
    h, prefix = 0, None
    if not window and len(rows) > 1 and _PACKING_SUPPORT.get(model, (True, False))[1]:
        h = _shared_prefix(prompts, order)
        prefix = _encode_prefix(model, list(prompts[order[0]][:h])) if h else None
        if prefix is not None and not _expandable(prefix, 0):  # a cache of plain attention layers only
            h, prefix = 0, None
    fed = lambda r: len(prompts[r[0]]) - h + sum(len(continuations[r[0]][j]) - 1 for j in r[1])  # noqa: E731
    whole = lambda r: len(prompts[r[0]]) + max(len(continuations[r[0]][j]) for j in r[1])  # noqa: E731
    # A row longer than a sliding window would let tokens see keys the window hides: score it whole.
    long_rows = [r for r in rows if window and fed(r) > window]
    if long_rows:
        yield _score_concatenated(model, prompts, continuations, [i for i, _ in long_rows], batch_size,
                                  token_stats, pad_id, only={(i, j) for i, js in long_rows for j in js})
    rows = sorted((r for r in rows if not (window and fed(r) > window)), key=fed)
    group: list[tuple[int, list[int]]] = []
    width = longest = 0
    for row in rows:
        w, s = max(width, fed(row)), max(longest, whole(row))
        if group and (len(group) + 1) * w > batch_size * s:
            yield _forward_packed(model, prompts, continuations, group, token_stats, pad_id, h, prefix)
            group, w, s = [], fed(row), whole(row)
        group.append(row)
        width, longest = w, s
    if group:
        yield _forward_packed(model, prompts, continuations, group, token_stats, pad_id, h, prefix)


def _forward_packed(model, prompts, continuations, group, token_stats, pad_id, h: int = 0, prefix=None):
    """Scores of the continuations in `group` (rows of prompt i + continuations js), one forward.

    With `prefix`, the KV cache of the first `h` tokens that every prompt shares, rows start after them."""
    device = model_device(model)
    ids, pos, seg, b_idx, t_idx, targets, keys, splits = [], [], [], [], [], [], [], []
    for b, (i, js) in enumerate(group):
        p = len(prompts[i])
        row, at = list(prompts[i][h:]), p - h
        r_pos, r_seg = list(range(h, p)), [0] * (p - h)
        for k, j in enumerate(js):
            c = continuations[i][j]
            n = len(c) - 1  # the last token predicts nothing scored, so it is not fed
            row += c[:-1]
            r_pos += range(p, p + n)
            r_seg += [k + 1] * n
            b_idx += [b] * len(c)
            t_idx += [p - h - 1, *range(at, at + n)]  # y_1 from the prompt's last position
            targets += c
            keys.append((i, j))
            splits.append(len(c))
            at += n
        ids.append(row)
        pos.append(r_pos)
        seg.append(r_seg)
    width = max(map(len, ids))
    pad = lambda rows, value: [r + [value] * (width - len(r)) for r in rows]  # noqa: E731
    ids_t = torch.tensor(pad(ids, pad_id), device=device)
    pos_t = torch.tensor(pad(pos, 0), device=device)
    seg_t = torch.tensor(pad(seg, -1), device=device)
    # Logits are needed from the earliest prompt end onwards only (a 1D `logits_to_keep`).
    start = min(len(prompts[i]) - h for i, _ in group) - 1 if _accepts_logits_to_keep(model) else 0
    keep = {"logits_to_keep": torch.arange(start, width, device=device)} if start > 0 else {}
    mask = _packed_mask(seg_t, _model_dtype(model))  # (B, 1, T, T)
    if prefix is not None:  # every token also sees the shared prefix's h cached keys
        mask = torch.cat([mask.new_zeros(*mask.shape[:3], h), mask], dim=-1)
        rows = torch.zeros(len(group), dtype=torch.long, device=device)
        keep["past_key_values"] = _select_rows(prefix, rows, getattr(model, "config", None))
    logits = model(input_ids=ids_t, attention_mask=mask, position_ids=pos_t,
                   use_cache=prefix is not None, **keep).logits  # (B, T - start, V)
    b_t, t_t = torch.tensor(b_idx, device=device), torch.tensor(t_idx, device=device) - start
    rest = _row_scores(logits[b_t, t_t], torch.tensor(targets, device=device), token_stats)
    return dict(zip(keys, _assemble(None, rest, splits, token_stats), strict=True))


def _packed_mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: causal, and a continuation (segment k > 0) sees the prompt
    (segment 0) and itself only. Padding (segment -1) sees itself, so no row is all -inf."""
    t = torch.arange(seg.shape[1], device=seg.device)
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = (t[:, None] >= t[None, :]) & ((k == 0) | (k == q)) & (q >= 0)
    allowed |= torch.eye(seg.shape[1], dtype=torch.bool, device=seg.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _model_dtype(model) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def _honours_packed_masks(model, pad_id: int) -> bool:
    """Whether `model` scores packed rows exactly as separate sequences, checked once on a probe.

    Wrappers that say they continue prompt caches (`shares_prompt_cache`) take the cached path;
    attention kernels that ignore custom 4D masks (flash attention, recurrent layers) fail the probe.
    The probe also tries rows after a cached shared prefix, which `_score_packed` uses only if it passes.
    """
    if hasattr(model, "shares_prompt_cache") or not hasattr(model, "config"):
        return False
    known = _PACKING_SUPPORT.get(model)
    if known is not None:
        return known[0]
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    prompts = [[1, 2, 3, 4], [1, 2, 5, 6]]
    conts = [[[7, 1, 2], [3, 4], [5]], [[6, 5, 4, 3]]]
    group = [(0, [0, 1, 2]), (1, [0])]
    whole = _score_concatenated(model, prompts, conts, [0, 1], 8, False, pad_id)
    tol = 1e-3 if _model_dtype(model) == torch.float32 else 5e-2

    def same(run) -> bool:
        try:
            packed = run()
        except Exception:  # noqa: BLE001 (any failure means: do not use this path)
            return False
        return all(np.allclose(packed[key].logprobs, whole[key].logprobs, atol=tol) for key in whole)

    ok = same(lambda: _forward_packed(model, prompts, conts, group, False, pad_id))
    with_prefix = ok and same(lambda: _forward_packed(model, prompts, conts, group, False, pad_id, 2,
                                                      _encode_prefix(model, [1, 2])))
    _PACKING_SUPPORT[model] = (ok, with_prefix)
    return ok


