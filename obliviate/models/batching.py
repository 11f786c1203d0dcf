"""The plumbing of batched scoring: eval mode and devices, logits to per-token scores, padding, and
whole-sequence scoring (`score_spans`), which every strategy of `obliviate.models.scoring` falls back on.

Log-probs are computed only at real (unpadded) positions, as a float32 log-softmax over row chunks of
bounded size followed by a gather, so no (B, T, V) float32 tensor is ever built.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# Rows of logits turned into float32 at a time: bounds the temporary to ~64 MiB per buffer.
_FLOAT_BUDGET = 1 << 24

QA_FIELDS = ("answer", "paraphrased_answer", "perturbed_answers")


@dataclass
class ContinuationScores:
    """Per-token scores of one continuation (arrays of length n_tokens)."""

    logprobs: np.ndarray
    argmax_match: np.ndarray
    mu: np.ndarray | None = None
    var: np.ndarray | None = None
    argmax: np.ndarray | None = None  # the model's top token at each position (its greedy choice)

    def greedy_prefix(self) -> list[int]:
        """The tokens greedy decoding is known to produce first: the continuation up to its first token the
        model would not have chosen, then the token it would have chosen there (the whole continuation when
        every token is its choice). Teacher forcing feeds the continuation, so its top tokens are greedy
        decoding's choices for as long as the two agree."""
        if self.argmax is None:
            return []
        miss = np.flatnonzero(~self.argmax_match)
        end = int(miss[0]) + 1 if miss.size else self.n_tokens
        return [int(t) for t in self.argmax[:end]]

    @property
    def n_tokens(self) -> int:
        return int(self.logprobs.shape[0])

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per token; NaN for an empty continuation."""
        return float(-self.logprobs.mean()) if self.n_tokens else math.nan

    @property
    def sum_logprob(self) -> float:
        return float(self.logprobs.sum())


def _empty_scores(token_stats: bool) -> ContinuationScores:
    empty = np.zeros(0, dtype=np.float32)
    stats = empty.copy() if token_stats else None
    return ContinuationScores(empty, np.zeros(0, dtype=bool), stats, None if stats is None else empty.copy(),
                              np.zeros(0, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and restore the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the model's `device`, else the device of its first parameter."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    # PEFT wrappers forward **kwargs; ask the wrapped transformers model instead.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _expandable(cache: object, length: int) -> bool:
    """Whether the prompt cache can be re-batched by index for sequences of `length` tokens.

    Only plain attention layers qualify: recurrent or indexer states would need their own
    re-batching, and a sliding window that the sequence outgrows would already have dropped keys.
    """
    if not isinstance(cache, DynamicCache):
        return False
    for layer in cache.layers:
        if type(layer) is DynamicSlidingWindowLayer and length >= layer.sliding_window:
            return False
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            return False
    return True


def _select_rows(cache: DynamicCache, rows: torch.Tensor, config) -> DynamicCache:
    """A new cache holding batch entries `rows` of `cache` (repeats allowed); `cache` is untouched."""
    data = [tuple(None if t is None else t[rows] for t in kv[:2]) for kv in cache]
    return DynamicCache(data, config=config)


# ---------------------------------------------------------------------------------------------
# Logits -> per-token scores
# ---------------------------------------------------------------------------------------------


def _row_scores(logits: torch.Tensor, targets: torch.Tensor, token_stats: bool) -> list[torch.Tensor]:
    """Scores of `targets` under `logits`: (M, V), (M,) -> [logprob, match, argmax, (mu, var)], each (M,)."""
    chunk = max(1, _FLOAT_BUDGET // max(1, logits.shape[-1]))
    parts: list[list[torch.Tensor]] = []
    for s in range(0, logits.shape[0], chunk):
        x = logits[s : s + chunk].float()  # (m, V)
        y = targets[s : s + chunk, None]  # (m, 1)
        logp = x.log_softmax(-1)  # (m, V); one fused pass, cheaper than logsumexp + subtract
        top = x.max(-1).indices  # the first maximum, as argmax; half argmax's time on CPU
        out = [logp.gather(-1, y).squeeze(-1), top == y.squeeze(-1), top]
        if token_stats:
            p = logp.exp()
            mu = (p * logp).sum(-1)
            # Centred second moment: sum p (log p - mu)^2, stable where E[(log p)^2] ~ mu^2.
            var = (p * (logp - mu[:, None]).square()).sum(-1)
            out += [mu, var]
        parts.append(out)
    return [torch.cat(col).cpu() for col in zip(*parts, strict=True)]


def _assemble(first: list[torch.Tensor] | None, rest: list[torch.Tensor], splits: list[int],
              token_stats: bool) -> list[ContinuationScores]:
    """Per-sequence scores from the first-token scores (one per sequence) and the flat rest."""
    cols_rest = [c.numpy() for c in rest]
    cols_first = [c.numpy() for c in first] if first is not None else None
    offsets = np.concatenate([[0], np.cumsum(splits)])
    results = []
    for k, n in enumerate(splits):
        cols = [c[offsets[k] : offsets[k] + n] for c in cols_rest]
        if cols_first is not None:
            cols = [np.concatenate([f[k : k + 1], c]) for f, c in zip(cols_first, cols, strict=True)]
        logprobs, match, top = cols[0].astype(np.float32), cols[1].astype(bool), cols[2].astype(np.int64)
        mu, var = (cols[3].astype(np.float32), cols[4].astype(np.float32)) if token_stats else (None, None)
        results.append(ContinuationScores(logprobs, match, mu, var, top))
    return results


def pad_ids(seqs: Sequence[Sequence[int]], width: int, pad_id: int, left: bool) -> tuple[torch.Tensor, ...]:
    """(ids, mask) of shape (B, width), padded on the left or right."""
    # Padded in Python and converted once: one tensor call instead of one per row.
    rows, bits = [], []
    for s in seqs:
        pad = width - len(s)
        rows.append([pad_id] * pad + list(s) if left else list(s) + [pad_id] * pad)
        bits.append([0] * pad + [1] * len(s) if left else [1] * len(s) + [0] * pad)
    shape = (len(seqs), width)
    return torch.tensor(rows, dtype=torch.long).view(shape), torch.tensor(bits, dtype=torch.long).view(shape)



# ---------------------------------------------------------------------------------------------
# Whole-sequence scoring
# ---------------------------------------------------------------------------------------------


def _score_spans(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], token_stats: bool,
                 pad_id: int) -> list[ContinuationScores]:
    """Scores of tokens seq[start:] of each sequence, from one right-padded full forward pass."""
    device = model_device(model)
    width = max(len(s) for s in seqs)
    ids, mask = pad_ids(seqs, width, pad_id, left=False)
    ids, mask = ids.to(device), mask.to(device)
    pos = torch.arange(width, device=device).expand(len(seqs), -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits  # (B, T, V)
    # Position t predicts token t+1; keep the predicting positions start-1 .. len-2 of each row.
    t = torch.arange(width - 1, device=device)
    lens = mask.sum(-1, keepdim=True)
    st = torch.tensor(starts, device=device)[:, None]
    valid = (t >= st - 1) & (t < lens - 1)  # (B, T-1)
    rest = _row_scores(logits[:, :-1][valid], ids[:, 1:][valid], token_stats)
    splits = [max(0, len(s) - st_) for s, st_ in zip(seqs, starts, strict=True)]
    return _assemble(None, rest, splits, token_stats)


def _score_concatenated(model, prompts, continuations, chunk, batch_size, token_stats, pad_id, only=None):
    """Scores of each prompt+continuation run as one full sequence (no shared prefill).

    `only`, if given, restricts the (i, j) pairs scored."""
    pairs = sorted(
        ((i, j) for i in chunk for j, c in enumerate(continuations[i]) if len(c) and (only is None or (i, j) in only)),
        key=lambda t: len(prompts[t[0]]) + len(continuations[t[0]][t[1]]),
    )
    scores = {}
    for s in range(0, len(pairs), batch_size):
        batch = pairs[s : s + batch_size]
        seqs = [list(prompts[i]) + list(continuations[i][j]) for i, j in batch]
        starts = [len(prompts[i]) for i, _ in batch]
        scores.update(zip(batch, _score_spans(model, seqs, starts, token_stats, pad_id), strict=True))
    return scores


