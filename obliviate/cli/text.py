"""`obliviate eval TARGET --suite text`: the MUSE-style text suite (VerbMem, KnowMem, PrivLeak).

Data, in order of precedence:
- `--forget SOURCE`: MUSE-format data, a local copy or a hub name (`muse-bench/MUSE-News`, or
  `news` / `books`); see `obliviate.data.adapters.muse`;
- `--world PRESET[@SEED]`, or the world the target comes from (`world:PRESET`, or a run made from
  it): the world's biographies and questions (`obliviate.evals.text.world_muse_data`).

The oracle for PrivLeak (`--oracle`):
- a model: `world:PRESET[@SEED]`, a run directory, a local HF directory or a hub name; it is scored
  on the PrivLeak passages;
- a directory holding `text_items.jsonl` from an earlier `--suite text` evaluation of the oracle;
- `auc=VALUE`: a published oracle AUC, e.g. MUSE's retrained models (`PUBLISHED_RETRAIN_AUC`);
- by default, for world data, the world's exact-retrain oracle. Without an oracle, the MUSE AUC is
  reported but PrivLeak is not.

Results go to `text_results.json` and `text_items.jsonl` in the run directory (or `--out`), beside the
qa suite's `results.json`, which they never overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obliviate.cli.app import console, print_json
from obliviate.tables import fmt, text_table


def eval_text(target: str, data: str | None = None, oracle: str | None = None, split: str = "forget10",
              world: str | None = None, out: Path | None = None, generate: bool = True, as_json: bool = False,
              unused: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `target` with the text suite; write and print its results (see the module docstring)."""
    from obliviate.workflow.suites import evaluate_text_target

    payload, muse, oracle_auc = evaluate_text_target(target, data, oracle, split, world, out, generate,
                                                     progress=not as_json, unused=unused)
    if as_json:
        print_json(payload)
        return payload
    console.print(text_table(payload["aggregates"], f"text suite (MUSE-style): {muse.source}"))
    if oracle_auc is None:
        console.print("no oracle: PrivLeak needs --oracle (a model, an eval dir, or auc=VALUE)")
    else:
        console.print(f"oracle: {oracle_auc.source} (MUSE AUC {fmt(oracle_auc.auc)})", highlight=False)
    where = Path(target) if out is None else out
    console.print(f"results: {where / 'text_results.json'}")
    return payload
