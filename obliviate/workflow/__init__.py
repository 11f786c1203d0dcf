"""The workflows behind the API and the CLI: resolve a model and data, unlearn into a run, evaluate it.

- `specs`: which model a spec names (`world:PRESET`, a run, a local directory, a hub name);
- `unlearning`: `run_unlearn`, one method on one model into a run directory;
- `evaluation`: the qa suite on a model or run, against its oracle;
- `suites`: the text, labels and lm-evaluation-harness suites;
- `demo`: the whole story on the built-in world.
"""

from obliviate.workflow.evaluation import (
    EvalSets,
    cached_world_eval,
    eval_cache_dir,
    evaluate,
    evaluate_target,
    load_eval_sets,
    oracle_truth_ratios,
    resolve_oracle_truth_ratios,
    world_eval_sets,
)
from obliviate.workflow.specs import WorldRef, load_model_spec, parse_world_spec, world_models

__all__ = ["EvalSets", "WorldRef", "cached_world_eval", "eval_cache_dir", "evaluate", "evaluate_target",
           "load_eval_sets", "load_model_spec", "oracle_truth_ratios", "parse_world_spec",
           "resolve_oracle_truth_ratios", "world_eval_sets", "world_models"]

from obliviate.workflow.unlearning import peak_memory_mb, run_unlearn  # noqa: E402

__all__ += ["peak_memory_mb", "run_unlearn"]
