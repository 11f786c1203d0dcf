"""Batched greedy generation and hidden-state read-out.

`generate_greedy` gives, for each prompt, the same text as an unbatched greedy loop. That text is
the decoded continuation only, cut at the first stop string and stripped. For speed, prompts are
sorted by length into left-padded batches, decoding reuses the KV cache, and a batch stops early
once every row has produced a stop string. Early stopping cannot change the result, because text
after the first stop string is cut anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from obliviate.models.prompts import PromptFormat, encode_prompt, encode_prompts, format_of
from obliviate.models.scoring import eval_mode, model_device, pad_ids


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


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[list[int]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stop_at: Sequence[str] = ("\n",),
    stop_ids: Sequence[int] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (texts, or token ids as given), in input order.

    A row stops at EOS (or any of `stop_ids`), or once its text holds a stop string.
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    eos = list(stop_ids) if stop_ids else tokenizer.eos_token_id
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    stops = [s for s in stop_at if s]
    pad_id = _pad_id(tokenizer)
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
) -> list[str]:
    """Greedy answers to `questions`, each rendered as a prompt by `fmt` (default: the tokenizer's format).

    The budget and the stops are the format's unless given: plain stops at a newline, chat at the
    template's end-of-turn token; both at EOS.
    """
    fmt = fmt or format_of(tokenizer)
    prompts = encode_prompts(tokenizer, [fmt.render(q, tokenizer) for q in questions], fmt)
    return generate_greedy(model, tokenizer, prompts, max_new_tokens or fmt.max_new_tokens, batch_size,
                           fmt.stop_strings() if stop_at is None else stop_at, fmt.stop_token_ids(tokenizer))


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
