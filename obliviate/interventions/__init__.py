"""Interventions: the artifacts of inference-time methods, and the wrapper that runs them.

- `base`: `Intervention` (state + run rule + save), `InterventionModel` (the wrapped frozen model).
- `prefix`: what prefix interventions share (the cached prefix, the gate); `prefix_kinds`: `SoftPrompt`
  (SPUL), `InContextExamples` (ICUL), `InContextPrefix` (prompt baseline), each optionally gated by the
  prompt classifier.
- `corruption`: `EmbeddingCorruption` (ECO). `restricted`: `RestrictedDecoding` (GUARD).
- `logit_diff`: `LogitDifference` (ULD).
- `agents`: `AgentPipeline` (ALU), whose wrapper's `generate` runs the agents.
- `sharded`: `ShardedEnsemble` (S3T: LoRA stacks per shard, aggregated at the output).
- `classifier`: the prompt classifier of ECO, GUARD and the gated prefixes, its set-up (`fit_detector`)
  and held-out report; `regions`: where a prompt ends and how its question is read back.

`load_intervention(dir, model, tokenizer)` restores a saved intervention by its `kind`. The
methods that build interventions derive from `obliviate.methods.inference.InterventionMethod`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from obliviate.errors import ObliviateError
from obliviate.interventions.base import Intervention, read_state
from obliviate.interventions.model import InterventionModel

# kind -> "module:Class", imported on use so loading one kind never imports the others.
KINDS = {
    "soft_prompt": "obliviate.interventions.prefix_kinds:SoftPrompt",
    "in_context": "obliviate.interventions.prefix_kinds:InContextPrefix",
    "in_context_examples": "obliviate.interventions.prefix_kinds:InContextExamples",
    "embedding_corruption": "obliviate.interventions.corruption:EmbeddingCorruption",
    "restricted_decoding": "obliviate.interventions.restricted:RestrictedDecoding",
    "logit_difference": "obliviate.interventions.logit_diff:LogitDifference",
    "neuron_shift": "obliviate.interventions.neuron_shift:NeuronShift",
    "key_space_abstention": "obliviate.interventions.key_space:KeySpaceAbstention",
    "agents": "obliviate.interventions.agents:AgentPipeline",
    "sharded_ensemble": "obliviate.interventions.sharded:ShardedEnsemble",
}


def intervention_class(kind: str) -> type[Intervention]:
    if kind not in KINDS:
        raise ObliviateError(f"unknown intervention kind '{kind}' (known: {', '.join(sorted(KINDS))})")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def load_intervention(path: str | Path, model, tokenizer=None) -> Intervention:
    """The intervention saved in `path`, rebuilt for the frozen `model`."""
    meta, tensors = read_state(path)
    cls = intervention_class(meta.get("kind", ""))
    return cls.from_state(meta.get("config", {}), tensors, model, tokenizer)


__all__ = ["KINDS", "Intervention", "InterventionModel", "intervention_class", "load_intervention"]
