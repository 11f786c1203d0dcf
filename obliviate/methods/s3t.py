"""Sequence-aware Sharded Sliced Training (S3T): exact unlearning with sharded LoRA slices.

Chowdhury et al. 2024, *Towards Scalable Exact Machine Unlearning Using Parameter-Efficient
Fine-Tuning* (arXiv 2406.16257). The fine-tuning data D is split into m disjoint shards, and each
shard's data into L disjoint slices S_1..S_L. Each shard trains its own model: L parameter-efficient
layers over a frozen base model, trained in sequence, the k-th on the slices seen so far with the
earlier ones frozen:

    θ_k = argmin_θ  Σ_{x ∈ S_π(1) ∪ … ∪ S_π(k)} ℓ(x; base, θ_1..θ_{k-1} frozen, θ)      k = 1..L

for a sequence π of the slices. An item in slice S_j has influenced exactly the layers k ≥ π⁻¹(j),
so deleting it **deactivates** those layers; the layers before stay, and the shard is, bit for bit,
the model its training produced before it saw S_j. Optionally the deactivated layers are retrained
without the item, giving exactly the model trained on D without it. Each shard trains B sequences
(the paper's budget; its cyclic-rotation schedule π_b(k) = (b + k) mod L), so that a deletion
costs only the sequences whose prefix it hits; a shard answers with the sequence that has the
longest active prefix. The shards are aggregated at the output (`interventions/sharded.py`): by
default as the mixture of their sequence distributions, each shard's next-token distribution
weighted by its probability of the text so far.

The cost of a deletion is the fraction of the training it repeats: Σ over retrained layers of
(examples × epochs) / the same sum over the whole ensemble. Without retraining it is 0, and the
ensemble loses the deactivated layers' share of the training (`deactivated_fraction`).

The paper sweeps the number of shards m, slices L and budget B rather than fixing one setting, and
trains LoRA on Llama-2/RoBERTa/ViT-scale models. The defaults here are the world's: m = 4 shards,
L = 2 slices, B = 1 sequence, LoRA r 32 / α 64, lr 2e-3, 15 epochs per layer in batches of 8.
The world's 2-layer, hidden-64 models learn their facts through LoRA only with the embeddings and
the head adapted too: on a quarter of the tiny world's data, 15 epochs at lr 2e-3 leave an answer
loss of 1.56 with r 32 on the linear layers alone, 0.41 with the embeddings and head added, and
0.01 after 30 epochs (full fine-tuning: 0.27 after 15).

Differs from the reference: (1) a "layer" of the stack is a LoRA adapter over every linear layer,
the input embeddings and the output head (`targets=auto`), not the LoRA of one transformer block,
because the world's models have 2 blocks and a stack of L slices should not depend on the depth;
(2) items are grouped by subject before sharding (`group_by=subject`), so that deleting a person
touches one slice of one shard (the paper shards single training instances; `group_by=item` does
that); (3) the paper combines the shards' outputs as SISA does, each shard counted equally on every
input; a language model's shards each know different facts, and counted equally they lose them (on
the small world, model utility 0.053 with `aggregate=mean_logprob`, 0.609 with the mixture), so here
the aggregate weights each shard by how likely it finds the text so far (`aggregate=mixture`);
(4) shards and slices are assigned by a hash of the group's key, not by a random partition, so that
the assignment of every other item is the same with or without a deleted one, which is what makes
"retrain" equal to training from scratch without it. Each layer's initialisation and
data order are seeded by (seed, shard, sequence, position) alone.

Training runs in the shared loop (`obliviate.train.loop`) with plain cross-entropy on the answers
(on every token of a text passage), one loop per layer, logged to `slices/<layer>/train_log.jsonl`.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from obliviate.errors import ConfigError
from obliviate.interventions.sharded import (
    LoraSettings,
    ShardedEnsemble,
    active_adapters,
    adapter_parameters,
    add_adapter,
    base_of,
    drop_adapter,
)
from obliviate.io import read_json, stable_hash, write_json
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.methods.inference import ARTIFACT_DIR, InterventionMethod
from obliviate.train.losses import ce_loss

MANIFEST = "manifest.json"


class S3TConfig(FinetuneConfig):
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW) of each LoRA layer; world default")
    epochs: int = Field(15, ge=1, description="passes over a layer's data (its slices so far)")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch (many small steps memorise fastest)")
    shards: int = Field(4, ge=1, description="m: disjoint shards, each with its own stack of LoRA layers")
    slices: int = Field(2, ge=1, description="L: disjoint data slices per shard, one LoRA layer per slice")
    sequences: int = Field(1, ge=1, description="B: slice sequences trained per shard (cyclic rotations, at most L)")
    r: int = Field(32, ge=1, description="LoRA rank of every layer")
    alpha: int = Field(64, ge=1, description="LoRA alpha of every layer")
    targets: str = Field("auto", description="modules each LoRA layer adapts: auto (every linear layer, the input "
                         "embeddings and the output head), all-linear, or names joined by '+'")
    group_by: Literal["subject", "item"] = Field(
        "subject", description="what stays together in one slice: an item's subject (a person) or the item alone")
    aggregate: Literal["mixture", "mean_logprob"] = Field(
        "mixture", description="how the shards answer together: the mixture of their sequence distributions "
        "(each shard weighted by its probability of the text so far) or the mean of their log-probabilities")
    retrain: bool = Field(False, description="retrain the deactivated layers without the deleted items (exactly "
                          "a model that never saw them) instead of only deactivating them")


def item_id(item) -> str:
    """An item's id: `meta["id"]` when it has one, else a hash of its content."""
    given = item.meta.get("id") if isinstance(getattr(item, "meta", None), dict) else None
    return str(given) if given is not None else stable_hash(item.to_dict(), length=16)


def _hash_int(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def layer_seed(seed: int, shard: int, sequence: int, position: int) -> int:
    """The seed of one layer's initialisation and data order: a function of its place alone."""
    return _hash_int("s3t-layer", seed, shard, sequence, position) % 2**31


def layer_name(shard: int, sequence: int, position: int) -> str:
    return f"s{shard}q{sequence}k{position}"


def sequence_orders(slices: int, sequences: int) -> list[list[int]]:
    """The paper's cyclic rotations: sequence b visits slices (b, b+1, …) mod L."""
    return [[(b + k) % slices for k in range(slices)] for b in range(min(sequences, slices))]


def auto_targets(model: nn.Module) -> list[str]:
    """Leaf names of every linear layer, the input embeddings and the output head (LoRA targets)."""
    names = set()
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    for path, module in model.named_modules():
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if linear or module is inputs or module is outputs:
            names.add(path.rsplit(".", 1)[-1])
    return sorted(names)


def lora_settings(config: S3TConfig, model: nn.Module) -> LoraSettings:
    if config.targets == "auto":
        targets: tuple[str, ...] | str = tuple(auto_targets(model))
    elif config.targets == "all-linear":
        targets = "all-linear"
    else:
        targets = tuple(config.targets.split("+"))
    return LoraSettings(config.r, config.alpha, targets)


class SliceSFT(FinetuneMethod):
    """One S3T layer's training: cross-entropy on its slices' answers (or passages)."""

    name = "s3t-layer"
    paper = "-"
    accepts_text = True
    summary = "cross-entropy on a layer's data slices"

    def compute_loss(self, model, batch) -> LossOutput:
        loss = ce_loss(model, batch.forget)
        return LossOutput(loss, {"ce": float(loss.detach())})


@dataclass
class Layer:
    """One LoRA layer of a shard's sequence, and what it was trained on."""

    shard: int
    sequence: int
    position: int
    data_slices: list[int]
    examples: int = 0
    active: bool = True

    @property
    def name(self) -> str:
        return layer_name(self.shard, self.sequence, self.position)

    def units(self, epochs: int) -> int:
        return self.examples * epochs


@dataclass
class S3TEnsemble:
    """A trained S3T ensemble: the base model with its LoRA layers, the data and the assignment.

    `train` builds it, `delete` removes items from it (in place, returning it), `intervention()`
    is the model that scores and generates (`ShardedEnsemble`), `save`/`load` use a directory of
    the intervention's files plus `manifest.json` (shards, sequences, layers, item ids).
    """

    model: nn.Module  # the (peft) model holding every layer
    tokenizer: Any
    config: S3TConfig
    items: dict[str, Any]  # id -> item, the data still in the ensemble
    assignment: dict[str, tuple[int, int]]  # id -> (shard, slice)
    layers: dict[str, Layer] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    total_units: int = 0  # examples × epochs of the full training
    lora: LoraSettings | None = None
    last_deletion: dict[str, Any] | None = None  # what the last `delete` did and cost

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def assign(cls, items: Sequence, config: S3TConfig) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
        """(id -> item, id -> (shard, slice)): a hash of the item's group key picks both."""
        by_id: dict[str, Any] = {}
        for item in items:
            key = item_id(item)
            if key in by_id:
                raise ConfigError(f"s3t: two training items share the id {key!r}; give each a distinct meta['id']")
            by_id[key] = item
        assignment = {}
        for key, item in by_id.items():
            group = (getattr(item, "subject", None) or key) if config.group_by == "subject" else key
            assignment[key] = (_hash_int("s3t-shard", config.seed, group) % config.shards,
                               _hash_int("s3t-slice", config.seed, group) % config.slices)
        return by_id, assignment

    @classmethod
    def train(cls, base: nn.Module, tokenizer, items: Sequence, config: S3TConfig, log_dir: Path | None = None,
              progress: bool = False) -> S3TEnsemble:
        """Train every layer of every shard and sequence on `items`, over a copy of `base`."""
        if not items:
            raise ConfigError("s3t: no training items")
        by_id, assignment = cls.assign(items, config)
        model = copy.deepcopy(base)
        model.requires_grad_(False)
        ens = cls(model, tokenizer, config, by_id, assignment, lora=lora_settings(config, base))
        for shard in range(config.shards):
            for b, order in enumerate(sequence_orders(config.slices, config.sequences)):
                for k in range(config.slices):
                    layer = Layer(shard, b, k, sorted(order[: k + 1]))
                    ens.layers[layer.name] = layer
                    ens._train_layer(layer, log_dir, progress)
        ens.total_units = sum(layer.units(config.epochs) for layer in ens.layers.values())
        return ens

    def _layer_items(self, layer: Layer) -> list:
        keep = {(layer.shard, j) for j in layer.data_slices}
        return [self.items[i] for i in sorted(self.items) if self.assignment[i] in keep]

    def _prefix(self, layer: Layer) -> list[str]:
        return [layer_name(layer.shard, layer.sequence, p) for p in range(layer.position)]

    def _train_layer(self, layer: Layer, log_dir: Path | None, progress: bool) -> dict:
        """(Re)create `layer`'s adapter from its seed and train it on its slices, earlier layers frozen."""
        from obliviate.train.loop import finetune

        if hasattr(self.model, "peft_config") and layer.name in self.model.peft_config:
            drop_adapter(self.model, layer.name)
        seed = layer_seed(self.config.seed, layer.shard, layer.sequence, layer.position)
        self.model = add_adapter(self.model, layer.name, self.lora, seed)
        data = self._layer_items(layer)
        layer.examples, layer.active = len(data), True
        if not data:
            return {"steps": 0}
        self.model.requires_grad_(False)
        for p in adapter_parameters(self.model, layer.name).values():
            p.requires_grad_(True)
        cfg = self.config.model_copy(update={"seed": seed, "save_every": 0})
        with tempfile.TemporaryDirectory() as tmp:
            out = (log_dir / "slices" / layer.name) if log_dir is not None else Path(tmp)
            with active_adapters(self.model, [*self._prefix(layer), layer.name]):
                summary = finetune(SliceSFT(cfg), self.model, self.tokenizer, data, [], out, progress=progress)
        self.model.requires_grad_(False)
        return summary

    # -- deleting ---------------------------------------------------------------------------

    def delete(self, ids: Sequence[str], retrain: bool = False, log_dir: Path | None = None,
               progress: bool = False) -> S3TEnsemble:
        """Remove items `ids`: deactivate every layer that saw one, and with `retrain` retrain them
        without it. Updates the ensemble in place and returns it; `last_deletion` holds the cost."""
        unknown = [i for i in ids if i not in self.items]
        if unknown:
            raise ConfigError(f"s3t delete: {len(unknown)} item id(s) are not in the ensemble (first: {unknown[0]!r})")
        hit = {self.assignment[i] for i in ids}
        for i in ids:
            del self.items[i]
        self.deleted += list(ids)
        orders = sequence_orders(self.config.slices, self.config.sequences)
        affected = []
        for layer in self.layers.values():
            first = min((orders[layer.sequence].index(j) for s, j in hit if s == layer.shard), default=None)
            if first is None:
                continue
            if retrain:  # an earlier deletion may have left layers of this sequence inactive
                first = min([first, *(x.position for x in self.layers.values() if not x.active
                                       and (x.shard, x.sequence) == (layer.shard, layer.sequence))])
            if layer.position >= first and (retrain or layer.active):
                affected.append(layer)
        deactivated = sum(layer.units(self.config.epochs) for layer in affected if layer.active)
        repeated = 0
        for layer in sorted(affected, key=lambda x: (x.shard, x.sequence, x.position)):
            if retrain:
                self._train_layer(layer, log_dir, progress)
                repeated += layer.units(self.config.epochs)
            else:
                layer.active = False
                drop_adapter(self.model, layer.name)  # its weights leave the ensemble
        self.last_deletion = {
            "items": len(ids), "layers_affected": len(affected), "layers": len(self.layers), "retrain": retrain,
            "deactivated_fraction": deactivated / max(self.total_units, 1),
            "cost_fraction": repeated / max(self.total_units, 1),
            "shards_touched": len({s for s, _ in hit}),
        }
        return self

    # -- the model --------------------------------------------------------------------------

    def shard_adapters(self) -> list[list[str]]:
        """Per shard, the active prefix of its sequence with the longest one (ties: the first)."""
        out = []
        for shard in range(self.config.shards):
            best: list[str] = []
            for b in range(len(sequence_orders(self.config.slices, self.config.sequences))):
                prefix = []
                for k in range(self.config.slices):
                    layer = self.layers[layer_name(shard, b, k)]
                    if not layer.active:
                        break
                    prefix.append(layer.name)
                if len(prefix) > len(best):
                    best = prefix
            out.append(best)
        return out

    def intervention(self) -> ShardedEnsemble:
        self.model.eval()
        return ShardedEnsemble(self.model, self.shard_adapters(), self.lora, self.config.aggregate)

    def wrap(self):
        """The ensemble as a model (the qa suite, attacks and generation run on it unchanged)."""
        return self.intervention().wrap(base_of(self.model), self.tokenizer).eval()

    # -- persistence ------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(), "lora": self.lora.state(),
            "sequences": sequence_orders(self.config.slices, self.config.sequences),
            "slices": {f"{s}/{j}": sorted(i for i, a in self.assignment.items() if a == (s, j) and i in self.items)
                       for s in range(self.config.shards) for j in range(self.config.slices)},
            "layers": {n: {"shard": x.shard, "sequence": x.sequence, "position": x.position,
                           "data_slices": x.data_slices, "examples": x.examples, "active": x.active}
                       for n, x in self.layers.items()},
            "shards": self.shard_adapters(), "deleted": self.deleted, "total_units": self.total_units,
            "last_deletion": self.last_deletion,
        }

    def save(self, out_dir: str | Path) -> Path:
        """The intervention's files and `manifest.json` into `out_dir` (each written atomically)."""
        out = self.intervention().save(out_dir)
        write_json(out / MANIFEST, self.manifest())
        return out

    @classmethod
    def load(cls, path: str | Path, base: nn.Module, tokenizer, items: Sequence) -> S3TEnsemble:
        """The ensemble saved in `path` over a copy of `base`, with its training `items` (for retraining)."""
        from obliviate.interventions import load_intervention

        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise ConfigError(f"{path}: not an s3t ensemble (no {MANIFEST})")
        manifest = read_json(path / MANIFEST)
        config = S3TConfig(**manifest["config"])
        model = copy.deepcopy(base)
        ensemble = load_intervention(path, model, tokenizer)
        by_id, assignment = cls.assign(items, config)
        deleted = list(manifest["deleted"])
        for i in deleted:
            by_id.pop(i, None)
        saved = {i for ids in manifest["slices"].values() for i in ids}
        if set(by_id) != saved:
            raise ConfigError(f"{path}/{MANIFEST}: the items given are not the ones the ensemble was trained on "
                              f"({len(set(by_id) ^ saved)} differ)")
        layers = {n: Layer(x["shard"], x["sequence"], x["position"], list(x["data_slices"]), x["examples"],
                           x["active"]) for n, x in manifest["layers"].items()}
        return cls(ensemble.peft_model, tokenizer, config, by_id, assignment, layers, deleted,
                   int(manifest["total_units"]), LoraSettings.from_state(manifest["lora"]))


class S3T(InterventionMethod):
    """S3T on the given training data: forget ∪ retain is the fine-tuning set, forget is deleted.

    The model given is the *base* model, before any fine-tuning on this data: the ensemble is that
    model plus its LoRA layers. On `world:` models the workflow trains from the world's base model
    on the target's data instead (`obliviate.workflow.exact`).
    """

    name = "s3t"
    family = "exact"
    paper = "Chowdhury et al. 2024, Towards Scalable Exact Machine Unlearning Using Parameter-Efficient Fine-Tuning"
    summary = "sharded, sliced LoRA training from the base model; deletion deactivates (or retrains) the slices"
    Config = S3TConfig
    uses_retain = True
    accepts_text = True
    exact: ClassVar[bool] = True  # trains from the base model on the fine-tuning data, then deletes
    ensemble: S3TEnsemble | None = None

    def build(self, model, tokenizer, forget, retain, out_dir: Path, progress: bool, resume: bool):
        ensemble = S3TEnsemble.train(model, tokenizer, [*forget, *retain], self.config, Path(out_dir), progress)
        ensemble.delete([item_id(it) for it in forget], retrain=self.config.retrain, log_dir=Path(out_dir),
                        progress=progress)
        self.ensemble = ensemble
        return ensemble.intervention(), {"deletion": ensemble.last_deletion}

    def save(self, out_dir: str | Path) -> Path:
        if self.ensemble is None:
            raise ConfigError("s3t: nothing to save before unlearn()")
        return self.ensemble.save(Path(out_dir) / ARTIFACT_DIR)
