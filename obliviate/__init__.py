"""obliviate: make a language model forget chosen data or knowledge, and prove that it did.

    import obliviate as ob
    run = ob.unlearn("graddiff", model="world:tiny", data="world:forget10", out="runs/gd")
    print(ob.evaluate(run).table())

The public API (`obliviate.api`) is loaded on first use, so `import obliviate` stays cheap.
"""

from typing import Any

from obliviate.version import __version__

_API = ("AttackReport", "BenchResult", "EvalResult", "Items", "LoRA", "Run", "attack", "bench", "compare",
        "demo", "evaluate", "load_model", "protocol", "pull", "rerun", "seeds", "unlearn",
        "delete", "finetune_sharded")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from obliviate import api

        return getattr(api, name)
    raise AttributeError(f"module 'obliviate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
