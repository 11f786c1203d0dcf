"""Adapters from published unlearning benchmarks to the schema's items."""

from obliviate.data.adapters.tofu import TofuData, load_tofu, load_tofu_set

__all__ = ["TofuData", "load_tofu", "load_tofu_set"]
