"""The method table: every unlearning method, by name.

Adding a method: write its file, add one line here, a test, and a row in docs/methods.md.
"""

from __future__ import annotations

from obliviate.config import did_you_mean
from obliviate.errors import ConfigError
from obliviate.methods.altpo import AltPO
from obliviate.methods.base import FinetuneMethod, Method, MethodConfig
from obliviate.methods.ceu import CEU
from obliviate.methods.eco import ECO
from obliviate.methods.flat import FLAT
from obliviate.methods.ga import GradientAscent
from obliviate.methods.graddiff import GradDiff
from obliviate.methods.guard import GUARD
from obliviate.methods.icul import ICUL, PromptBaseline
from obliviate.methods.idk_dpo import IdkDPO
from obliviate.methods.idk_sft import IdkSFT
from obliviate.methods.kl import KL
from obliviate.methods.npo import NPO
from obliviate.methods.pdu import PDU
from obliviate.methods.random_label import RandomLabel
from obliviate.methods.rmu import RMU
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
)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in _TABLE}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'{did_you_mean(name, list(METHODS))} (see `obliviate methods`)")
    return METHODS[name]


__all__ = ["METHODS", "FinetuneMethod", "Method", "MethodConfig", "get_method"]
