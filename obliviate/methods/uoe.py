"""UOE: unlearn one expert of a mixture-of-experts model, with a router anchor.

Zhuang et al. 2025, *UOE: Unlearning One Expert Is Enough for Mixture-of-Experts LLMs* (ACL 2025 as
*SEUF: Is Unlearning One Expert Enough for Mixture-of-Experts LLMs?*). Unlearning all of an MoE
model shifts the routing: the router learns to bypass the experts that held the forget knowledge,
so the knowledge survives while innocent experts are damaged. UOE instead

1. attributes the forget set to one expert: the router's top-k choices are counted over the forget
   answer tokens (the positions with a label), per MoE layer, giving counts n[l, e]; the expert is
   e* = argmax_e n[l*, e] in the layer l* whose most-chosen expert takes the largest share of
   tokens, l* = argmax_l max_e n[l, e] (or the layer / expert given in the config);
2. unlearns only that expert with any fine-tuning loss L_u (the `loss` method's own `compute_loss`:
   ga, graddiff, npo, ...), while an anchor loss keeps the router of l* choosing e* on forget inputs:

       L = L_u(θ_{e*}) + w · CE(router_{l*}(h_{l*}(x_f)), e*),    w = `anchor_weight`

   the cross-entropy averaged over the same forget answer tokens.

Trained parameters: expert e* of layer l* and, when w > 0, the router of layer l* (the anchor's
target); every other parameter, other experts and other routers included, stays bitwise equal.
Stacked expert tensors (E, ...) are split by a parametrisation that makes expert e*'s slice its
own parameter for the run and is folded back afterwards, so the optimiser never sees the others.

Defaults: the paper has no public code; it unlearns the top-1 expert of a single layer with GA,
GradDiff, NPO or RMU. Here the loss defaults to graddiff, w to 1 and the learning rate to 5e-3.
On the `tiny` MoE world (`obliviate unlearn -m uoe --model world:tiny@0:moe --out RUN`, then
`obliviate eval RUN --no-generate`; forget10, 30 steps, one expert of layer 1 trained) the forget
probability falls from 0.99 to 0.22 while the retain probability falls to 0.77 and model utility from
0.92 to 0.88; with lr 3e-3, 0.63 and 0.96; with `anchor_weight=0`, 0.42 and 0.87. The attribution
(counts per layer, the choice and its share) is in the run summary (`expert`) and in `expert.json`
of the run directory; a resumed run keeps that expert.

`--lora`: only adapters inside expert e* (and the router, when anchored) train; stacked expert
tensors are not linear modules LoRA can wrap, so on such models UOE asks to run without it (it
trains a single expert anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from torch import nn
from torch.nn.utils import parametrize

from obliviate.config import did_you_mean
from obliviate.errors import ConfigError
from obliviate.io import read_json, write_json
from obliviate.methods.base import FinetuneConfig, FinetuneMethod, LossOutput
from obliviate.models.layers import MoELayer, expert_tensors, moe_layers, record_routing, router_output
from obliviate.models.lora import is_peft_model
from obliviate.train.data import IGNORE, collate, encode_items

# Fine-tuning methods whose loss UOE cannot borrow: RMU picks its own trainable layers, WHP and
# task_vector are staged procedures around their loss, and UOE itself.
EXCLUDED = ("rmu", "whp", "task_vector", "uoe")
CHOICE_FILE = "expert.json"  # the attribution, in the run directory (a resumed run keeps the same expert)


def loss_methods() -> list[str]:
    """Names of the methods whose `compute_loss` can drive UOE."""
    from obliviate.methods import METHODS  # the table imports this module: look it up late

    return [n for n, cls in METHODS.items() if issubclass(cls, FinetuneMethod) and n not in EXCLUDED]


def _parse_pairs(value: Any) -> Any:
    """`"beta=0.2,alpha=1"` (as `--set` passes it) -> {"beta": "0.2", "alpha": "1"}."""
    if not isinstance(value, str):
        return value
    out = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"expected key=value pairs, got {part!r}")
        out[key.strip()] = val.strip()
    return out


class UOEConfig(FinetuneConfig):
    loss: str = Field("graddiff", description="the unlearning loss on the chosen expert: the name of a "
                      "fine-tuning method defined by its loss (ga, graddiff, npo, kl, ...; not rmu, whp, task_vector)")
    loss_config: dict[str, Any] = Field({}, description="that method's own fields, e.g. "
                                        "{beta: 0.1} for npo; on the command line `loss_config=beta=0.1,alpha=1`")
    anchor_weight: float = Field(1.0, ge=0, description="w, weight of the router anchor CE towards the chosen "
                                 "expert (0: no anchor, the router stays frozen)")
    layer: int | None = Field(None, description="decoder layer of the unlearned expert (default: the MoE layer "
                              "whose most-chosen expert takes the largest share of forget answer tokens)")
    expert: int | None = Field(None, ge=0, description="the unlearned expert (default: the one the router of "
                               "that layer chooses most often on forget answer tokens)")
    lr: float = Field(5e-3, gt=0, description="peak learning rate (AdamW); one expert needs larger steps than "
                      "the whole model (see the module docstring)")

    @field_validator("loss")
    @classmethod
    def known_loss(cls, value: str) -> str:
        names = loss_methods()
        if value not in names:
            raise ValueError(f"'{value}' is not a loss UOE can use{did_you_mean(value, names)} "
                             f"(choose one of {', '.join(names)})")
        return value

    @field_validator("loss_config", mode="before")
    @classmethod
    def key_value_pairs(cls, value: Any) -> Any:
        return _parse_pairs(value)

    @field_validator("loss_config")
    @classmethod
    def fields_of_the_loss(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each key must be a field of the loss method's config; values come back with its types."""
        from obliviate.methods import get_method

        if "loss" not in info.data:
            return value  # the loss itself was invalid; that error is reported
        config_cls = get_method(info.data["loss"]).Config
        fields = list(config_cls.model_fields)
        for key in value:
            if key not in fields:
                raise ValueError(f"unknown key '{key}' for {info.data['loss']}{did_you_mean(key, fields)}")
        try:
            typed = config_cls(**value)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{info.data['loss']} field '{err['loc'][0]}': {err['msg']}") from None
        return {key: getattr(typed, key) for key in value}


def routing_counts(model, tokenizer, items, layers: list[MoELayer], batch_size: int, max_length: int) -> torch.Tensor:
    """n[l, e]: how often the router of MoE layer l chose expert e on the answer tokens of `items`.

    Counts top-k selections (each token adds k), in eval mode; returns (len(layers), E) int64.
    """
    encoded, _ = encode_items(tokenizer, items, max_length=max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    counts = torch.zeros(len(layers), max(m.n_experts for m in layers), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[start : start + batch_size], pad_id).items()}
            answer = (batch["labels"] != IGNORE).reshape(-1)  # (B·T,)
            with torch.no_grad(), record_routing(layers) as records:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for row, moe in enumerate(layers):
                for _logits, chosen in records[moe.index]:
                    counts[row] += torch.bincount(chosen[answer].reshape(-1).cpu(), minlength=counts.shape[1])
    finally:
        model.train(was_training)
    return counts


def find_layer(layers: list[MoELayer], layer: int) -> MoELayer:
    """The MoE block of decoder layer `layer`."""
    for moe in layers:
        if moe.index == layer:
            return moe
    raise ConfigError(f"uoe: layer={layer} has no MoE block (MoE layers: {[m.index for m in layers]})")


def choose_expert(counts: torch.Tensor, layers: list[MoELayer], layer: int | None = None,
                  expert: int | None = None) -> tuple[MoELayer, int]:
    """(the MoE layer, the expert index) to unlearn, from the counts n[l, e] (see the module docstring)."""
    if layer is None:
        moe = layers[int(counts.max(dim=1).values.argmax())]  # ties: the first layer
    else:
        moe = find_layer(layers, layer)
    row = counts[layers.index(moe), : moe.n_experts]
    chosen = int(row.argmax()) if expert is None else expert
    if not 0 <= chosen < moe.n_experts:
        raise ConfigError(f"uoe: expert={chosen} is outside the {moe.n_experts} experts of layer {moe.index}")
    return moe, chosen


class ExpertSlice(nn.Module):
    """Parametrisation of a stacked (E, ...) tensor: slice `index` is a parameter of its own.

    The stacked original stays frozen; the forward puts the trained slice in its place.
    """

    def __init__(self, stacked: torch.Tensor, index: int) -> None:
        super().__init__()
        self.index = index
        self.slice = nn.Parameter(stacked[index].detach().clone())

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return torch.cat([stacked[: self.index], self.slice.unsqueeze(0), stacked[self.index + 1 :]])


class _RouterDone(Exception):
    """Raised once the anchored router has run: the anchor needs nothing after it."""


class UOE(FinetuneMethod):
    name = "uoe"
    paper = "Zhuang et al. 2025, UOE: Unlearning One Expert Is Enough for Mixture-of-Experts LLMs"
    accepts_text = True
    summary = "unlearn only the expert the router picks most for the forget set; anchor the router to it"
    Config = UOEConfig
    uses_retain = True  # as the chosen loss (set per instance)
    needs_moe = True

    def __init__(self, config: UOEConfig | None = None) -> None:
        super().__init__(config)
        from obliviate.methods import get_method

        cfg = self.config
        cls = get_method(cfg.loss)
        shared = {k: getattr(cfg, k) for k in FinetuneConfig.model_fields if k in cls.Config.model_fields}
        self.base = cls(cls.Config(**{**shared, **cfg.loss_config}))
        self.uses_retain = self.base.uses_retain
        self._sliced: list[tuple[nn.Module, str]] = []
        self._resumed: dict | None = None  # the attribution of the run being resumed
        self._out_dir: Path | None = None

    # -- set-up: attribution, then only the expert (and the anchored router) trainable -------------

    def setup(self, model, tokenizer, forget, retain) -> None:
        cfg = self.config
        layers = moe_layers(model)
        if not layers:
            name = type(getattr(model, "module", model)).__name__
            raise ConfigError(f"uoe needs a mixture-of-experts model; {name} has no MoE layers")
        if self._resumed is not None:  # the checkpoint holds that expert's weights: keep it
            self.attribution = self._resumed
            self.moe, self.expert = find_layer(layers, self._resumed["layer"]), int(self._resumed["expert"])
        else:
            counts = routing_counts(model, tokenizer, forget, layers, cfg.batch_size, cfg.max_length)
            self.moe, self.expert = choose_expert(counts, layers, cfg.layer, cfg.expert)
            row = layers.index(self.moe)
            self.attribution = {"layer": self.moe.index, "expert": self.expert,
                                "share": float(counts[row, self.expert]) / max(int(counts[row].sum()), 1),
                                "moe_layers": [m.index for m in layers],
                                "counts": [counts[i, : m.n_experts].tolist() for i, m in enumerate(layers)]}
            if self._out_dir is not None and PartialState().is_main_process:
                write_json(self._out_dir / CHOICE_FILE, self.attribution)
        for p in model.parameters():
            p.requires_grad_(False)
        if is_peft_model(model):
            self._train_adapters()
        else:
            self._train_expert()
            if cfg.anchor_weight > 0:
                self.moe.router.requires_grad_(True)
        self.base.setup(model, tokenizer, forget, retain)  # after freezing: SNAP regularises what trains

    def _train_expert(self) -> None:
        for module, name, index in expert_tensors(self.moe, self.expert):
            if index is None:
                getattr(module, name).requires_grad_(True)
            else:
                parametrize.register_parametrization(module, name, ExpertSlice(getattr(module, name), index))
                self._sliced.append((module, name))

    def _train_adapters(self) -> None:
        """Under LoRA: the adapters inside the chosen expert (and the anchored router) train."""
        experts = self.moe.experts
        adapters = lambda m: [p for n, p in m.named_parameters() if "lora_" in n]  # noqa: E731
        chosen = adapters(experts[self.expert]) if isinstance(experts, nn.ModuleList) else []
        if not chosen:
            raise ConfigError(f"uoe: --lora put no adapter on expert {self.expert} of layer {self.moe.index} "
                              "(stacked expert weights are not linear modules); run uoe without --lora, it "
                              "trains that one expert only")
        if self.config.anchor_weight > 0:
            chosen += adapters(self.moe.router)
        for p in chosen:
            p.requires_grad_(True)

    def unlearn(self, model, tokenizer, forget, retain, out_dir, progress=True, resume=False) -> dict:
        saved = Path(out_dir) / CHOICE_FILE
        self._resumed = read_json(saved) if resume and saved.exists() else None
        self._out_dir = Path(out_dir)
        try:
            summary = super().unlearn(model, tokenizer, forget, retain, Path(out_dir), progress=progress, resume=resume)
        finally:
            for module, name in self._sliced:  # fold the trained slice back into the stacked tensor
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            self._sliced = []
        return {**summary, "expert": self.attribution}

    # -- the loss ----------------------------------------------------------------------------------

    def anchor_loss(self, model, forget: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE of the chosen layer's router logits towards the chosen expert, over forget answer tokens.

        The forward pass stops as soon as that router has run.
        """
        logits: list[torch.Tensor] = []

        def hook(_module, _args, output):
            logits.append(router_output(output, self.moe.top_k)[0])
            raise _RouterDone

        handle = self.moe.router.register_forward_hook(hook)
        try:
            model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"])
        except _RouterDone:
            pass
        finally:
            handle.remove()
        answer = (forget["labels"] != IGNORE).reshape(-1)  # (B·T,)
        scored = logits[0][answer].float()  # (N, E): router logits at the answer tokens
        return F.cross_entropy(scored, torch.full((scored.shape[0],), self.expert, device=scored.device))

    def compute_loss(self, model, batch) -> LossOutput:
        with parametrize.cached():  # the stacked experts are assembled once per call, not per expert
            out = self.base.compute_loss(model, batch)
            if self.config.anchor_weight == 0:
                return out
            anchor = self.anchor_loss(model, batch.forget)
        loss = out.loss + self.config.anchor_weight * anchor
        return LossOutput(loss, {**out.logs, "unlearn_loss": float(out.loss.detach()),
                                 "anchor_ce": float(anchor.detach())})
