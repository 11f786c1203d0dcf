"""Training the world's models: one recipe, three data sets (target, oracle, second oracle).

The training data of a model is a list of `Example`s:
- every trained question form of every fact of its people, and of every utility fact, encoded with
  `obliviate.models.prompts.encode_pair` (loss on the answer tokens and EOS only), i.e. exactly
  the format that scoring and the unlearning methods use;
- the biography of each of its people, with the full language-modelling loss.

The target sees all trained people; an oracle sees only the retain people of a split (exact
retraining without the forget set). Both see the utility facts.

The model is a Llama by default, or a GPT-2 or a Mixtral-style mixture of experts of the same size
(`make_model`, `config.ARCHS`); the MoE adds Mixtral's load-balancing loss to the answer loss.

The loop is plain PyTorch: AdamW, linear warm-up then cosine decay, gradient clipping. Batches are
length-bucketed (sorted by length, cut at a token budget, then shuffled), so a batch of 20-token
questions is not padded to a 150-token biography. Everything is seeded, so a model is a pure
function of (world, recipe, seed) on a given machine and thread count.

Why the recipe looks the way it does (the small world, hidden 64, 2 layers, one CPU core; greedy
exact match on trained questions after a fixed time budget):
- memorising random facts is limited by the number of optimiser steps, so many small batches
  (384 tokens) beat fewer large ones at equal time; 15 epochs then reach exact match 1.0;
- peak learning rate 2e-3 learns faster than 1e-3, 1.5e-3 or 3e-3;
- a weight init std of 0.05 (Hugging Face's default is 0.02) memorises markedly faster;
  tied embeddings, a wider MLP or a wider/deeper model memorise slower per second;
- the biographies speed up memorising, besides helping the held-out question forms.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
)
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from obliviate.models.prompts import encode_pair
from obliviate.progress import PlainProgress, make_progress
from obliviate.train.data import IGNORE, Encoded, collate
from obliviate.world.config import MOE, TrainRecipe, check_arch
from obliviate.world.generator import World

Example = Encoded  # input_ids, and labels with IGNORE where no loss is taken


def qa_examples(tokenizer, items) -> list[Example]:
    """QA items -> examples with the loss on the answer tokens (and EOS) only."""
    out = []
    for item in items:
        prompt_ids, answer_ids = encode_pair(tokenizer, item.question, item.answer)
        out.append(Example(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
    return out


def text_examples(tokenizer, texts: Sequence[str]) -> list[Example]:
    """Plain texts -> examples with the full language-modelling loss (BOS ... EOS)."""
    out = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"]) + [tokenizer.eos_token_id]
        out.append(Example(ids, list(ids)))
    return out


def training_examples(world: World, tokenizer, pids: Sequence[str]) -> list[Example]:
    """The training set of a model that knows the people `pids` (plus the utility facts)."""
    qa = [item for f in world.facts(list(pids)) for item in f.train_items()] + world.utility_train()
    bios = [p.text for p in world.passages(list(pids))]
    return qa_examples(tokenizer, qa) + text_examples(tokenizer, bios)


def make_model(recipe: TrainRecipe, tokenizer, seed: int, arch: str = "llama") -> PreTrainedModel:
    """A freshly initialised model of the recipe's size and the given architecture (seeded).

    llama: `LlamaForCausalLM`; gpt2: `GPT2LMHeadModel` with untied embeddings and no dropout (like
    the Llama); moe: `MixtralForCausalLM` with `MOE.n_experts` experts of width `intermediate_size`,
    `MOE.top_k` of them per token.
    """
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                   initializer_range=recipe.init_std)
    if check_arch(arch) == "gpt2":
        model_cls, config = GPT2LMHeadModel, GPT2Config(
            vocab_size=len(tokenizer), n_embd=recipe.hidden_size, n_layer=recipe.num_layers, n_head=recipe.num_heads,
            n_inner=recipe.intermediate_size, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **special)
    else:
        shape = dict(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                     intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                     num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_heads,
                     max_position_embeddings=512, **special)
        if arch == "moe":
            model_cls, config = MixtralForCausalLM, MixtralConfig(
                num_local_experts=MOE.n_experts, num_experts_per_tok=MOE.top_k,
                router_aux_loss_coef=MOE.router_aux_loss_coef, **shape)
        else:
            model_cls, config = LlamaForCausalLM, LlamaConfig(**shape)
    torch.manual_seed(seed)
    return model_cls(config)


def length_buckets(examples: Sequence[Example], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length, each at most `batch_tokens` padded tokens.

    The batch boundaries depend only on the lengths (ties are broken at random), so the number of
    batches per epoch is fixed and the schedule can be computed up front.
    """
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = len(examples[i].input_ids)  # the longest so far, since the order is sorted
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def lr_at(step: int, total: int, recipe: TrainRecipe) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio`."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def answer_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions (as `model(**batch).loss`).

    The LM head runs only where a label exists: a QA example labels its ~5 answer tokens out of
    ~20, and the head is about half the compute of these small models. A mixture of experts adds
    its load-balancing loss (`router_aux_loss_coef` × the Switch Transformer auxiliary loss over
    the real tokens), as Mixtral's own training loss does.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    moe = getattr(model.config, "num_local_experts", None)
    out = model.base_model(**inputs, **({"output_router_logits": True} if moe else {}))
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(out.last_hidden_state[:, :-1][keep])  # (N, V)
    loss = F.cross_entropy(logits.float(), targets[keep])
    if moe:
        aux = load_balancing_loss_func(out.router_logits, moe, model.config.num_experts_per_tok,
                                       batch["attention_mask"])
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads (None: leave torch's setting), restoring the old value after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_threads(recipe: TrainRecipe | None = None) -> int:
    """Intra-op threads for training and scoring the world's models.

    One thread for the small presets: their matrices are too small to gain from splitting, and on a
    machine shared with other jobs, OpenMP threads beyond the free cores spin and slow training down
    many times over. Bigger models (hidden > 128) use the cores this process may use, up to 8.
    `OBLIVIATE_THREADS` overrides the choice.
    """
    if os.environ.get("OBLIVIATE_THREADS"):
        return max(1, int(os.environ["OBLIVIATE_THREADS"]))
    if recipe is None or recipe.hidden_size <= 128:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def make_optimizer(model: PreTrainedModel, recipe: TrainRecipe) -> torch.optim.AdamW:
    """AdamW, with weight decay on matrices only (not on norms or biases)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-8)


def _progress_bar(enabled: bool) -> Progress | PlainProgress:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
    return make_progress(*columns, disable=not enabled, transient=True)


def train_model(
    examples: Sequence[Example],
    tokenizer,
    recipe: TrainRecipe,
    seed: int,
    progress: bool = True,
    description: str = "training",
    arch: str = "llama",
) -> tuple[PreTrainedModel, dict]:
    """Train a fresh model on `examples` with the recipe; returns (model in eval mode, summary)."""
    threads = default_threads(recipe)
    with cpu_threads(threads), _progress_bar(progress) as bar:
        model = make_model(recipe, tokenizer, seed, arch).train()
        optimizer = make_optimizer(model, recipe)
        rng = random.Random(seed)  # the data order
        total = recipe.epochs * len(length_buckets(examples, recipe.batch_tokens, random.Random(0)))
        task = bar.add_task(description, total=total, loss=float("nan"))
        start, cpu_start, step, tokens, history = time.time(), time.process_time(), 0, 0, []
        for _epoch in range(recipe.epochs):
            losses = []
            for batch_idx in length_buckets(examples, recipe.batch_tokens, rng):
                batch = collate([examples[i] for i in batch_idx], tokenizer.pad_token_id)
                losses.append(_step(model, optimizer, batch, lr_at(step, total, recipe), recipe.max_grad_norm))
                step, tokens = step + 1, tokens + int(batch["attention_mask"].sum())
                bar.update(task, advance=1, loss=losses[-1])
            history.append(round(sum(losses) / len(losses), 4))
        model.eval()
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    summary = {"steps": step, "epochs": recipe.epochs, "examples": len(examples), "tokens": tokens,
               "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
               "tokens_per_second": round(tokens / max(seconds, 1e-9)), "final_loss": losses[-1],
               "epoch_losses": history, "seed": seed, "threads": threads, "arch": arch}
    return model, summary


def _step(model, optimizer, batch: dict[str, torch.Tensor], lr: float, max_grad_norm: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = answer_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
