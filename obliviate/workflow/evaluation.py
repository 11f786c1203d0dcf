"""The qa suite as a workflow: the sets to score, the oracle to compare with, cached world evaluations.

`evaluate` scores one loaded model and writes `results.json` and `items.jsonl`; `evaluate_target`
resolves a target spec, its sets and its oracle first, the way `obliviate eval` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.data.schema import QAItem
from obliviate.errors import DataError, ObliviateError
from obliviate.io import check_out_dir, read_json, read_jsonl, stable_hash, write_json, write_jsonl
from obliviate.workflow.specs import WorldRef, load_model_spec, parse_world_spec, world_models


@dataclass
class EvalSets:
    forget: list[QAItem]
    retain: list[QAItem]
    utility: dict[str, list[QAItem]] = field(default_factory=dict)
    holdout: list[QAItem] | None = None

    def hashes(self) -> dict[str, str]:
        from obliviate.data import data_hash

        out = {"forget": data_hash(self.forget), "retain": data_hash(self.retain)}
        out.update({f"utility/{k}": data_hash(v) for k, v in self.utility.items()})
        if self.holdout:
            out["holdout"] = data_hash(self.holdout)
        return out


def world_eval_sets(ref: WorldRef, max_retain: int | None = None) -> EvalSets:
    """The world's evaluation sets; `max_retain` keeps a seeded subset of the retain set (as `bench --max-retain`)."""
    from obliviate.world import get_world

    world = get_world(ref.preset, ref.seed)
    return EvalSets(world.forget_set(ref.split), world.retain_set(ref.split, max_items=max_retain),
                    world.utility_sets(), world.holdout_set())


# -- evaluation ---------------------------------------------------------------------------------------

def eval_cache_dir() -> Path:
    from obliviate.world import obliviate_home

    return obliviate_home() / "evals"


def evaluate(
    model,
    tokenizer,
    sets: EvalSets,
    out_dir: Path | None,
    oracle_forget_tr: np.ndarray | None = None,
    batch_size: int = 32,
    generate: bool = True,
    config: dict[str, Any] | None = None,
    preset: str | None = None,
    ou_ref_auc: float | None = None,
    progress: bool = False,
    name: str | None = None,
    qa_options: dict[str, Any] | None = None,
    keep_generations: bool = True,
) -> dict[str, Any]:
    """Run the qa suite; write results.json and items.jsonl into `out_dir` (atomically).

    `qa_options` go to `run_qa_suite` as they are: `reference_model`, `oracle_mia_auc`, `gradnorm`,
    `fluency_classifier`. Without `keep_generations`, the forget set's generations (the model's answers
    to the questions it was to forget: forgotten text, when unlearning failed) are left out of
    items.jsonl (docs/privacy.md).

    With `preset="open-unlearning"` the payload also holds open-unlearning's seven headline keys
    ("open_unlearning"; privleak against `ou_ref_auc`, the oracle's Min-K AUC). With `progress`, a
    display per set and phase, headed by `name` (the model or run; default: `out_dir`'s name).
    """
    from obliviate.evals import open_unlearning as ou
    from obliviate.evals.qa import run_qa_suite
    from obliviate.runs import versions

    t0 = time.perf_counter()
    result = run_qa_suite(model, tokenizer, sets.forget, sets.retain, sets.utility, sets.holdout,
                          oracle_forget_tr=oracle_forget_tr, batch_size=batch_size, generate=generate,
                          progress=progress, name=name or (Path(out_dir).name if out_dir is not None else "eval"),
                          **(qa_options or {}))
    payload = {"suite": "qa", "aggregates": result.aggregates, "eval_seconds": time.perf_counter() - t0,
               "data_hashes": sets.hashes(), "versions": versions(), **(config or {})}
    if preset == ou.PRESET:
        payload["preset"] = preset
        payload["open_unlearning"] = ou.headline(result.aggregates, result.ou_items(), ou_ref_auc)
    items = result.items()
    if not keep_generations:
        items = [{k: v for k, v in row.items() if k != "generation"} if row.get("set") == "forget" else row
                 for row in items]
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "items.jsonl", items)
        write_json(Path(out_dir) / "results.json", payload)
    payload["_forget_truth_ratios"] = result.forget_truth_ratios()
    payload["_ou_min_k_auc"] = ou.headline(result.aggregates, result.ou_items(), None)["min_k_auc"]
    return payload


def cached_world_eval(ref: WorldRef, role: str, model_dir: Path, sets: EvalSets, oracle_tr=None,
                      progress: bool = False) -> dict[str, Any]:
    """Evaluate a world model (target/oracle) once and cache results next to the world cache."""
    from obliviate.models.loading import load_model

    key = stable_hash({"model": str(model_dir), "data": sets.hashes(), "oracle": None if oracle_tr is None
                       else stable_hash(np.nan_to_num(oracle_tr).round(6).tolist())})
    out = eval_cache_dir() / f"{ref.preset}-{ref.seed}-{ref.split}-{role}-{key}"
    if (out / "results.json").exists():
        try:
            payload = read_json(out / "results.json")
            rows = read_jsonl(out / "items.jsonl")
            payload["_forget_truth_ratios"] = np.array([r["truth_ratio"] for r in rows if r["set"] == "forget"])
            return payload
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry: evaluated again below, and rewritten

    model, tok = load_model(model_dir)
    return evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, config={"role": role}, progress=progress,
                    name=f"{ref.preset}@{ref.seed} {role}")


def oracle_truth_ratios(spec: str | Path) -> np.ndarray:
    """Forget-set truth ratios of an oracle given as an eval/run directory with items.jsonl."""
    path = Path(spec)
    items = path / "items.jsonl" if path.is_dir() else path
    if not items.is_file():
        raise ObliviateError(f"{spec}: no items.jsonl with the oracle's per-item results")
    from obliviate.evals.qa import oracle_truth_ratios_from_items

    rows = read_jsonl(items)
    for number, row in enumerate(rows, 1):
        if "set" not in row or (row["set"] == "forget" and not isinstance(row.get("truth_ratio"), int | float)):
            raise DataError(items, "expected 'set' and a numeric 'truth_ratio', as `obliviate eval` writes them; "
                                   "re-evaluate the oracle", number)
    if not any(row["set"] == "forget" for row in rows):
        raise DataError(items, "no forget-set rows; re-evaluate the oracle on the forget set")
    return oracle_truth_ratios_from_items(rows)


def load_eval_sets(target_ref: WorldRef | None, forget: str | None, retain: str | None,
                   utility: list[str] | None = None, holdout: str | None = None,
                   mapping: list[str] | None = None) -> EvalSets:
    """The qa suite's sets: the given files (forget, retain, NAME=PATH utility sets, holdout), else the world's."""
    from obliviate.data import load_items, parse_mapping

    if forget is None:
        if target_ref is None:
            raise ObliviateError("--forget and --retain are required unless the model comes from the world")
        return world_eval_sets(target_ref)
    cols = parse_mapping(mapping) if mapping else None
    if retain is None:
        raise ObliviateError("--retain is required with --forget")
    util = {}
    for spec in utility or []:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ObliviateError(f"--utility {spec!r}: expected NAME=PATH")
        util[name] = load_items(path, "qa", cols)
    return EvalSets(load_items(forget, "qa", cols), load_items(retain, "qa", cols), util,
                    load_items(holdout, "qa", cols) if holdout else None)


def resolve_oracle(oracle: str | None, ref: WorldRef | None, sets: EvalSets, world_sets: bool,
                   split: str = "forget10", progress: bool = True, fmt=None
                   ) -> tuple[np.ndarray | None, float | None, dict[str, float] | None]:
    """(the oracle's forget truth ratios, its open-unlearning Min-K AUC, its membership AUC per attack):
    from an eval dir's items.jsonl, by scoring an oracle model, or (for the world's own sets) from the
    world's cached oracle evaluation; (None, None, None) without an oracle."""
    if oracle is not None:
        if Path(oracle).is_dir() and (Path(oracle) / "items.jsonl").exists():
            from obliviate.evals.qa import oracle_mia_aucs_from_items

            rows = read_jsonl(Path(oracle) / "items.jsonl")
            return oracle_truth_ratios(oracle), oracle_ou_auc(oracle), oracle_mia_aucs_from_items(rows) or None
        omodel, otok, _ = load_model_spec(oracle, split, progress=False, fmt=fmt)
        return oracle_scores(omodel, otok, sets)
    if ref is not None and world_sets:
        models = world_models(ref, which=("target", "oracle"), progress=progress)
        tr = cached_world_eval(ref, "oracle", models.oracle, sets, progress=progress)["_forget_truth_ratios"]
        return tr, None, None
    return None, None, None


def oracle_scores(model, tokenizer, sets: EvalSets, batch_size: int = 32
                  ) -> tuple[np.ndarray, float | None, dict[str, float] | None]:
    """What forget quality and the PrivLeaks need of an oracle model, and no more: its forget truth ratios,
    its open-unlearning Min-K AUC and its membership AUC per attack (forget against holdout), without
    generation or the retain sets."""
    from obliviate import metrics as M
    from obliviate.evals.open_unlearning import min_k_auc
    from obliviate.evals.qa import score_set

    forget = score_set(model, tokenizer, sets.forget, "forget", "forget", batch_size=batch_size, generate=False)
    if not sets.holdout:
        return forget.truth_ratio, None, None
    holdout = score_set(model, tokenizer, sets.holdout, "holdout", "holdout", batch_size=batch_size, generate=False)
    aucs = {attack: float(M.mia_auc(forget.mia[attack], holdout.mia[attack])["auc"]) for attack in forget.mia}
    return forget.truth_ratio, min_k_auc(forget.ou["min_k"], holdout.ou["min_k"]), aucs


def resolve_oracle_truth_ratios(oracle: str | None, ref: WorldRef | None, sets: EvalSets, world_sets: bool,
                                split: str = "forget10", progress: bool = True, fmt=None) -> np.ndarray | None:
    """The oracle's forget truth ratios (see `resolve_oracle`)."""
    return resolve_oracle(oracle, ref, sets, world_sets, split, progress, fmt)[0]


def oracle_ou_auc(path: str | Path) -> float | None:
    """The open-unlearning Min-K AUC of an evaluated oracle directory (None for older items.jsonl)."""
    from obliviate.evals.open_unlearning import min_k_auc

    rows = read_jsonl(Path(path) / "items.jsonl")
    scores = {role: np.array([r["ou_min_k"] for r in rows if r.get("set") == role and "ou_min_k" in r])
              for role in ("forget", "holdout")}
    if not all(len(v) for v in scores.values()):
        return None
    return min_k_auc(scores["forget"], scores["holdout"])


def _run_data(target: str) -> str | None:
    """The data spec a run recorded (`unlearn --data`), if any."""
    from obliviate.runs import is_run_dir

    config = Path(target) / "config.json"
    return read_json(config).get("data") if is_run_dir(target) and config.is_file() else None


def evaluate_target(target: str, forget: str | None = None, retain: str | None = None,
                    utility: list[str] | None = None, holdout: str | None = None, oracle: str | None = None,
                    split: str = "forget10", world: str | None = None, out: Path | None = None,
                    mapping: list[str] | None = None, generate: bool = True,
                    progress: bool = True, fmt=None, device: str = "auto", dtype: str = "auto",
                    batch_size: int = 32, data: str | None = None, legacy: bool = False,
                    preset: str | None = None, reference_model: str | None = None,
                    gradnorm: bool = False, keep_generations: bool = False) -> dict[str, Any]:
    """Load `target` (any model spec), score it with the qa suite against its oracle, write the results.

    `reference_model` (a model spec with the target's tokenizer) adds the reference-model membership
    attack; `gradnorm` the GradNorm attack (a backward pass per item). With an oracle and a holdout set,
    each attack's PrivLeak is reported against the oracle's AUC (TOFU's PrivLeak).

    The sets: `data` (a data spec such as `tofu:forget10@DIR`; a run's recorded spec by default), else
    the `forget`/`retain`/`utility`/`holdout` files, else the target's world. Returns the results payload
    (`aggregates`, `eval_seconds`, `data_hashes`, ...); the results go to `out`, which defaults to the
    target when it is a run directory. `fmt` (a PromptFormat) overrides the prompt format (a run's own,
    else plain); the oracle is scored in the same format. The forget set's generations are written to
    items.jsonl only with `keep_generations` (they may hold the text to forget).
    """
    from obliviate.models.prompts import format_of
    from obliviate.runs import is_run_dir
    from obliviate.workflow import data as specs

    if out is None and not is_run_dir(target):
        raise ObliviateError("--out is required when the target is not a run directory")
    out = Path(target) if out is None else check_out_dir(out, force=True)  # a file, or inside one: refused now
    spec = specs.parse_data_spec(data) if data else None
    if spec is None and forget is None and (recorded := _run_data(target)):
        spec = specs.parse_data_spec(recorded)
    if spec is not None and forget is not None:
        raise ObliviateError("give --data or --forget/--retain, not both")
    if spec is not None and spec.benchmark == "world":
        split, spec = spec.name, None
    sets = specs.eval_sets(spec, legacy) if spec is not None else None  # bad data fails before the model loads
    model, tok, ref = load_model_spec(target, split, progress=progress, fmt=fmt, device=device, dtype=dtype)
    fmt = format_of(tok)
    if world is not None:
        ref = parse_world_spec(f"world:{world}", split)
    world_sets = sets is None and forget is None
    if sets is None:
        sets = load_eval_sets(ref, forget, retain, utility, holdout, mapping)
    oracle_tr, oracle_auc, oracle_mia = resolve_oracle(oracle, ref, sets, world_sets=world_sets, split=split,
                                                       progress=progress, fmt=fmt)
    qa_options: dict[str, Any] = {"gradnorm": gradnorm, "oracle_mia_auc": oracle_mia}
    if reference_model is not None:
        qa_options["reference_model"] = load_model_spec(reference_model, split, progress=False, fmt=fmt)[0]
    payload = evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, generate=generate, batch_size=batch_size,
                       config={"target": target, "oracle": oracle, "data": str(spec) if spec else None,
                               "prompt_format": fmt.state()}, preset=preset, ou_ref_auc=oracle_auc,
                       progress=progress, name=Path(target).name or str(target), qa_options=qa_options,
                       keep_generations=keep_generations)
    payload.pop("_forget_truth_ratios")
    payload.pop("_ou_min_k_auc")
    if spec is not None and spec.benchmark == "rwku":  # RWKU's own table: ROUGE-L recall per probe level
        payload["rwku"] = specs.rwku_table(sets, read_jsonl(out / "items.jsonl"))
        write_json(out / "results.json", payload)
    return payload
