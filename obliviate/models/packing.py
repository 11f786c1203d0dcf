"""Packed scoring: a prompt and all of its continuations in one row, [x | y^1 | y^2 | ...].

A custom 4D attention mask lets every continuation token see the prompt and its own earlier tokens
only, and position ids restart after the prompt for each continuation, so every token sees exactly
what it would see in its own sequence x + y^j. Whether a model honours such masks is checked once
per model (`honours_packed_masks`) on a small probe against separate full sequences.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from obliviate.models.batching import (
    _accepts_logits_to_keep,
    _assemble,
    _row_scores,
    _score_concatenated,
    model_device,
)

# ---------------------------------------------------------------------------------------------
# Packed scoring: a prompt and all its continuations in one row
# ---------------------------------------------------------------------------------------------

# Longest packed row; an item with more continuation tokens is split over several rows.
_MAX_PACKED_ROW = 1024
# Models already probed for custom 4D mask support (weights do not change the answer).
_PACKING_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    fed = lambda r: len(prompts[r[0]]) + sum(len(continuations[r[0]][j]) - 1 for j in r[1])  # noqa: E731
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
            yield _forward_packed(model, prompts, continuations, group, token_stats, pad_id)
            group, w, s = [], fed(row), whole(row)
        group.append(row)
        width, longest = w, s
    if group:
        yield _forward_packed(model, prompts, continuations, group, token_stats, pad_id)


def _forward_packed(model, prompts, continuations, group, token_stats, pad_id):
    """Scores of the continuations in `group` (rows of prompt i + continuations js), one forward."""
    device = model_device(model)
    ids, pos, seg, b_idx, t_idx, targets, keys, splits = [], [], [], [], [], [], [], []
    for b, (i, js) in enumerate(group):
        p = len(prompts[i])
        row, at = list(prompts[i]), p
        r_pos, r_seg = list(range(p)), [0] * p
        for k, j in enumerate(js):
            c = continuations[i][j]
            n = len(c) - 1  # the last token predicts nothing scored, so it is not fed
            row += c[:-1]
            r_pos += range(p, p + n)
            r_seg += [k + 1] * n
            b_idx += [b] * len(c)
            t_idx += [p - 1, *range(at, at + n)]  # y_1 from the prompt's last position
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
    start = min(len(prompts[i]) for i, _ in group) - 1 if _accepts_logits_to_keep(model) else 0
    keep = {"logits_to_keep": torch.arange(start, width, device=device)} if start > 0 else {}
    logits = model(input_ids=ids_t, attention_mask=_packed_mask(seg_t, _model_dtype(model)),
                   position_ids=pos_t, use_cache=False, **keep).logits  # (B, T - start, V)
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
    """
    if hasattr(model, "shares_prompt_cache") or not hasattr(model, "config"):
        return False
    known = _PACKING_SUPPORT.get(model)
    if known is not None:
        return known
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    prompts = [[1, 2, 3, 4], [5, 6]]
    conts = [[[7, 1, 2], [3, 4], [5]], [[6, 5, 4, 3]]]
    try:
        packed = _forward_packed(model, prompts, conts, [(0, [0, 1, 2]), (1, [0])], False, pad_id)
    except Exception:  # noqa: BLE001 (any failure means: do not pack this model)
        ok = False
    else:
        whole = _score_concatenated(model, prompts, conts, [0, 1], 8, False, pad_id)
        tol = 1e-3 if _model_dtype(model) == torch.float32 else 5e-2
        ok = all(np.allclose(packed[key].logprobs, whole[key].logprobs, atol=tol) for key in whole)
    _PACKING_SUPPORT[model] = ok
    return ok


