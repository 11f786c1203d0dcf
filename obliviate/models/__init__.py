"""Models: loading, prompt formats, batched scoring and batched greedy generation.

Names are imported lazily, so `import obliviate.models.prompts` (or a CLI listing) does not pay
for importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cut_at_stop": "generation",
    "generate_answers": "generation",
    "generate_greedy": "generation",
    "hidden_states": "generation",
    "ensure_pad_token": "loading",
    "load_model": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "save_model": "loading",
    "DEFAULT_FORMAT": "prompts",
    "PromptFormat": "prompts",
    "encode_pair": "prompts",
    "ContinuationScores": "scoring",
    "score_continuations": "scoring",
    "score_qa": "scoring",
    "score_texts": "scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
