"""The intrinsic suite: is the forgotten knowledge still in the parameters and the representations?

From *Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces* (Hong et al. 2024,
ConceptVectors; code `yihuaihong/ConceptVectors`) and *Are We Truly Forgetting?* (representation
similarity before and after unlearning). Behavioural metrics ask what a model says; these ask what
it still holds. Every number compares a model M (an unlearned run, or the oracle) with the reference
R, the model unlearning started from (the world's target):

- **Parametric traces.** An MLP's down-projection W (d × m) writes its value vectors, the columns
  v_j, into the residual stream; projected through the unembedding E (V × d), E·v_j says which tokens
  v_j promotes (Geva et al. 2022). A concept's trace is the `n_vectors` value vectors of R, over all
  layers, that promote the concept's tokens most:
      s_c(v) = mean over t ∈ T_c of (E v)_t standardised over the vocabulary ((x − mean) / std),
  where T_c is the concept's tokens: the tokens of its name and of its answers, less the
  `common_tokens` most frequent tokens of the retain texts (words every subject's facts share). A
  concept is a forget subject (a person of the world, an author of TOFU); retain subjects give the
  control traces.
- **trace_cosine** = mean over traced vectors of cos(v_j^M, v_j^R): 1 when unlearning left the
  trace untouched; and **trace_score** = mean s_c(v_j^M) / mean s_c(v_j^R): how strongly M's same
  vectors still promote the concept's tokens (1: as strongly as before; ConceptVectors' finding is
  that fine-tuning methods leave this near 1).
- **Representation similarity.** Linear CKA (Kornblith et al. 2019) between M's and R's hidden
  states at the last prompt token of the forget questions, per layer output (1..L; the suite's
  number is their mean):
      CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F),  X, Y (n × d) centred over the n questions;
  and the same on as many retain questions, the control. CKA is 1 for R itself; a model that never
  learned the forget facts represents the forget questions differently (lower CKA on forget than
  on retain), as the oracle does.

Where a number does not apply, it is None with a note: the traces of an inference-time method's
model are the frozen model's own (trace_cosine 1 by construction, said so); a model that returns no
hidden states has no CKA; a model whose vocabulary or depth differs from R's has no traces, and
neither has a mixture of experts (no single down-projection per layer).

Differs from the reference: ConceptVectors picks its concept vectors by hand from LLaMA-2 and OLMo
after an automatic vocabulary-projection filter, and validates them by ablation; here the selection
is the automatic step alone (top `n_vectors` by s_c), since the world's concepts are invented and
have no curated vectors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from obliviate.data.schema import QAItem, subject_name
from obliviate.errors import ConfigError
from obliviate.models.generation import hidden_states
from obliviate.models.layers import decoder_layers, down_projection, down_projection_weight
from obliviate.models.prompts import encode_prompts, format_of


@dataclass
class IntrinsicConfig:
    n_vectors: int = 10  # value vectors per concept's trace
    common_tokens: int = 100  # the retain texts' most frequent tokens, left out of every concept
    n_retain: int | None = None  # retain questions for the CKA control (default: as many as forget questions)
    batch_size: int = 32


@dataclass
class Trace:
    """One concept's trace in R: its value vectors, where they are, and their scores s_c under R."""

    concept: str
    tokens: list[int]
    where: list[tuple[int, int]]  # (layer, column) of each traced vector
    vectors: torch.Tensor  # (n, d) R's traced vectors
    scores: torch.Tensor  # (n,) s_c of each under R


@dataclass
class IntrinsicResult:
    aggregates: dict[str, float | None]
    per_layer: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- concepts and their tokens ----------------------------------------------------------------------

def concepts(items: Sequence[QAItem]) -> dict[str, list[QAItem]]:
    """Subject (as written) -> its items; items without a subject are left out."""
    out: dict[str, list[QAItem]] = {}
    for item in items:
        name = subject_name(item) if isinstance(item, QAItem) else None
        if name:
            out.setdefault(name, []).append(item)
    return out


def common_tokens(tokenizer, items: Sequence[QAItem], k: int) -> set[int]:
    """The `k` most frequent token ids of the items' questions and answers."""
    counts: Counter[int] = Counter()
    for ids in encode_prompts(tokenizer, [f"{it.question} {it.answer}" for it in items if isinstance(it, QAItem)]):
        counts.update(ids)
    return {t for t, _ in counts.most_common(k)}


def concept_tokens(tokenizer, name: str, items: Sequence[QAItem], drop: set[int]) -> list[int]:
    """The token ids of a concept's name and answers (each after a space, as they follow text), less `drop`."""
    texts = [f" {name}", *(f" {it.answer}" for it in items)]
    ids = {t for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in row}
    return sorted(ids - drop - set(tokenizer.all_special_ids))


# -- parametric traces ------------------------------------------------------------------------------

def unembedding(model: nn.Module) -> torch.Tensor:
    """E (V × d), the output embedding."""
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output embedding to project value vectors with")
    return head.weight.detach().float()


def value_vectors(model: nn.Module) -> list[torch.Tensor]:
    """Per decoder layer, its down-projection's value vectors as the columns of a (d × m) matrix."""
    return [down_projection_weight(down_projection(model, i)).detach().float()
            for i in range(len(decoder_layers(model)))]


def standardised_projection(emb: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(E v_j − mean) / std over the vocabulary, for every column v_j: (V × m)."""
    logits = emb @ vectors  # (V, m)
    return (logits - logits.mean(0)) / logits.std(0).clamp(min=1e-12)


def locate_traces(model: nn.Module, token_sets: Mapping[str, list[int]], n_vectors: int) -> list[Trace]:
    """Each concept's `n_vectors` value vectors (over all layers) with the highest s_c."""
    emb, layers = unembedding(model), value_vectors(model)
    zs = [standardised_projection(emb, w) for w in layers]  # per layer (V, m)
    where = [(layer, col) for layer, w in enumerate(layers) for col in range(w.shape[1])]
    out = []
    for concept, toks in token_sets.items():
        if not toks:
            continue
        flat = torch.cat([z[toks].mean(0) for z in zs])  # (L·m,) s_c of every value vector
        top = torch.topk(flat, min(n_vectors, len(flat))).indices.tolist()
        picked = [where[i] for i in top]
        vectors = torch.stack([layers[layer][:, col] for layer, col in picked])  # (n, d)
        out.append(Trace(concept, toks, picked, vectors, flat[top]))
    return out


def concept_scores(emb: torch.Tensor, vectors: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """s_c of each row of `vectors` (n × d) for the concept's `tokens`: (n,)."""
    z = vectors @ emb.T  # (n, V)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True).clamp(min=1e-12)
    return z[:, tokens].mean(1)


def trace_measures(model: nn.Module, traces: Sequence[Trace]) -> tuple[float, float]:
    """(trace_cosine, trace_score) of `model` over `traces` (module docstring): the mean over traced
    vectors of cos(v^M, v^R), and the mean s_c of M's same vectors over their mean s_c under R."""
    emb, layers = unembedding(model), value_vectors(model)
    cosines, ratios = [], []
    for trace in traces:
        now = torch.stack([layers[layer][:, col] for layer, col in trace.where])  # (n, d)
        cosines.append(float(torch.nn.functional.cosine_similarity(now, trace.vectors, dim=1).mean()))
        ratios.append(float(concept_scores(emb, now, trace.tokens).mean() / trace.scores.mean()))
    return float(np.mean(cosines)), float(np.mean(ratios))


# -- representation similarity ----------------------------------------------------------------------

def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (n × d₁), (n × d₂) representations of the same n inputs."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denom <= 1e-12:  # an input-independent representation (every question ends in the same token)
        return float("nan")
    return float(np.linalg.norm(y.T @ x) ** 2 / denom)


def question_states(model, tokenizer, items: Sequence[QAItem], batch_size: int) -> list[np.ndarray]:
    """Hidden states at the last prompt token of each question, per layer (0 = embeddings)."""
    fmt = format_of(tokenizer)
    ids = encode_prompts(tokenizer, [fmt.render(it.question, tokenizer) for it in items], fmt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return hidden_states(model, ids, batch_size=batch_size, pad_id=pad)


def cka_per_layer(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    return [linear_cka(x, y) for x, y in zip(a, b, strict=True)]


# -- the suite ----------------------------------------------------------------------------------------

def parameters_of(model: nn.Module) -> nn.Module:
    """The model whose weights hold the traces: an intervention's frozen base model, a PEFT model merged."""
    from obliviate.interventions.model import InterventionModel
    from obliviate.models.lora import is_peft_model

    if isinstance(model, InterventionModel):
        return model.base
    if is_peft_model(model):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def control_items(retain: Sequence[QAItem], n_concepts: int, n_items: int) -> tuple[dict[str, list[QAItem]],
                                                                                    list[QAItem]]:
    """(the first `n_concepts` retain subjects and their items, `n_items` retain questions spread over the set)."""
    by_subject = concepts(retain)
    chosen = {name: by_subject[name] for name in sorted(by_subject)[:n_concepts]}
    step = max(1, len(retain) // max(n_items, 1))
    return chosen, list(retain)[::step][:n_items]


class Intrinsic:
    """The reference model R's traces and hidden states, computed once, against which models are measured."""

    def __init__(self, reference: nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem],
                 config: IntrinsicConfig | None = None) -> None:
        cfg = self.config = config or IntrinsicConfig()
        self.tokenizer = tokenizer
        self.forget = [it for it in forget if isinstance(it, QAItem)]
        forget_concepts = concepts(self.forget)
        retain_concepts, self.retain = control_items(retain, len(forget_concepts), cfg.n_retain or len(self.forget))
        drop = common_tokens(tokenizer, retain, cfg.common_tokens)
        tokens = lambda group: {c: concept_tokens(tokenizer, c, its, drop) for c, its in group.items()}  # noqa: E731
        ref = parameters_of(reference)
        self.trace_note: str | None = None
        try:
            self.traces = {"forget": locate_traces(ref, tokens(forget_concepts), cfg.n_vectors),
                           "retain": locate_traces(ref, tokens(retain_concepts), cfg.n_vectors)}
        except ConfigError as exc:  # no dense down-projection (a mixture of experts) or no output embedding
            self.traces, self.trace_note = {"forget": [], "retain": []}, f"traces: not applicable ({exc})"
        self.states = {"forget": question_states(reference, tokenizer, self.forget, cfg.batch_size),
                       "retain": question_states(reference, tokenizer, self.retain, cfg.batch_size)}
        self.shape = (unembedding(ref).shape, len(decoder_layers(ref))) if self.trace_note is None else None

    def measure(self, model: nn.Module) -> IntrinsicResult:
        """trace_cosine, trace_score and CKA of `model` against the reference, on forget and retain."""
        from obliviate.interventions.model import InterventionModel

        aggregates: dict[str, float | None] = {}
        per_layer: dict[str, list[float]] = {}
        notes: list[str] = []
        params = parameters_of(model)
        same_shape = self.trace_note is None and \
            (unembedding(params).shape, len(decoder_layers(params))) == self.shape
        for group, traces in self.traces.items():
            cos, score = trace_measures(params, traces) if same_shape and traces else (None, None)
            aggregates[f"trace_cosine/{group}"], aggregates[f"trace_score/{group}"] = cos, score
        if self.trace_note is not None:
            notes.append(self.trace_note)
        elif not same_shape:
            notes.append("traces: the model's vocabulary or depth differs from the reference's; not comparable")
        elif isinstance(model, InterventionModel):
            notes.append("traces: an inference-time method leaves the weights frozen, so its traces are the "
                         "reference's (trace_cosine 1 by construction); the CKA rows show what it changes")
        for group, ref_states in self.states.items():
            items = self.forget if group == "forget" else self.retain
            try:
                states = question_states(model, self.tokenizer, items, self.config.batch_size)
            except (TypeError, AttributeError) as exc:  # no hidden states from this model's forward
                aggregates[f"cka/{group}"] = None
                notes.append(f"cka/{group}: the model returns no hidden states ({exc})")
                continue
            if len(states) != len(ref_states):
                aggregates[f"cka/{group}"] = None
                notes.append(f"cka/{group}: {len(states) - 1} layers against the reference's {len(ref_states) - 1}")
                continue
            per_layer[f"cka/{group}"] = cka_per_layer(states[1:], ref_states[1:])  # the layers' outputs, 1..L
            aggregates[f"cka/{group}"] = float(np.mean(per_layer[f"cka/{group}"]))
        return IntrinsicResult(aggregates, per_layer, notes)

    def summary(self) -> dict[str, Any]:
        """What was traced: per forget concept, its token count and its vectors' (layer, column)."""
        return {group: [{"concept": t.concept, "tokens": len(t.tokens), "vectors": [list(w) for w in t.where],
                         "reference_score": float(t.scores.mean())} for t in traces]
                for group, traces in self.traces.items()}
