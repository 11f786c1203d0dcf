"""Soft Prompting for Unlearning (SPUL).

Bhaila, Van & Wu 2024, *Soft Prompting for Unlearning in Large Language Models* (code
`karuna-bhaila/llm_unlearning`). The model stays frozen; only a soft prompt of K = 30 virtual
tokens, placed before every input (after its BOS, `interventions/prefix.py`), is trained
(P-tuning: the K vectors come from an MLP encoder with hidden size 128, Liu et al. 2021; or plain
prompt tuning without the encoder):

    L = L_f + α·L_r + β·L_KL,   α = β = 0.5   (`retain_weight`, `kl_weight`; `alpha` is the gate's)

- labelled texts (the paper's setting, format `### Text: {x}\\n\\n### Question: What is the
  sentiment of the given text?\\n\\n### Sentiment: {y}`): L_f is the cross-entropy of the forget
  texts towards a generic label drawn uniformly from {neutral, unknown} (once per item); L_r the
  cross-entropy of the retain texts' true labels;
- QA items: L_f is the cross-entropy of a refusal (`refusal_for(i, seed)`) to each forget
  question, L_r that of the retain answers;
- L_KL = KL(p_orig ‖ p_prompted) of the next-token distributions at the positions that predict
  the retain targets, p_orig being the frozen model without the prompt.

As in the paper's code, forget and retain examples form one shuffled pool; each term sums over its
target tokens and divides by the number of forget (resp. retain) examples in the batch. The paper
caches p_orig once; here it is recomputed per batch under `no_grad` (the model is frozen, so the
values are the same) to avoid holding |retain targets| × V floats.

**Gate.** With `gate=classifier` (the default) the soft prompt is put only before prompts that the
forget-prompt classifier of ECO and GUARD flags (`interventions/classifier.py`); other prompts run
the bare model. The classifier is fitted first, and the prompt trains on what it will precede: the
forget items and the retain items the classifier flags (its false positives); the retain items it
passes leave the training pool, as they never meet the prompt. The paper prepends the prompt to
every input (`gate=none`) and trains it on the whole pool, relying on L_r and L_KL to keep retain
answers. On the built-in world's models, trained only on documents that start at the BOS,
any prefix is out of distribution: ungated, the trained prompt leaves retain and utility answers near
chance and model utility at zero (docs/methods.md; learning rates up to 1e-2 did not change that).

Defaults follow the paper's code: AdamW lr 1e-4 with weight decay 0.001, cosine schedule with 10%
warm-up, 10 epochs, batch 32, max_grad_norm 0.3. The run saves the soft prompt as a (K, H) tensor
(the encoder's output); the paper fine-tunes the task model with QLoRA first, which is outside
this method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from obliviate.data.refusals import refusal_for
from obliviate.data.schema import LabelledText
from obliviate.errors import ConfigError
from obliviate.interventions.base import frozen
from obliviate.interventions.detector import fit_detector
from obliviate.interventions.prefix import tokenizer_bos
from obliviate.interventions.prefix_kinds import SoftPrompt
from obliviate.interventions.training import train_parameters
from obliviate.methods.eco import GateConfig
from obliviate.methods.inference import LABELLED_OR_QA, InterventionMethod, item_kind
from obliviate.models.prompts import PromptFormat, encode_answer, encode_pair, encode_prompt, format_of
from obliviate.train.data import IGNORE

SENTIMENT_TEMPLATE = "### Text: {text}\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment:"


@dataclass(frozen=True)
class LabelFormat:
    """How a labelled text becomes a prompt, and its label the continuation (`label_prefix + label`)."""

    template: str = SENTIMENT_TEMPLATE
    label_prefix: str = " "

    def render(self, text: str) -> str:
        return self.template.format(text=text)

    def prompt_format(self) -> PromptFormat:
        """The same prompt as a QA `PromptFormat` whose question is the text (for reading prompts back)."""
        return PromptFormat(question_template=self.template.replace("{text}", "{question}"),
                            answer_prefix=self.label_prefix)

    def encode(self, tokenizer, text: str, label: str) -> tuple[list[int], list[int]]:
        """(prompt_ids, label_ids); no EOS after the label, as in the paper's completion-only data."""
        prompt = encode_prompt(tokenizer, self.render(text))
        return prompt, encode_answer(tokenizer, self.label_prefix + label, eos=False)


@dataclass
class Example:
    prompt: list[int]
    target: list[int]
    forget: bool


def build_examples(tokenizer, forget: Sequence, retain: Sequence, label_fmt: LabelFormat,
                   generic_labels: Sequence[str], seed: int) -> list[Example]:
    """Forget items with their unlearning targets, then retain items with their true targets."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i, item in enumerate(forget):
        if isinstance(item, LabelledText):
            generic = generic_labels[int(torch.randint(len(generic_labels), (1,), generator=rng))]
            out.append(Example(*label_fmt.encode(tokenizer, item.text, generic), forget=True))
        else:
            out.append(Example(*encode_pair(tokenizer, item.question, refusal_for(i, seed)), True))
    for item in retain:
        if isinstance(item, LabelledText):
            out.append(Example(*label_fmt.encode(tokenizer, item.text, item.label), forget=False))
        else:
            out.append(Example(*encode_pair(tokenizer, item.question, item.answer), False))
    return out


def collate_examples(examples: Sequence[Example], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, labels (IGNORE off the target) and is_forget.

    Too-long examples lose prompt tokens after the first (the BOS), so the BOS, the target and the
    prompt's end stay.
    """
    seqs, labels = [], []
    for e in examples:
        keep = max(1, max_length - len(e.target))
        prompt = e.prompt if len(e.prompt) <= keep else e.prompt[:1] + e.prompt[len(e.prompt) - keep + 1 :]
        seqs.append(prompt + e.target)
        labels.append([IGNORE] * len(prompt) + e.target)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (s, y) in enumerate(zip(seqs, labels, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        lab[b, : len(y)] = torch.tensor(y)
        mask[b, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab,
            "is_forget": torch.tensor([e.forget for e in examples])}


def spul_loss(logits: torch.Tensor, ref_logits: torch.Tensor | None, labels: torch.Tensor, is_forget: torch.Tensor,
              alpha: float, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f + α·L_r + β·L_KL on one mixed batch; logits, ref_logits (B, T, V), labels (B, T), is_forget (B,)."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    scored = targets != IGNORE  # (B, T-1): positions predicting a target token
    nll = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~scored, 0), reduction="none") * scored
    per_item = nll.sum(-1)  # (B,) summed over target tokens
    n_f, n_r = int(is_forget.sum()), int((~is_forget).sum())
    zero = logits.new_zeros(())
    l_f = per_item[is_forget].sum() / n_f if n_f else zero
    l_r = per_item[~is_forget].sum() / n_r if n_r else zero
    l_kl = zero
    if beta and n_r and ref_logits is not None:
        at = scored & ~is_forget[:, None]  # retain target positions
        logp = logits[at].log_softmax(-1)  # (N, V)
        ref = ref_logits[:, :-1][at].float().log_softmax(-1)
        l_kl = (ref.exp() * (ref - logp)).sum() / n_r
    loss = l_f + alpha * l_r + beta * l_kl
    return loss, {"forget_ce": float(l_f.detach()), "retain_ce": float(l_r.detach()), "retain_kl": float(l_kl.detach())}


class SPULConfig(GateConfig):
    num_tokens: int = Field(30, ge=1, description="K, the number of virtual tokens prepended")
    encoder: Literal["mlp", "none"] = Field(
        "mlp", description="'mlp': P-tuning (an MLP encoder produces the prompt, as in the paper); "
        "'none': plain prompt tuning, initialised from random vocabulary embeddings")
    encoder_hidden: int = Field(128, ge=1, description="hidden size of the P-tuning MLP encoder")
    retain_weight: float = Field(0.5, ge=0, description="α, the weight of the retain cross-entropy")
    kl_weight: float = Field(0.5, ge=0, description="β, the weight of the retain KL to the prompt-free model")
    generic_labels: list[str] = Field(["neutral", "unknown"], min_length=1,
                                      description="labelled texts: forget targets, one drawn per item")
    label_template: str = Field(SENTIMENT_TEMPLATE, description="labelled texts: the prompt, with {text}")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.001, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of steps of linear warm-up before cosine decay")
    epochs: int = Field(10, ge=1, description="passes over the forget + retain pool")
    max_steps: int | None = Field(None, description="stop after this many steps (overrides epochs)")
    batch_size: int = Field(32, ge=1, description="examples per step, forget and retain mixed")
    max_grad_norm: float = Field(0.3, ge=0, description="gradient clipping norm (0 disables)")
    max_length: int = Field(512, ge=8, description="truncate examples (prompt side) to this many tokens")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: never)")


class SPUL(InterventionMethod):
    paper_defaults = {"lr": 1e-4, "epochs": 10, "batch_size": 32, "num_tokens": 30, "max_grad_norm": 0.3}
    name = "spul"
    paper = "Bhaila, Van & Wu 2024, Soft Prompting for Unlearning in Large Language Models"
    summary = "train only a soft prompt: generic labels / refusals on forget, true targets + KL on retain"
    Config = SPULConfig
    uses_retain = True
    variants = {"gate": {"gate": "classifier"}}  # this project's gated form, `NAME+gate`

    def _encoder(self, model, tokenizer) -> tuple[SoftPrompt, list[torch.Tensor]]:
        cfg = self.config
        bos = tokenizer_bos(tokenizer)
        hidden = model.get_input_embeddings().weight.shape[1]
        device = next(model.parameters()).device
        torch.manual_seed(cfg.seed)
        if cfg.encoder == "mlp":
            from peft import PromptEncoder, PromptEncoderConfig

            enc = PromptEncoder(PromptEncoderConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_tokens, token_dim=hidden,
                num_transformer_submodules=1, encoder_reparameterization_type="MLP",
                encoder_hidden_size=cfg.encoder_hidden)).to(device)
            prompt = SoftPrompt(encoder=enc, num_tokens=cfg.num_tokens, bos_id=bos)
        else:
            weight = model.get_input_embeddings().weight
            rows = torch.randint(weight.shape[0], (cfg.num_tokens,))
            prompt = SoftPrompt(prompt=weight[rows.to(weight.device)].detach().float(), bos_id=bos)
        params = [p for p in prompt.parameters()]
        for p in params:
            p.requires_grad_(True)
        return prompt, params

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        kinds = {item_kind(forget, self.name, LABELLED_OR_QA), item_kind(retain, self.name, LABELLED_OR_QA)} - {None}
        if not forget:
            raise ConfigError("spul: the forget set is empty")
        if len(kinds) > 1:
            raise ConfigError("spul: forget and retain must be the same kind of item (QA or labelled text)")
        labelled = LabelledText in kinds
        detector, report, pool = None, None, list(retain)
        if cfg.gate == "classifier":
            # The prompt only ever precedes the prompts the gate flags, so it trains on those: every
            # forget item, and the retain items the classifier flags (its false positives).
            fmt = LabelFormat(cfg.label_template).prompt_format() if labelled else format_of(tokenizer)
            detector, report = fit_detector(tokenizer, forget, retain, **cfg.detector_kwargs(), fmt=fmt,
                                            method=self.name)
            pool = [item for item, flagged in zip(retain, detector.flags_items(tokenizer, retain, fmt), strict=True)
                    if flagged]
        examples = build_examples(tokenizer, forget, pool, LabelFormat(cfg.label_template), cfg.generic_labels,
                                  cfg.seed)
        prompt, params = self._encoder(model, tokenizer)
        wrapped = prompt.wrap(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device

        def step(indices: torch.Tensor):
            batch = collate_examples([examples[int(i)] for i in indices], pad_id, cfg.max_length)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            ref = None
            if cfg.kl_weight and not bool(batch["is_forget"].all()):
                with torch.no_grad():
                    ref = model(input_ids=ids, attention_mask=mask).logits
            logits = wrapped(input_ids=ids, attention_mask=mask).logits
            return spul_loss(logits, ref, batch["labels"].to(device), batch["is_forget"].to(device),
                             cfg.retain_weight, cfg.kl_weight)

        model.eval()  # frozen: no dropout in the model; only the prompt trains
        with frozen(model):
            summary = train_parameters(params, len(examples), step, cfg, out_dir, self.name, progress, resume)
        summary["examples"] = {"forget": sum(e.forget for e in examples),
                               "retain": sum(not e.forget for e in examples),
                               "truncated": sum(len(e.prompt) + len(e.target) > cfg.max_length for e in examples)}
        summary["setting"] = "labelled" if labelled else "qa"
        summary["gate"] = cfg.gate
        if report is not None:
            summary["classifier"] = report
        return prompt.bake(model, detector).to(device), summary
