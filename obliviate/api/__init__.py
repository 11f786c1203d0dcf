"""The Python API: unlearn, evaluate, attack and benchmark in a few lines, as the CLI does.

    import obliviate as ob

    run = ob.unlearn("npo", model="world:tiny", data="world:forget10", lora=ob.LoRA(r=8, alpha=16),
                     out="runs/npo", overrides={"lr": 1e-4})
    result = ob.evaluate(run)            # an EvalResult: aggregates with CIs, per-item values
    result.table()                       # the rich table `obliviate eval` prints
    result.items.to_pandas()             # one row per scored item
    report = ob.attack(run, ["relearn", "forms"])
    board = ob.bench(methods=["ga", "npo"], world="tiny", seeds=3, out="bench/b1")
    full = ob.finetune_sharded("world:tiny", out="runs/s3t")   # exact unlearning (S3T): train, then
    gone = ob.delete(full, subjects=["p003"], out="runs/s3t-deleted")   # delete from it

Every function here is what one CLI command calls; the CLI only parses options and prints. Results
load back from their directories (`Run.load`, `EvalResult.load`), so a script can pick up what the
CLI wrote and the other way round. Model specs: `world:PRESET[@SEED][:ARCH]`, a run directory, a
local Hugging Face directory or a hub name. Data specs: `world:SPLIT` (the model's world, e.g.
`world:forget10`), or give `forget=` and `retain=` files.
"""

from obliviate.api.core import attack, evaluate, load_model, pull, rerun, unlearn
from obliviate.api.exact import delete, finetune_sharded
from obliviate.api.studies import bench, compare, demo, protocol, seeds
from obliviate.api.types import AttackReport, BenchResult, EvalResult, Items, LoRA, Run

__all__ = ["AttackReport", "BenchResult", "EvalResult", "Items", "LoRA", "Run", "attack", "bench", "compare",
           "demo", "evaluate", "load_model", "protocol", "pull", "rerun", "seeds", "unlearn",
           "delete", "finetune_sharded"]
