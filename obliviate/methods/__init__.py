"""The method table: every unlearning method, by name.

Adding a method: write its file, add one line here, a test, and a row in docs/methods.md.

Each method says which data it trains on: `accepts_text = True` on the class when it also trains on
text passages (MUSE's and WMDP's corpora: the loss runs on every token, or on the continuation of a
passage with a prefix), else QA items only; `check_item_kinds` refuses text for the others in one
line, and `obliviate methods` shows the split in its `data` column.

A name `method+suffix` is a labelled variant (`Method.variants`, `methods/base.py`); the variants
in `_VARIANTS` are listed with the methods, so `--methods all` runs them and tables show them
beside the paper's form. Any other declared variant is found by name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from obliviate.config import did_you_mean
from obliviate.data.schema import TextPassage
from obliviate.errors import ConfigError
from obliviate.methods.altpo import AltPO
from obliviate.methods.alu import ALU
from obliviate.methods.base import VARIANT_SEP, FinetuneMethod, Method, MethodConfig
from obliviate.methods.ceu import CEU
from obliviate.methods.eco import ECO
from obliviate.methods.flat import FLAT
from obliviate.methods.ga import GradientAscent
from obliviate.methods.graddiff import GradDiff
from obliviate.methods.guard import GUARD
from obliviate.methods.icul import ICUL, PromptBaseline
from obliviate.methods.idk_dpo import IdkDPO
from obliviate.methods.idk_sft import IdkSFT
from obliviate.methods.key_space_detection import KeySpaceDetection
from obliviate.methods.kl import KL
from obliviate.methods.neuron_adjust import NeuronAdjust
from obliviate.methods.npo import NPO
from obliviate.methods.pdu import PDU
from obliviate.methods.random_label import RandomLabel
from obliviate.methods.rmu import RMU
from obliviate.methods.rocr import ROCR
from obliviate.methods.s3t import S3T
from obliviate.methods.satimp import SatImp
from obliviate.methods.simnpo import SimNPO
from obliviate.methods.snap import SNAP
from obliviate.methods.spul import SPUL
from obliviate.methods.ssd import SSD
from obliviate.methods.task_vector import TaskVector
from obliviate.methods.uld import ULD
from obliviate.methods.undial import UNDIAL
from obliviate.methods.uoe import UOE
from obliviate.methods.wagle import WAGLE
from obliviate.methods.wga import WGA
from obliviate.methods.whp import WHP

_TABLE: tuple[type[Method], ...] = (
    GradientAscent,
    GradDiff,
    KL,
    NPO,
    SimNPO,
    IdkSFT,
    IdkDPO,
    RMU,
    SNAP,
    WHP,
    FLAT,
    RandomLabel,
    SSD,
    TaskVector,
    UOE,
    SPUL,
    ICUL,
    PromptBaseline,
    ECO,
    GUARD,
    ULD,
    UNDIAL,
    WGA,
    SatImp,
    CEU,
    PDU,
    AltPO,
    WAGLE,
    NeuronAdjust,
    KeySpaceDetection,
    ROCR,
    ALU,
    S3T,
)
# Labelled variants listed beside the paper's methods (the forms earlier tables reported).
_VARIANTS: tuple[str, ...] = ("spul+gate", "icul+gate", "prompt+gate")
_BASE: dict[str, type[Method]] = {cls.name: cls for cls in _TABLE}


@functools.cache
def _variant(name: str) -> type[Method] | None:
    base, sep, rest = name.partition(VARIANT_SEP)
    if not sep or base not in _BASE:
        return None
    try:
        return _BASE[base].variant(rest.split(VARIANT_SEP))
    except KeyError:
        return None


METHODS: dict[str, type[Method]] = {}
for _cls in _TABLE:
    METHODS[_cls.name] = _cls
    METHODS.update({v: _variant(v) for v in _VARIANTS if v.partition(VARIANT_SEP)[0] == _cls.name})


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`, or the labelled variant `method+suffix`."""
    cls = METHODS.get(name) or _variant(name)
    if cls is None:
        declared = [f"{n}{VARIANT_SEP}{s}" for n, c in _BASE.items() for s in c.variants]
        raise ConfigError(f"unknown method '{name}'{did_you_mean(name, [*METHODS, *declared])} "
                          "(see `obliviate methods`)")
    return cls


def takes_text(cls: type[Method], config: MethodConfig | None = None) -> bool:
    """Whether `cls` trains on text passages (`accepts_text`); WAGLE and UOE as their base method does."""
    if not cls.accepts_text:
        return False
    for key in ("base", "loss"):  # WAGLE's base method, UOE's loss: both name another method
        inner = getattr(config, key, None)
        if isinstance(inner, str) and inner in METHODS:
            return METHODS[inner].accepts_text
    return True


def text_methods() -> list[str]:
    """The methods that take text passages, in table order."""
    return [name for name, cls in METHODS.items() if cls.accepts_text]


def check_item_kinds(cls: type[Method], items: Sequence, where: str, config: MethodConfig | None = None) -> None:
    """A one-line error when `items` hold text passages and `cls` needs QA items."""
    if any(isinstance(item, TextPassage) for item in items) and not takes_text(cls, config):
        raise ConfigError(f"{cls.name} needs QA items (question, answer), and {where} holds text passages; "
                          f"methods that take text: {', '.join(text_methods())}")


def method_label(name: str, config: MethodConfig | dict | None = None) -> str:
    """The name a run of method `name` with `config` is reported under (`Method.label`)."""
    cls = METHODS.get(name) or _variant(name)
    if cls is None or config is None:
        return name
    return cls.label(config)


def label_for_overrides(name: str, pairs: list[str]) -> str:
    """`method_label` of method `name` configured by `--set` pairs (its defaults otherwise)."""
    from obliviate.config import build_config, parse_overrides

    cls = METHODS.get(name) or _variant(name)
    if cls is None:
        return name
    try:
        return cls.label(build_config(cls.Config, parse_overrides(pairs)))
    except ConfigError:
        return name


__all__ = ["METHODS", "FinetuneMethod", "Method", "MethodConfig", "check_item_kinds", "get_method",
           "label_for_overrides", "method_label", "takes_text", "text_methods"]
