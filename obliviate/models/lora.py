"""LoRA through peft: `--lora r=8,alpha=16,targets=all-linear[,dropout=0.0]`.

With LoRA on, only the adapter trains, and π_ref for reference-based methods is the same model with
the adapter disabled, so no second copy of the weights is held. A run saves the adapter alone
(`adapter/`) unless `--merge` asks for merged full weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.errors import ConfigError


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    targets: str = "all-linear"  # "all-linear" or module names joined by "+", e.g. q_proj+v_proj
    dropout: float = 0.0

    def target_modules(self) -> str | list[str]:
        return "all-linear" if self.targets == "all-linear" else self.targets.split("+")


def parse_lora(spec: str) -> LoraSpec:
    """`"r=8,alpha=16,targets=q_proj+v_proj"` -> LoraSpec; bad keys or values are one-line errors."""
    fields = {"r": int, "alpha": int, "targets": str, "dropout": float}
    values: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"--lora {spec!r}: expected r=…,alpha=…,targets=…,dropout=… (got {part!r})")
        try:
            values[key] = fields[key](value)
        except ValueError:
            raise ConfigError(f"--lora: field '{key}' must be {fields[key].__name__} (got {value!r})") from None
    return LoraSpec(**values)


def apply_lora(model, spec: LoraSpec):
    """Wrap `model` in a peft LoRA model; a target missing from the model is a ConfigError."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules(), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--lora targets={spec.targets}: {first}") from None


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def save_adapter(model, tokenizer, out_dir, base_model: str) -> None:
    """Save the LoRA adapter and tokenizer to `out_dir`, its adapter_config.json naming `base_model`.

    peft records the base model's `name_or_path`, which is a local cache path for a model fetched from
    the hub; `base_model` (the hub name, when the model came from the hub) is recorded instead, so the
    adapter loads on another machine.
    """
    import json
    from pathlib import Path

    from obliviate.io import atomic_open

    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_model
        with atomic_open(config_path) as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
