"""The other suites as workflows: text (MUSE-style), labels (the review task) and lm-evaluation-harness.

Text suite data, in order of precedence: MUSE-format data (a local copy or a hub name), else the
world the target comes from (or `world=PRESET[@SEED]`). Its PrivLeak oracle is a model spec, a
directory with an earlier `text_items.jsonl`, `auc=VALUE` (a published AUC), or by default the
world's exact-retrain oracle. The labels suite takes its task from `reviews:PRESET[@SEED][/KIND]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obliviate.errors import ObliviateError
from obliviate.workflow.specs import load_model_spec, parse_world_spec, world_models


def _refuse_unused(unused: dict[str, Any] | None, why: str) -> None:
    for flag, value in (unused or {}).items():
        if value:
            raise ObliviateError(f"{flag} is not used {why}")


def _out_dir(target: str, out: Path | None) -> Path:
    from obliviate.runs import is_run_dir

    if out is None and not is_run_dir(target):
        raise ObliviateError("--out is required when the target is not a run directory")
    return Path(target) if out is None else Path(out)


# -- text ----------------------------------------------------------------------------------------------

def text_oracle(spec: str | None, ref, data, cfg, split: str, progress: bool):
    """The oracle's side of PrivLeak (an OracleAUC), or None when there is no oracle."""
    from obliviate.evals.text import OracleAUC, oracle_from_items, privleak_oracle
    from obliviate.io import read_jsonl
    from obliviate.models.loading import load_model

    if spec is None:
        if ref is None:
            return None
        path = world_models(ref, which=("oracle",), progress=progress).oracle
        model, tok = load_model(path)
        return privleak_oracle(model, tok, data, cfg, source=str(path), progress=progress)
    if spec.startswith("auc="):
        try:
            auc = float(spec.removeprefix("auc="))
        except ValueError:
            auc = float("nan")
        if not 0 < auc <= 1:
            raise ObliviateError(f"--oracle {spec!r}: expected auc=VALUE with 0 < VALUE <= 1")
        return OracleAUC(auc, source=spec)
    items = Path(spec) / "text_items.jsonl"
    if items.is_file():
        return oracle_from_items(read_jsonl(items), source=str(items))
    model, tok, _ = load_model_spec(spec, split, progress=False)
    return privleak_oracle(model, tok, data, cfg, source=spec, progress=progress)


def evaluate_text_target(target: str, data: str | None = None, oracle: str | None = None, split: str = "forget10",
                         world: str | None = None, out: Path | None = None, generate: bool = True,
                         progress: bool = True, unused: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any], Any, Any]:
    """Score `target` with the text suite; returns (payload, the MUSE data, the oracle's AUC or None)."""
    from obliviate.data.adapters.muse import load_muse
    from obliviate.evals.text import TextSuiteConfig, evaluate_text, world_muse_data
    from obliviate.world import get_world

    _refuse_unused(unused, "by the text suite (MUSE-format data goes in --forget)")
    out = _out_dir(target, out)
    muse = load_muse(data) if data is not None else None  # bad data fails before any model loads
    model, tok, ref = load_model_spec(target, split, progress=progress)
    if world is not None:
        ref = parse_world_spec(f"world:{world}", split)
    if muse is None:
        if ref is None:
            raise ObliviateError("the text suite needs data: MUSE-format data with --forget, "
                                 "--world PRESET[@SEED], or a target from the world")
        muse = world_muse_data(get_world(ref.preset, ref.seed), ref.split)
        cfg = TextSuiteConfig(verbmem_max_new_tokens=None)  # continuations as long as the biographies'
    else:
        ref, cfg = None, TextSuiteConfig()  # MUSE data: no world oracle; MUSE's 128 new tokens
    oracle_auc = text_oracle(oracle, ref, muse, cfg, split, progress)
    payload, _ = evaluate_text(model, tok, muse, out, oracle_auc, cfg, generate, progress,
                               extra={"target": target, "oracle": oracle_auc.source if oracle_auc else None})
    return payload, muse, oracle_auc


# -- labels --------------------------------------------------------------------------------------------

def labels_task(target: str, world: str | None):
    """The review task to evaluate on: `world`, else the target's spec, else the run's config.json."""
    from obliviate.io import read_json
    from obliviate.world.reviews import ReviewsRef, parse_reviews_spec

    if world is not None:
        return parse_reviews_spec(world if world.startswith("reviews:") else f"reviews:{world}")
    ref = parse_reviews_spec(target)
    config = Path(target) / "config.json"
    if ref is None and config.is_file() and read_json(config).get("reviews"):
        ref = ReviewsRef(**read_json(config)["reviews"])
    if ref is None:
        raise ObliviateError("the labels suite needs the review task: --world reviews:PRESET[@SEED][/KIND]")
    return ref


def load_labels_model(spec: str, role: str = "target"):
    """(model, tokenizer) for `reviews:...` (the task's `role` model) or any other model spec."""
    from obliviate.models.loading import load_model
    from obliviate.world.review_models import build_review_models
    from obliviate.world.reviews import parse_reviews_spec

    ref = parse_reviews_spec(spec)
    if ref is None:
        model, tok, _ = load_model_spec(spec, progress=False)
        return model, tok
    models = build_review_models(ref.preset, ref.seed, ref.kind, which=(role,), progress=True)
    return load_model(getattr(models, role))


def evaluate_labels_target(target: str, world: str | None = None, oracle: str | None = None,
                           out: Path | None = None, unused: dict[str, Any] | None = None
                           ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Any]:
    """Score `target` with the labels suite, and the task's target and oracle beside it.

    Returns (payload, {column name: aggregates}, the task ref).
    """
    from obliviate.evals.labels import evaluate_labels, run_labels_suite
    from obliviate.world.reviews import get_reviews, parse_reviews_spec

    _refuse_unused(unused, "by the labels suite (the review task gives the sets)")
    ref = labels_task(target, world)
    out = _out_dir(target, out)
    sets = get_reviews(ref.preset, ref.seed).split(ref.kind).sets()
    model, tok = load_labels_model(target)
    payload = evaluate_labels(model, tok, sets, out, config={"target": target, "reviews": ref.as_dict()})
    columns = {Path(target).name or target: payload["aggregates"]}
    references = {} if parse_reviews_spec(target) else {"target": (str(ref), "target")}
    references["oracle"] = (oracle, "oracle") if oracle else (str(ref), "oracle")
    for name, (spec, role) in references.items():
        ref_model, ref_tok = load_labels_model(spec, role)
        columns[name] = run_labels_suite(ref_model, ref_tok, sets).aggregates
    payload["reference"] = {name: columns[name] for name in references}
    return payload, columns, ref


# -- lm-evaluation-harness -----------------------------------------------------------------------------

def evaluate_wmdp_target(target: str, data: str, limit: int | None = None, split: str = "forget10",
                         out: Path | None = None, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """WMDP-Bio, WMDP-Cyber and the MMLU subsets on `target` (`evals/wmdp.py`): the harness's tasks from
    the hub for `wmdp`, the same tasks over a local copy for `wmdp@PATH`."""
    from obliviate.evals.wmdp import tasks_for
    from obliviate.workflow.data import parse_data_spec, source

    spec = parse_data_spec(data)
    where = _out_dir(target, out)
    names, include = tasks_for(source(spec) if spec.path else None, where)
    return evaluate_lm_eval_target(target, ",".join(names), limit, include, None, split, where, progress)


def score_benchmark(model, tokenizer, data: str, out_dir: Path | None, generate: bool = True,
                    progress: bool = False) -> dict[str, Any]:
    """Score a loaded model on a benchmark its own suite reports with, other than the qa suite:
    `muse:...` with the text suite (no PrivLeak oracle), `wmdp[@PATH]` through lm-evaluation-harness.

    Returns a payload with `aggregates` ({metric: {"value": v, "higher_is_better": b}}), as the qa suite's.
    """
    from obliviate.workflow.data import parse_data_spec, source

    spec = parse_data_spec(data)
    if spec.suite == "text":
        from obliviate.data.adapters.muse import load_muse
        from obliviate.evals.text import evaluate_text

        payload, _ = evaluate_text(model, tokenizer, load_muse(source(spec)), out_dir, None, generate=generate,
                                   progress=progress, extra={"data": str(spec)})
        return payload
    if spec.suite == "lm_eval":
        import tempfile

        from obliviate.evals.lm_eval import run_lm_eval
        from obliviate.evals.wmdp import tasks_for

        with tempfile.TemporaryDirectory() as tmp:
            names, include = tasks_for(source(spec) if spec.path else None, Path(out_dir or tmp))
            metrics = run_lm_eval(model, tokenizer, names, out_dir, include_path=include)
        forget = ("wmdp_bio", "wmdp_cyber")  # hazardous knowledge: lower is better; the MMLU subsets: higher
        aggregates = {f"{task.removeprefix('obliviate_')}/acc": {  # local copies' tasks under the hub's names
            "value": row.get("acc"), "higher_is_better": not task.removeprefix("obliviate_").startswith(forget)}
            for task, row in metrics.items()}
        return {"suite": "lm_eval", "aggregates": aggregates, "lm_eval": metrics, "data": str(spec)}
    raise ObliviateError(f"--data {spec}: scored by the qa suite")


def evaluate_lm_eval_target(target: str, tasks: str, limit: int | None = None, include: Path | None = None,
                            fewshot: int | None = None, split: str = "forget10", out: Path | None = None,
                            progress: bool = True, unused: dict[str, Any] | None = None
                            ) -> tuple[dict[str, Any], Path]:
    """lm-evaluation-harness tasks on `target`; returns (metrics per task, the directory written to)."""
    from obliviate.evals.lm_eval import load_task_manager, run_lm_eval, task_list

    _refuse_unused(unused, "with --lm-eval (the harness's tasks bring their own data)")
    out = _out_dir(target, out)
    names = task_list(tasks)
    manager = load_task_manager(names, include)  # unknown tasks fail before any model loads
    model, tok, _ = load_model_spec(target, split, progress=progress)
    metrics = run_lm_eval(model, tok, names, out, limit=limit, include_path=include, num_fewshot=fewshot,
                          manager=manager)
    return metrics, out
