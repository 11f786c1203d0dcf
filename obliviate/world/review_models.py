"""The review task's models: its tokenizer, and a target and oracle classifier trained and cached per task.

`build_review_models(preset, seed, kind)` trains (or reuses) the target on every training review and
the oracle on every training review but the forget set, under `$OBLIVIATE_HOME`, atomically.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from obliviate.data.schema import LabelledText
from obliviate.errors import ConfigError
from obliviate.io import build_dir_atomic, file_lock, stable_hash, write_json
from obliviate.models.prompts import DEFAULT_FORMAT
from obliviate.world.config import TrainRecipe
from obliviate.world.reviews import (
    REVIEW_QUESTION,
    REVIEWS_VERSION,
    ReviewTask,
    as_qa_items,
    check_kind,
    get_reviews,
    get_reviews_preset,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # the ids the world's Llama config expects


def train_review_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE on the task's texts, with the world tokenizer's special tokens and BOS."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


@dataclass
class ReviewModels:
    """Paths of a review task's tokenizer and models (None where not built)."""

    task: ReviewTask
    kind: str
    root: Path
    tokenizer: Path
    target: Path | None = None
    oracle: Path | None = None


def cache_key(preset: str, seed: int) -> str:
    return stable_hash({"version": REVIEWS_VERSION, "preset": get_reviews_preset(preset).to_dict(), "seed": seed,
                        "question": REVIEW_QUESTION, "format": DEFAULT_FORMAT.state_v1()})


def reviews_dir(preset: str, seed: int) -> Path:
    from obliviate.world.build import obliviate_home

    return obliviate_home() / "reviews" / f"{preset}-seed{seed}-{cache_key(preset, seed)}"


def train_classifier(reviews: Sequence[LabelledText], tokenizer, recipe: TrainRecipe, seed: int,
                     progress: bool = True, description: str = "training"):
    """A fresh model of the world's family fine-tuned on `reviews` as QA items: (model, summary)."""
    from obliviate.world.train import qa_examples, train_model

    return train_model(qa_examples(tokenizer, as_qa_items(reviews)), tokenizer, recipe, seed, progress, description)


def build_review_models(preset: str = "small", seed: int = 0, kind: str = "products",
                        which: Sequence[str] = ("target", "oracle"), progress: bool = True) -> ReviewModels:
    """Build the requested models of a review task (reusing the cache) and return their paths."""
    check_kind(kind)
    if set(which) - {"target", "oracle"}:
        raise ConfigError(f"unknown review model(s) {sorted(set(which) - {'target', 'oracle'})}; "
                          "choose from target, oracle")
    task, spec = get_reviews(preset, seed), get_reviews_preset(preset)
    root = reviews_dir(preset, seed)
    with file_lock(root / ".lock"):
        tok_dir = root / "tokenizer"
        if not tok_dir.exists():
            build_dir_atomic(tok_dir, lambda tmp: train_review_tokenizer(task.texts(), spec.recipe.vocab_size)
                        .save_pretrained(tmp))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir, trust_remote_code=False)
        split = task.split(kind)
        plan = {"target": ("target", task.train), "oracle": (f"oracle-{kind}", split.retain_train)}
        paths: dict[str, Path | None] = {}
        for role, (dirname, reviews) in plan.items():
            final = root / dirname
            if role in which and not final.exists():
                label = f"reviews {preset}/seed{seed}: {dirname}"
                model, summary = train_classifier(reviews, tokenizer, spec.recipe, spec.recipe.seed, progress, label)
                info = {"role": role, "kind": None if role == "target" else kind, "preset": preset, "seed": seed,
                        "reviews": len(reviews), "version": REVIEWS_VERSION,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "training": summary}
                build_dir_atomic(final, lambda tmp, model=model, info=info: _save(tmp, model, tokenizer, info))
            paths[role] = final if final.exists() else None
    return ReviewModels(task, kind, root, tok_dir, **paths)


def _save(out: Path, model, tokenizer, info: dict) -> None:
    from obliviate.world.build import quiet_hf_progress

    with quiet_hf_progress():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(out / "obliviate.json", info)
