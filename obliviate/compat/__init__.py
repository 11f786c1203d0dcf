"""Readers that score other tools' evaluation logs with obliviate's metric functions."""

from obliviate.compat.tofu_legacy import FORGET_KEYS, UTILITY_KEYS, load_tofu_log, tofu_legacy_report

__all__ = ["FORGET_KEYS", "UTILITY_KEYS", "load_tofu_log", "tofu_legacy_report"]
