"""Exact unlearning on the built-in world: S3T's sharded ensemble, trained as the target was, then deleted from.

The world trains its target from a seeded random initialisation on one data set (`world/train.py`):
every trained question form of every fact of its people, the utility facts, and each person's
biography. S3T needs the model *before* that fine-tuning, so its base model is that very
initialisation (`base/` in the world's cache: `make_model` with the target's seed), and its
fine-tuning data is the target's data as items: the QA training items and the biographies as text
passages (loss on every token, as the target's). The full ensemble is trained once per config and
cached in the world's directory (`s3t-<hash>/`, built atomically); a run loads it, deletes the
forget split's items (the forget people's questions and biographies) and writes a run directory
whose artifact is the ensemble over the base model, so `obliviate eval` and `obliviate attack` run
on it as on any run.

    obliviate unlearn --method s3t --model world:tiny --out runs/s3t [--set retrain=true]

Differs from the target's data in one detail: a biography is scored as BOS + text, without the EOS
token the world appends (`TextPassage` encoding in `train/data.py`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from obliviate.data.schema import TextPassage
from obliviate.io import build_dir_atomic, file_lock, mark_out_dir, stable_hash, write_json
from obliviate.workflow.specs import WorldRef, world_models

ENSEMBLE_DIR = "intervention"


def world_base(models) -> Path:
    """The world's pre-fine-tuning model (the target's initialisation), built once into `base/`."""
    from transformers import PreTrainedTokenizerFast

    from obliviate.models.loading import quiet_hf_progress
    from obliviate.world.config import arch_recipe
    from obliviate.world.train import make_model

    def build(tmp: Path) -> None:
        tok = PreTrainedTokenizerFast.from_pretrained(models.tokenizer, trust_remote_code=False)
        recipe = arch_recipe(models.world.recipe, models.arch)
        model = make_model(recipe, tok, recipe.seed, models.arch)
        with quiet_hf_progress():
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "obliviate.json", {"role": "base", "preset": models.world.preset, "arch": models.arch,
                                            "world_seed": models.world.seed, "seed": recipe.seed})

    with file_lock(models.root / ".lock"):
        return build_dir_atomic(models.root / "base", build)


def world_training_items(world, pids: list[str]) -> list:
    """The target's fine-tuning data as items: QA training items, utility facts, biographies as passages."""
    qa = [item for f in world.facts(list(pids)) for item in f.train_items()] + world.utility_train()
    bios = [TextPassage(p.text, subject=p.subject, meta={"pid": p.subject, "kind": "biography"})
            for p in world.passages(list(pids))]
    return qa + bios


def forget_ids(world, split: str, items: list) -> list[str]:
    """Ids of every training item about the split's forget people (questions and biographies)."""
    from obliviate.methods.s3t import item_id

    retain = set(world.retain_pids(split))
    forget = set(world.splits["trained"]) - retain
    return [item_id(it) for it in items if it.subject in forget]


def trained_ensemble(ref: WorldRef, config, progress: bool = True) -> tuple[Path, Path, list]:
    """(ensemble directory, base model directory, training items): the full ensemble, cached."""
    from obliviate.methods.s3t import S3TEnsemble, item_id
    from obliviate.models.loading import load_model

    models = world_models(ref, which=(), progress=progress)
    base_dir = world_base(models)
    items = world_training_items(models.world, models.world.splits["trained"])
    key = stable_hash({"config": {k: v for k, v in config.model_dump().items() if k not in ("retrain", "aggregate")},
                       "items": sorted(item_id(it) for it in items)})
    final = models.root / f"s3t-{key}"

    def build(tmp: Path) -> None:
        base, tok = load_model(base_dir, device="cpu")
        t0 = time.perf_counter()
        ensemble = S3TEnsemble.train(base, tok, items, config, tmp, progress)
        ensemble.save(tmp / ENSEMBLE_DIR)
        write_json(tmp / "obliviate.json", {"role": "s3t", "config": config.model_dump(), "world": ref.as_dict(),
                                            "train_seconds": round(time.perf_counter() - t0, 2),
                                            "items": len(items), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    with file_lock(models.root / f".s3t-{key}.lock"):
        build_dir_atomic(final, build)
    return final / ENSEMBLE_DIR, base_dir, items


def run_exact_world(method: str, config, ref: WorldRef, out: Path, progress: bool = True,
                    delete: bool = True) -> dict[str, Any]:
    """The cached ensemble with the forget split's items deleted (or, `delete=False`, as trained), as a run."""
    from obliviate.interventions.base import read_state
    from obliviate.methods.s3t import S3TEnsemble
    from obliviate.models.loading import load_model
    from obliviate.models.prompts import format_of
    from obliviate.runs import write_config, write_intervention_artifact
    from obliviate.train.loop import drop_checkpoint

    t0 = time.perf_counter()
    ensemble_dir, base_dir, items = trained_ensemble(ref, config, progress)
    base, tok = load_model(base_dir, device="cpu")
    read_state(ensemble_dir)  # a damaged cache fails here, in one line
    ensemble = S3TEnsemble.load(ensemble_dir, base, tok, items)
    ensemble.config = config  # the cached training's config plus this run's `retrain`
    mark_out_dir(out)
    summary: dict[str, Any] = {"ensemble": str(ensemble_dir.parent), "items": len(items)}
    if delete:
        ids = forget_ids(_world(ref), ref.split, items)
        ensemble.delete(ids, retrain=config.retrain, log_dir=out, progress=progress)
        summary["deletion"] = ensemble.last_deletion
    ensemble.save(out / ENSEMBLE_DIR)
    from obliviate.workflow.unlearning import peak_memory_mb

    summary.update(seconds=time.perf_counter() - t0, steps=0,  # the training is the cached ensemble's
                   peak_memory_mb=peak_memory_mb())
    summary["train_seconds"] = summary["seconds"]
    write_intervention_artifact(out, str(base_dir), method, "sharded_ensemble")
    write_config(out, {"method": method, "method_config": config.model_dump(), "model": _spec(ref),
                       "world": ref.as_dict(), "forget": None, "retain": None, "lora": None, "merged": False,
                       "prompt_format": format_of(tok).state(), "data": None, "defaults": "world",
                       "differs_from_paper": {}, "split": ref.split, "mapping": [], "strict": False,
                       "base_model": str(base_dir), "unlearn": summary})
    drop_checkpoint(out)
    return summary


def _spec(ref: WorldRef) -> str:
    return f"world:{ref.preset}@{ref.seed}" + ("" if ref.arch == "llama" else f":{ref.arch}")


def _world(ref: WorldRef):
    from obliviate.world import get_world

    return get_world(ref.preset, ref.seed)


# -- the sharded ensemble as a command: train it, delete from it ---------------------------------------


def finetune_sharded(model_spec: str, out: Path, data: str | None = None, overrides: list[str] | None = None,
                     split: str = "forget10", progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train an S3T ensemble into run directory `out`, deleting nothing (`obliviate finetune-sharded`).

    `world:PRESET` trains from the world's base model on the target's data (cached); any other model
    spec is the base model and `data` the fine-tuning set (QA items or text passages).
    """
    from obliviate.config import build_config, parse_overrides
    from obliviate.errors import ObliviateError
    from obliviate.methods.s3t import S3TConfig, S3TEnsemble
    from obliviate.runs import check_run_out, write_config, write_intervention_artifact
    from obliviate.workflow.specs import parse_world_spec
    from obliviate.workflow.unlearning import _resolvable

    out = check_run_out(out, force)
    config = build_config(S3TConfig, parse_overrides(overrides or []))
    ref = parse_world_spec(model_spec, split)
    if ref is not None:
        if data is not None:
            raise ObliviateError("finetune-sharded on a world model trains on the world's own data; give no --data")
        return run_exact_world("s3t", config, ref, out, progress, delete=False)
    if data is None:
        raise ObliviateError("finetune-sharded needs --data (the fine-tuning set) unless the model is world:PRESET")
    from obliviate.data import load_items
    from obliviate.models.loading import load_model
    from obliviate.models.prompts import format_of

    items = list(load_items(data, "auto"))
    base, tok = load_model(_resolvable(model_spec))
    mark_out_dir(out)
    t0 = time.perf_counter()
    ensemble = S3TEnsemble.train(base, tok, items, config, out, progress)
    ensemble.save(out / ENSEMBLE_DIR)
    summary = {"items": len(items), "seconds": time.perf_counter() - t0, "steps": 0}
    write_intervention_artifact(out, _resolvable(model_spec), "s3t", "sharded_ensemble")
    write_config(out, {"method": "s3t", "method_config": config.model_dump(), "model": _resolvable(model_spec),
                       "world": None, "train_data": str(Path(data).resolve()) if Path(data).exists() else data,
                       "prompt_format": format_of(tok).state(), "base_model": _resolvable(model_spec),
                       "unlearn": summary})
    return summary


def delete_from_run(run: Path, out: Path, ids: list[str] | None = None, subjects: list[str] | None = None,
                    retrain: bool = False, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Delete items (by id, or every item of `subjects`) from the S3T run `run` into a new run `out`."""
    from obliviate.errors import ObliviateError
    from obliviate.io import read_json
    from obliviate.methods.s3t import S3TConfig, S3TEnsemble, item_id
    from obliviate.models.loading import load_model
    from obliviate.runs import check_run_out, write_config, write_intervention_artifact

    run, out = Path(run), check_run_out(out, force)
    if not (run / ENSEMBLE_DIR / "manifest.json").is_file() or not (run / "config.json").is_file():
        raise ObliviateError(f"{run}: not an s3t run (no {ENSEMBLE_DIR}/manifest.json and config.json)")
    if not ids and not subjects:
        raise ObliviateError("delete: give --ids FILE or --subjects A,B")
    recorded, artifact = read_json(run / "config.json"), read_json(run / "artifact.json")
    if recorded.get("world"):
        ref = WorldRef(**recorded["world"])
        items = world_training_items(_world(ref), _world(ref).splits["trained"])
    elif recorded.get("train_data"):
        from obliviate.data import load_items

        items = list(load_items(recorded["train_data"], "auto"))
    else:
        raise ObliviateError(f"{run}/config.json: records neither a world nor the training data")
    base, tok = load_model(artifact["base_model"], device="cpu")
    ensemble = S3TEnsemble.load(run / ENSEMBLE_DIR, base, tok, items)
    chosen = list(ids or []) + [item_id(it) for it in items
                                if subjects and it.subject in subjects and item_id(it) in ensemble.items]
    if not chosen:
        raise ObliviateError(f"delete: no item of subject(s) {', '.join(subjects or [])} is in the ensemble")
    ensemble.config = S3TConfig(**{**ensemble.config.model_dump(), "retrain": retrain})
    mark_out_dir(out)
    t0 = time.perf_counter()
    ensemble.delete(chosen, retrain=retrain, log_dir=out, progress=progress)
    ensemble.save(out / ENSEMBLE_DIR)
    summary = {"deletion": ensemble.last_deletion, "seconds": time.perf_counter() - t0, "from_run": str(run)}
    write_intervention_artifact(out, artifact["base_model"], "s3t", "sharded_ensemble")
    write_config(out, {**{k: v for k, v in recorded.items() if k not in ("command", "versions")},
                       "method_config": ensemble.config.model_dump(), "unlearn": summary})
    return summary
