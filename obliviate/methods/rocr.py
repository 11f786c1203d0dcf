"""Rank-one Concept Redirection (ROCR): a training-free edit that redirects the forget subject.

Ye, Zhang & Wu 2025, *LLM Unlearning Should Be Form-Independent* (code: `Acruxos/ORT`,
`LLaMA-Factory/src/llmtuner/train/rocr/`).

Whatever form a question takes (QA, fill-in-the-blank, multiple choice), the subject it names
activates the same concept inside the model; ROCR edits that invariant instead of the answers. As
in ROME, an MLP is read as a key-value memory: at layer ℓ the *key* k = σ(W_gate h) ⊙ W_up h is the
input of the down-projection W_ℓ (d × m) at the subject's last token, and the layer's output h_L
there is the *value* the rest of the model reads the subject from. The edit writes, into W_ℓ, the
value of another concept c under the subject's key, so the model then perceives the subject as c:

    k_s  = mean over the prompts naming s of the key at the last token of s          (m,)
    z_s  = mean over the same prompts with c in place of s of h_L at the last token of c   (d,)
    K = [k_s]_s (m × S),   R = [z_s − h_L(s)]_s (d × S)
    ΔW_ℓᵀ = (P K Kᵀ + λ I)⁻¹ P K (R / (n − i))ᵀ    for the i-th of the n edited layers, in order

P projects onto the null space of the retain keys' second moment C₀ = E[k kᵀ] (AlphaEdit's
projection: the eigenvectors of C₀ with eigenvalues below the threshold), so keys the retain data
produces are (nearly) untouched. Keys and residuals are recomputed after each layer's edit, and the
residual is spread over the layers still to edit, as in the reference. Each subject adds one outer
product, so the change of every edited matrix has rank ≤ S: rank one for one subject, the unit the
reference edits (one unlearning target per run).

Paper defaults (Llama-3-8B-Instruct, 32 layers, `rocr_hparams/llama3-8b-instruct.json`): mode
"unrelated" (the target value is another concept's, "Donald Trump", not optimised), layers 4-6
(`model.layers.{}.mlp.down_proj`), the subject's last token, λ (`L2`) = 1, null-space threshold 2e-2
on the singular values of C₀ from 100,000 Wikipedia samples, prompts "{subject}." inside six chat
contexts ("Please answer the question about {}", "Tell me about {}", ...).

Differs from the reference:
- the layers default to the paper's relative depth, layers ⌊4n/32⌋..⌊6n/32⌋ of n (4-6 of 32, layer 0
  on the world's 2-layer models), because the world's models are far shallower;
- C₀ comes from the retain set's tokens, because there is no Wikipedia offline and the retain set is
  what must be kept; the threshold is relative to C₀'s largest eigenvalue (2e-2 · λ_max), because an
  absolute threshold depends on the model's activation scale (the world's keys are not Llama's);
- the prompts are the forget questions that name the subject (each question's text up to the
  answer), because those are the forms the concept is asked in; a subject that no question names is
  put in "Tell me about {subject}." in the model's prompt format;
- the target value is averaged over those prompts (the reference takes the first context's), and
  several subjects are edited in one solve rather than one run per subject;
- λ defaults to 0.01 on the world (the paper's 1 is the config's paper default): the world's keys are
  short (‖k‖² of a few units), and λ = 1 leaves most of the residual in place (on the tiny world it
  closes 17% of the gap to the concept's value, λ = 0.01 closes 94%);
- `redirect_to` defaults to a retain subject chosen with the seed (the reference's "unrelated" mode
  with a concept from the data, since "Donald Trump" means nothing to the world's models).

Results. On SmolLM2-135M-Instruct with the paper's defaults (`scripts/real_model.py --methods rocr`:
Einstein, Shakespeare and da Vinci redirected to Marie Curie) greedy answers state 48% of the forget
facts (base 100%) and 52% of their rewordings (base 81%), while the neighbours and general facts keep
every answer (recall 1.00 before and after); the answers now describe the other concept ("Albert
Einstein's most famous equation is the discovery of polonium"). On the world's 2-layer models it does
little: on the tiny world (forget10) the edit closes 94% of the gap to the concept's value at the
subject's last token, yet the forget answer probability only falls from 0.98 to 0.86 (retain 0.98 to
0.90), because layer 0's attention has already copied the name into the later tokens, where layer 1
reads it; an unconstrained vector at that position, optimised to make the answers the concept's, gets
no further. On the small world: forget ROUGE 0.63, model utility 0.73 (docs/methods.md).

Needs each forget item's subject as written in its text (`subject_name`: the world's items carry it).
LoRA and mixtures of experts are refused: the edit acts on one dense down-projection matrix. The
summary (per layer: rank and norm of the change, null-space size, residual before and after) is
written to `out_dir/edit.json`.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from obliviate.data.schema import QAItem, TextPassage, subject_name
from obliviate.errors import ConfigError
from obliviate.io import write_json
from obliviate.methods.base import Method, MethodConfig
from obliviate.models.batching import model_device, pad_ids
from obliviate.models.layers import decoder_layers, down_projection, down_projection_weight, moe_layers, num_layers
from obliviate.models.lora import is_peft_model
from obliviate.models.prompts import encode_prompts, format_of
from obliviate.train.data import collate, encode_items

PAPER_LAYERS = (4, 5, 6)  # of 32
PAPER_DEPTH = 32


class ROCRConfig(MethodConfig):
    layers: list[int] | None = Field(None, description="decoder layers whose down-projection is edited (0-based, "
                                     "consecutive); default the paper's depth, ⌊4n/32⌋..⌊6n/32⌋ (4-6 of 32)")
    redirect_to: str | None = Field(None, description="the concept the forget subjects are redirected to, as "
                                    "text (paper: 'Donald Trump'); default a retain subject drawn with the seed")
    l2: float = Field(0.01, ge=0, description="λ, the ridge term of the solve; world default (paper: 1, against "
                      "Llama-3-8B's far larger keys)")
    nullspace_threshold: float = Field(2e-2, ge=0, description="keep C₀'s eigenvectors with eigenvalue below "
                                       "this × the largest (paper: 2e-2, absolute); 0 turns the projection off")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass when collecting keys")
    max_length: int = Field(512, ge=8, description="truncate retain sequences to this many tokens")


def default_layers(n: int) -> list[int]:
    """The paper's layers 4-6 of 32 at the same relative depth in an `n`-layer model."""
    return sorted({min(n - 1, layer * n // PAPER_DEPTH) for layer in PAPER_LAYERS})


# -- locating the subject ----------------------------------------------------------------------------

def span_tokens(tokenizer, text: str, start: int, end: int, special: bool) -> list[int]:
    """Indices of the tokens of `text` that overlap characters [start, end) (a subject's tokens)."""
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    out = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not out:
        raise ConfigError(f"rocr: no token covers characters {start}..{end} of {text!r}")
    return out


def subject_prompts(tokenizer, items: Sequence[QAItem]) -> dict[str, list[str]]:
    """Subject -> the prompts (in the model's format) of the forget questions that name it."""
    fmt = format_of(tokenizer)
    out: dict[str, list[str]] = {}
    for item in items:
        name = subject_name(item)
        if not name:
            raise ConfigError(f"rocr: a forget item has no subject ({item.question[:60]!r}); it redirects the "
                              "subject a question names, so each item needs `subject` (or meta.subject_name)")
        prompts = out.setdefault(name, [])
        if name in item.question:
            text = fmt.render(item.question, tokenizer)
            if text not in prompts:
                prompts.append(text)
    for name, prompts in out.items():
        if not prompts:
            prompts.append(fmt.render(f"Tell me about {name}.", tokenizer))
    return out


@contextmanager
def _capture(model: nn.Module, layer: int):
    """Record the down-projection's input (the keys) and the decoder layer's output in one forward."""
    seen: dict[str, torch.Tensor] = {}

    def keys(_module, args):
        seen["keys"] = args[0].detach()

    def out(_module, _args, output):
        seen["out"] = (output[0] if isinstance(output, tuple) else output).detach()

    handles = [down_projection(model, layer).register_forward_pre_hook(keys),
               decoder_layers(model)[layer].register_forward_hook(out)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def states_at(model: nn.Module, tokenizer, texts: Sequence[str], spans: Sequence[tuple[int, int]], layer: int,
              batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (n, m), layer outputs (n, d)) at the last token of the span `spans[i]` of `texts[i]`."""
    fmt = format_of(tokenizer)
    special = fmt.add_special_tokens()
    ids = encode_prompts(tokenizer, list(texts), fmt)
    where = [span_tokens(tokenizer, t, a, b, special)[-1] for t, (a, b) in zip(texts, spans, strict=True)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    keys, outs = [], []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        batch, mask = pad_ids(chunk, max(map(len, chunk)), pad, left=False)
        rows, cols = torch.arange(len(chunk)), torch.tensor(where[s:s + batch_size])
        with _capture(model, layer) as seen:
            model(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False)
        keys.append(seen["keys"][rows, cols].float().cpu())
        outs.append(seen["out"][rows, cols].float().cpu())
    return torch.cat(keys), torch.cat(outs)


def _in_prompts(prompts: dict[str, list[str]], name: str, concept: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The prompts of `name` with `concept` written in its place, and the span `concept` takes in each."""
    texts, spans = [], []
    for text in prompts[name]:
        at = text.index(name)
        texts.append(text[:at] + concept + text[at + len(name):])
        spans.append((at, at + len(concept)))
    return texts, spans


def subject_states(model, tokenizer, prompts: dict[str, list[str]], layer: int, concept: str | None,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per subject, the key (S, m) and layer output (S, d) at its last token, averaged over its prompts;
    with `concept`, at the last token of `concept` written in the subject's prompts instead."""
    keys, outs = [], []
    for name in prompts:
        texts, spans = _in_prompts(prompts, name, concept if concept is not None else name)
        k, h = states_at(model, tokenizer, texts, spans, layer, batch_size)
        keys.append(k.mean(0))
        outs.append(h.mean(0))
    return torch.stack(keys), torch.stack(outs)


@torch.no_grad()
def retain_second_moment(model, tokenizer, retain: Sequence, layer: int, batch_size: int,
                         max_length: int) -> tuple[torch.Tensor, int]:
    """C₀ = mean over every retain token of k kᵀ at `layer`'s down-projection input (m, m), and the token count."""
    encoded, _ = encode_items(tokenizer, list(retain), max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    m = down_projection_weight(down_projection(model, layer)).shape[1]
    acc, n = torch.zeros(m, m, dtype=torch.float64), 0
    for s in range(0, len(encoded), batch_size):
        batch = collate(encoded[s:s + batch_size], pad)
        with _capture(model, layer) as seen:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  use_cache=False)
        k = seen["keys"][batch["attention_mask"].to(device).bool()].double().cpu()  # (tokens, m)
        acc += k.T @ k
        n += k.shape[0]
    return (acc / max(n, 1)).float(), n


def null_space_projector(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P = U₀U₀ᵀ over the eigenvectors of `cov` with eigenvalue < threshold · the largest; and dim U₀."""
    if threshold <= 0:
        return torch.eye(cov.shape[0]), cov.shape[0]
    values, vectors = torch.linalg.eigh(cov.double())
    small = values < threshold * values.max()
    u0 = vectors[:, small]
    return (u0 @ u0.T).float(), int(small.sum())


def redirect_update(keys: torch.Tensor, resid: torch.Tensor, proj: torch.Tensor, l2: float) -> torch.Tensor:
    """ΔW (d × m) = ((P K Kᵀ + λI)⁻¹ P K Rᵀ)ᵀ for keys K = `keys`ᵀ (S, m) and residuals R = `resid`ᵀ (S, d)."""
    k = keys.T.double()  # (m, S)
    p = proj.double()
    lhs = p @ k @ k.T + l2 * torch.eye(k.shape[0], dtype=torch.float64)
    return torch.linalg.solve(lhs, p @ k @ resid.double()).T.float()  # (d, m)


def pick_concept(retain: Sequence, forget_names: set[str], seed: int) -> str:
    """A retain subject (as written) not among the forget subjects, drawn with `seed`."""
    names = sorted({n for n in (subject_name(it) for it in retain if isinstance(it, QAItem)) if n} - forget_names)
    if not names:
        raise ConfigError("rocr: no retain subject to redirect to; name the concept with --set redirect_to=TEXT")
    return random.Random(f"rocr:{seed}").choice(names)


class ROCR(Method):
    paper_defaults = {"l2": 1.0, "nullspace_threshold": 2e-2}
    name = "rocr"
    family = "weight surgery"
    paper = "Ye et al. 2025, LLM Unlearning Should Be Form-Independent"
    summary = "training-free rank-one edit of an MLP down-projection: the forget subject now reads as another concept"
    Config = ROCRConfig
    uses_retain = True

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if is_peft_model(model):
            raise ConfigError("rocr edits a down-projection matrix itself; run it without --lora")
        if moe_layers(model):
            raise ConfigError("rocr edits one dense down-projection per layer; this model is a mixture of experts")
        if any(isinstance(it, TextPassage) for it in forget):
            raise ConfigError("rocr needs QA items that name their subject, not text passages")
        n = num_layers(model) or len(decoder_layers(model))
        layers = cfg.layers if cfg.layers is not None else default_layers(n)
        if not layers or any(not 0 <= layer < n for layer in layers) or \
                any(b != a + 1 for a, b in zip(layers, layers[1:], strict=False)):
            raise ConfigError(f"rocr: layers {layers} must be consecutive layers of the model's 0..{n - 1}")
        prompts = subject_prompts(tokenizer, forget)
        concept = cfg.redirect_to or pick_concept(retain, set(prompts), cfg.seed)
        if concept in prompts:
            raise ConfigError(f"rocr: redirect_to {concept!r} is itself a forget subject")

        was_training = model.training
        model.eval()
        z_layer = layers[-1]
        _, z = subject_states(model, tokenizer, prompts, z_layer, concept, cfg.batch_size)  # (S, d) targets
        _, h_before = subject_states(model, tokenizer, prompts, z_layer, None, cfg.batch_size)
        rows = []
        for i, layer in enumerate(layers):
            keys, _ = subject_states(model, tokenizer, prompts, layer, None, cfg.batch_size)  # (S, m)
            _, h = subject_states(model, tokenizer, prompts, z_layer, None, cfg.batch_size)
            cov, n_tokens = retain_second_moment(model, tokenizer, retain, layer, cfg.batch_size, cfg.max_length)
            proj, null_dim = null_space_projector(cov, cfg.nullspace_threshold)
            delta = redirect_update(keys, (z - h) / (len(layers) - i), proj, cfg.l2)  # (d, m)
            module = down_projection(model, layer)
            with torch.no_grad():
                weight = module.weight
                step = delta if isinstance(module, nn.Linear) else delta.T
                weight.add_(step.to(weight.dtype).to(weight.device))
            rows.append({"layer": layer, "rank": int(torch.linalg.matrix_rank(delta)),
                         "delta_norm": float(delta.norm()),
                         "weight_norm": float(down_projection_weight(module).detach().norm()),
                         "null_space_dim": null_dim, "key_dim": int(delta.shape[1]), "retain_tokens": n_tokens,
                         "projected_key_share": float((proj @ keys.T).norm() / keys.norm().clamp(min=1e-12))})
        _, h_after = subject_states(model, tokenizer, prompts, z_layer, None, cfg.batch_size)
        model.train(was_training)
        empty = [r["layer"] for r in rows if r["null_space_dim"] == 0]
        note = None
        if empty:
            note = (f"the retain keys leave no null space at layer(s) {empty} (threshold {cfg.nullspace_threshold} "
                    "× the largest eigenvalue): nothing was edited there; raise nullspace_threshold or set it to 0")
            warnings.warn(f"rocr: {note}", stacklevel=2)
        gap = lambda h: float((z - h).norm(dim=1).mean())  # noqa: E731
        final = {"subjects": len(prompts), "redirect_to": concept, "layers": layers,
                 "residual_before": gap(h_before), "residual_after": gap(h_after), "note": note}
        write_json(out_dir / "edit.json", {"method": self.name, "l2": cfg.l2,
                                           "nullspace_threshold": cfg.nullspace_threshold, **final,
                                           "subject_names": list(prompts), "per_layer": rows})
        return {"steps": 0, "resumed_from": 0, "final": final, "train_seconds": time.perf_counter() - t0}
