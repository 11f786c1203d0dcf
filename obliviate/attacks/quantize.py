"""quantize: serve the model quantised and ask again (after Zhang et al. 2024).

"Catastrophic Failure of LLM Unlearning via Quantization" (Zhang et al. 2024) observes that
unlearning by small weight updates can fall inside the rounding step of a quantiser, so the
quantised unlearned model answers like the quantised target. The trained forget questions are
asked of each model after

- `int8`: torch dynamic quantisation (`torch.ao.quantization.quantize_dynamic`): int8 weights,
  per-tensor scale, activations quantised on the fly; runs on the CPU;
- `nf4`: bitsandbytes 4-bit NormalFloat (QLoRA's `Linear4bit`, blocks of 64); only with a CUDA
  GPU and bitsandbytes installed, otherwise skipped with the reason;
- `rtn4`: 4-bit round-to-nearest simulated in float on any device: every weight matrix is split
  into groups of `group_size` inputs per output row, scaled by the group's absolute maximum to
  the integers -8..7, rounded and scaled back. It is the rounding a 4-bit kernel applies, without
  the kernel, so the attack still has a 4-bit view on a machine without a GPU.

Linear layers inside the transformer blocks are quantised; the output head (often tied to the
embeddings) and the embeddings stay in full precision, as transformers does for bitsandbytes.
For an inference-time run the frozen base model under the intervention is quantised; LoRA adapters
that an intervention keeps unmerged (S3T's shards) stay in full precision around the quantised base
layers, as QLoRA serves them. The unquantised model is the `none` row, a reference that is not part
of the headline.
"""

from __future__ import annotations

import copy
import warnings

import torch
from pydantic import Field
from torch import nn

from obliviate.attacks.base import AttackConfig, AttackSets, register
from obliviate.attacks.facts import alternatives, fact_key, question_prompt
from obliviate.attacks.measure import AttackPrompt, PromptAttack, measure
from obliviate.errors import ConfigError

SCHEMES = ("int8", "nf4", "rtn4")
KEEP = ("lm_head",)  # modules left in full precision


class QuantizeConfig(AttackConfig):
    schemes: str = Field("int8,nf4,rtn4", description="comma-separated quantisers: int8, nf4, rtn4")
    group_size: int = Field(64, description="rtn4: input weights per rounding group", ge=1)


def _language_model(model: nn.Module) -> nn.Module:
    """The module whose weights get quantised: the frozen base under an intervention, else the model."""
    from obliviate.interventions.model import InterventionModel

    return model.base if isinstance(model, InterventionModel) else model


def _copy(model: nn.Module) -> nn.Module:
    """A copy to quantise; a PEFT model is merged first, so its adapter is quantised with the weights."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "merge_and_unload"):
        clone = clone.merge_and_unload()
    return clone.eval()


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers to quantise: not the output head, nor a LoRA adapter's own matrices."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP
            and not any(part.startswith("lora_") for part in name.split("."))]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def rtn_quantise(weight: torch.Tensor, bits: int = 4, group_size: int = 64) -> torch.Tensor:
    """Symmetric round-to-nearest per group of `group_size` inputs of each output row, in float."""
    rows, cols = weight.shape
    pad = (-cols) % group_size
    w = nn.functional.pad(weight.float(), (0, pad)).reshape(rows, -1, group_size)  # (out, groups, g)
    top = 2 ** (bits - 1) - 1  # 7 for 4 bits: integers -8..7
    scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / top
    q = torch.clamp(torch.round(w / scale), -top - 1, top)
    return (q * scale).reshape(rows, -1)[:, :cols].to(weight.dtype)


def quantise_rtn4(model: nn.Module, group_size: int) -> nn.Module:
    clone = _copy(model)
    with torch.no_grad():
        for _, linear in _linears(_language_model(clone)):
            linear.weight.copy_(rtn_quantise(linear.weight, 4, group_size))
    return clone


def quantise_int8(model: nn.Module) -> nn.Module:
    """torch dynamic int8 quantisation, on a CPU copy."""
    try:
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # removed from newer torch releases
        raise _Skip(f"this torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic") from exc
    clone = _copy(model).to("cpu").float()
    lm = _language_model(clone)
    spec = {name: default_dynamic_qconfig for name, _ in _linears(lm)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager-mode API warns that it is deprecated
        quantize_dynamic(lm, qconfig_spec=spec, dtype=torch.qint8, inplace=True)
    return clone


def quantise_nf4(model: nn.Module) -> nn.Module:
    """bitsandbytes NF4 on the GPU: each Linear becomes a Linear4bit, quantised on its way to CUDA."""
    if not torch.cuda.is_available():
        raise _Skip("no CUDA GPU: bitsandbytes 4-bit kernels need one (rtn4 simulates the rounding on any device)")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise _Skip("bitsandbytes is not installed (pip install bitsandbytes)") from exc
    clone = _copy(model)
    lm = _language_model(clone)
    for name, linear in _linears(lm):
        dtype = linear.weight.dtype if linear.weight.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=dtype, quant_type="nf4")
        q.load_state_dict({k: v.to(dtype) for k, v in linear.state_dict().items()})
        _set_module(lm, name, q.to("cuda"))  # quantisation happens on the move to the GPU
    return clone.to("cuda")


class _Skip(Exception):
    """A quantiser that cannot run here; the message says why."""


@register
class Quantize(PromptAttack):
    name = "quantize"
    summary = "int8 (CPU), bitsandbytes NF4 (GPU) and simulated 4-bit rounding of the weights"
    paper = "Zhang et al. 2024, Catastrophic Failure of LLM Unlearning via Quantization"
    Config = QuantizeConfig
    reference_variants = ("none",)

    def schemes(self) -> list[str]:
        names = [s.strip() for s in self.config.schemes.split(",") if s.strip()]
        unknown = [s for s in names if s not in SCHEMES]
        if unknown:
            raise ConfigError(f"quantize: unknown scheme(s) {unknown}; choose from {', '.join(SCHEMES)}")
        return names

    def prompts(self, model, tokenizer, sets: AttackSets) -> list[AttackPrompt]:
        return [AttackPrompt(fact_key(it), "none", question_prompt(it.question, tokenizer), it.answer,
                             alternatives(it, sets.world)) for it in sets.forget]

    def quantised(self, scheme: str, model: nn.Module) -> nn.Module:
        if scheme == "int8":
            return quantise_int8(model)
        if scheme == "nf4":
            return quantise_nf4(model)
        return quantise_rtn4(model, self.config.group_size)

    def run(self, model, tokenizer, sets: AttackSets, progress: bool = False) -> dict:
        cfg, base = self.config, self.prompts(model, tokenizer, sets)
        schemes = self.schemes()
        rows = measure(model, tokenizer, base, cfg.generate, cfg.batch_size, cfg.max_new_tokens)
        skipped = {}
        for scheme in schemes:
            try:
                qmodel = self.quantised(scheme, model)
            except _Skip as why:
                skipped[scheme] = str(why)
                continue
            prompts = [AttackPrompt(p.key, scheme, p.prompt, p.answer, p.alternatives) for p in base]
            rows += measure(qmodel, tokenizer, prompts, cfg.generate, cfg.batch_size, cfg.max_new_tokens)
            del qmodel
        return {"rows": rows, "extra": {"skipped": skipped} if skipped else {}}
