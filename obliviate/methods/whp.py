"""Who's Harry Potter (WHP): fine-tune towards generic predictions.

Eldan & Russinovich 2023, *Who's Harry Potter? Approximate Unlearning in LLMs*.

1. Reinforced model: a copy of the model fine-tuned further on the forget set (plain SFT), so the
   logits that rise under reinforcement point at the forget knowledge.
2. Anchored terms: the idiosyncratic names in the forget questions are swapped for generic ones
   ("Floa Coudul" -> "John Smith"), so the base model's prediction on the swapped text is what it
   would say about a generic entity.
3. Generic targets, per answer token:

       v_generic = v_base(swapped text) − α · ReLU(v_reinforced(original text) − v_base(swapped text))

4. Fine-tune the base model on the *original* questions with labels argmax(v_generic) (hard targets,
   as in the paper), or, with `targets=soft`, towards softmax(v_generic) by cross-entropy.

α = 1 (the MUSE reimplementation). The reinforcement stage uses this config's fine-tuning fields,
with `reinforce_epochs` / `reinforce_lr` when set, and logs to `out_dir/reinforce/`.

Paper defaults: the original WHP has no public code. MUSE's reimplementation fine-tunes both the
reinforced model and the generic-label model like its other baselines (`baselines/scripts/` of
`swj0419/muse_bench`): lr 1e-5, 10 epochs, batch 4 per device on 8 GPUs (32), sequences of up to
2048 tokens, α = 1. The defaults here are the shared world ones (`FinetuneConfig`).

Anchors: a user mapping (`anchors`, from a config file: {"Floa Coudul": "John Smith"}) is used as
given. Otherwise they are found in the forget questions as runs of capitalised words, minus leading
question words ("Where", "What", "Tell", ...) and a possessive "'s"; each is mapped to a common
real name picked by a hash of the anchor (the built-in world never uses common real names, so these
are names the model knows nothing about). Only the questions are swapped: answers keep their tokens,
so the answer positions of both texts align one to one.

Memory: the reinforced copy lives only until the targets are computed (before training starts).
Soft targets keep a (answer tokens × vocabulary) matrix per forget item (float16).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.errors import ObliviateError
from obliviate.io import stable_hash
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.task_vector import ForgetFinetune
from obliviate.train.data import IGNORE, collate, encode_items

# Words that start a capitalised run in a question without being part of a name.
_LEADING = frozenset(
    """what where when who whom whose which why how tell name give list state describe is are was were
    did does do can could in on at of for from to by with as and or the a an""".split()
)
_GENERIC_FIRST = ("John", "Mary", "James", "Anna", "David", "Sarah", "Michael", "Laura", "Robert", "Emma")
_GENERIC_LAST = ("Smith", "Johnson", "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor", "Clark", "Walker")
_CAPITALISED_RUN = re.compile(r"\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*")


def find_anchors(questions: list[str]) -> list[str]:
    """Proper-name-like spans in `questions` (runs of capitalised words), longest first."""
    found: set[str] = set()
    for question in questions:
        for match in _CAPITALISED_RUN.finditer(question):
            words = match.group(0).split()
            while words and words[0].lower() in _LEADING:
                words = words[1:]
            if words and len(" ".join(words)) >= 2:
                found.add(" ".join(words))
    return sorted(found, key=lambda s: (-len(s), s))


def generic_name(anchor: str) -> str:
    """A common real name for `anchor`, fixed by a hash: one word for one word, else first + last."""
    h = int(stable_hash(anchor), 16)
    last = _GENERIC_LAST[h % len(_GENERIC_LAST)]
    if len(anchor.split()) == 1:
        return last
    return f"{_GENERIC_FIRST[(h // len(_GENERIC_LAST)) % len(_GENERIC_FIRST)]} {last}"


def swap_anchors(text: str, mapping: dict[str, str]) -> str:
    """Replace every anchor (whole words, longest first) by its generic counterpart."""
    for anchor in sorted(mapping, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(anchor)}(?!\w)", mapping[anchor], text)
    return text


def generic_logits(v_base: torch.Tensor, v_reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """v_generic = v_base − α · ReLU(v_reinforced − v_base), elementwise over (..., V)."""
    return v_base - alpha * F.relu(v_reinforced - v_base)


@torch.no_grad()
def answer_logits(model, encoded, pad_id: int) -> list[torch.Tensor]:
    """For each encoded example, the float32 logits (n_answer_tokens, V) that predict its answer tokens."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(encoded, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    mask = batch["labels"][:, 1:] != IGNORE  # (B, T-1): position t predicts answer token t+1
    return [logits[row][mask[row]].cpu() for row in range(len(encoded))]


class WHPConfig(FinetuneConfig):
    alpha: float = Field(1.0, description="α in v_base − α·ReLU(v_reinforced − v_base)", ge=0)
    targets: Literal["hard", "soft"] = Field("hard", description="train on argmax(v_generic) (paper) "
                                             "or on softmax(v_generic)")
    anchors: dict[str, str] = Field(default_factory=dict, description="anchor term -> generic term; "
                                    "empty: capitalised names found in the forget questions")
    reinforce_epochs: int | None = Field(None, description="epochs of the reinforcement fine-tune "
                                         "(default: epochs)", ge=1)
    reinforce_lr: float | None = Field(None, description="learning rate of the reinforcement fine-tune "
                                       "(default: lr)", gt=0)


class WHP(FinetuneMethod):
    name = "whp"
    paper = "Eldan & Russinovich 2023, Who's Harry Potter? Approximate Unlearning in LLMs"
    summary = "fine-tune on generic predictions from a reinforced model and anchor-swapped prompts"
    Config = WHPConfig
    _reinforced = None  # the reinforced copy, set by `unlearn` for `setup`

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        cfg = self.config
        out_dir = Path(out_dir)
        stage_dir = out_dir / "reinforce"
        stage_cfg = FinetuneConfig(**{k: getattr(cfg, k) for k in FinetuneConfig.model_fields})
        stage_cfg = stage_cfg.model_copy(update={"epochs": cfg.reinforce_epochs or cfg.epochs,
                                                 "lr": cfg.reinforce_lr or cfg.lr})
        reinforced = copy.deepcopy(model)
        # A finished stage leaves no checkpoint: it is then rerun from scratch (deterministic for a seed).
        stage_resume = resume and (stage_dir / "checkpoint").exists()
        stage = ForgetFinetune(stage_cfg).unlearn(reinforced, tokenizer, forget, [], stage_dir,
                                                  progress=progress, resume=stage_resume)
        self._reinforced = reinforced
        del reinforced
        summary = super().unlearn(model, tokenizer, forget, retain, out_dir, progress=progress, resume=resume)
        return {**summary, "reinforce": {"steps": stage["steps"], "final": stage["final"]}, "anchors": self.mapping}

    def setup(self, model, tokenizer, forget, retain) -> None:
        """Compute the generic targets of every forget item, then drop the reinforced model."""
        cfg = self.config
        reinforced = self._reinforced
        if reinforced is None:
            raise ObliviateError("whp: setup needs the reinforced model that `unlearn` trains first")
        self.mapping = dict(cfg.anchors) or {a: generic_name(a) for a in find_anchors([i.question for i in forget])}
        swapped = [dataclasses.replace(item, question=swap_anchors(item.question, self.mapping)) for item in forget]
        original_enc, _ = encode_items(tokenizer, forget)
        swapped_enc, _ = encode_items(tokenizer, swapped)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.generic: list[torch.Tensor] = []  # per item: (n,) token ids, or (n, V) float16 probabilities
        was_training = model.training
        model.eval()
        reinforced.eval()
        for start in range(0, len(forget), cfg.batch_size):
            stop = start + cfg.batch_size
            v_base = answer_logits(model, swapped_enc[start:stop], pad_id)
            v_reinf = answer_logits(reinforced, original_enc[start:stop], pad_id)
            for base, reinf in zip(v_base, v_reinf, strict=True):
                v = generic_logits(base, reinf, cfg.alpha)  # (n, V)
                self.generic.append(v.argmax(-1) if cfg.targets == "hard" else v.softmax(-1).half())
        model.train(was_training)
        self._reinforced = None

    def compute_loss(self, model, batch) -> LossOutput:
        f = batch.forget
        logits = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits[:, :-1]
        logp = logits.float().log_softmax(-1)  # (B, T-1, V)
        mask = f["labels"][:, 1:] != IGNORE  # (B, T-1)
        # Truncation only cuts the end of an answer, so row r keeps the first k_r generic targets.
        counts = mask.sum(dim=1).tolist()
        rows = [self.generic[int(i)][:k] for i, k in zip(batch.forget_index, counts, strict=True)]
        scored = logp[mask]  # (N, V), answer positions in row-major order
        targets = torch.cat(rows).to(scored.device)
        if self.config.targets == "hard":
            loss = -scored.gather(1, targets.unsqueeze(1)).mean()
        else:
            loss = -(targets.float() * scored).sum(-1).mean()
        forget_nll = -scored.gather(1, f["labels"][:, 1:][mask].unsqueeze(1)).mean()
        return LossOutput(loss, {"generic_ce": float(loss.detach()), "forget_nll": float(forget_nll.detach())})
