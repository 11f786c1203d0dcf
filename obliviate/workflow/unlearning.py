"""Unlearning as a workflow: one method, one model, one forget set, into a self-describing run directory."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.errors import ObliviateError, ObliviateWarning
from obliviate.workflow.specs import WorldRef, load_model_spec, parse_world_spec

if TYPE_CHECKING:
    from obliviate.models.prompts import PromptFormat


def peak_memory_mb() -> float:
    """Peak memory of this process: torch's peak allocation on a GPU, else the peak resident set size."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warn(line: str) -> None:
    warnings.warn(line, ObliviateWarning, stacklevel=3)


def load_train_sets(forget: str | None, retain: str | None, ref: WorldRef | None, mapping: list[str],
                    strict: bool, log: Callable[[str], None] = _warn):
    """(forget items, retain items): the given files (QA items, or text passages when a file has a
    `text` column and no `question`), else the world's training split."""
    from obliviate.data import check_duplicates, check_forget_set, check_overlap, load_items, parse_mapping

    cols = parse_mapping(mapping) if mapping else None
    if forget is None:
        if ref is None:
            raise ObliviateError("--forget is required unless the model is world:PRESET")
        from obliviate.world import get_world

        world = get_world(ref.preset, ref.seed)
        return world.forget_train(ref.split), world.retain_train(ref.split)
    forget_items = load_items(forget, "auto", cols)
    check_forget_set(forget_items, forget)
    retain_items = load_items(retain, "auto", cols) if retain else []
    for line in [*check_duplicates(forget_items, forget, strict),
                 *(check_duplicates(retain_items, retain, strict) if retain else [])]:
        log(line)
    for line in check_overlap(forget_items, retain_items, forget, retain or "", strict=strict):
        log(line)
    return forget_items, retain_items


def _resolvable(spec: str) -> str:
    """A model spec that resolves from any directory: a local path made absolute, a hub name as it is."""
    path = Path(str(spec))
    return str(path.resolve()) if path.exists() else str(spec)


def chunk_train_sets(tokenizer, forget: list, retain: list, config) -> tuple[list, list, dict[str, dict[str, int]]]:
    """Text passages longer than the method's `max_length` split into chunks (`train.data.chunk_passages`).

    Returns (forget, retain, {"forget": {"passages": n, "chunks": m}, ...}) with an entry only for a
    set where a passage was split; methods without `max_length` get their items unchanged.
    """
    from obliviate.train.data import chunk_passages

    max_length = getattr(config, "max_length", None)
    if not max_length:
        return forget, retain, {}
    report: dict[str, dict[str, int]] = {}
    out = []
    for name, items in (("forget", forget), ("retain", retain)):
        chunked, counts = chunk_passages(tokenizer, items, max_length)
        if counts["passages"]:
            report[name] = counts
        out.append(chunked)
    return out[0], out[1], report


def ref_override(method: str, ref: str) -> str:
    """The `ref=MODE` override for a method's reference model, checked (`unlearn --ref`)."""
    from typing import get_args

    from obliviate.methods import get_method
    from obliviate.train.reference import RefMode

    if ref not in get_args(RefMode):
        raise ObliviateError(f"--ref {ref}: choose one of {', '.join(get_args(RefMode))}")
    if "ref" not in get_method(method).Config.model_fields:
        raise ObliviateError(f"--ref: method '{method}' uses no reference model")
    return f"ref={ref}"


def run_unlearn(method: str, model_spec: str, out: Path, forget: str | None = None, retain: str | None = None,
                split: str = "forget10", overrides: list[str] | None = None, config_file: Path | None = None,
                mapping: list[str] | None = None, strict: bool = False, resume: bool = False,
                progress: bool = True, lora: str | None = None, merge: bool = False,
                log: Callable[[str], None] = _warn, fmt: PromptFormat | None = None, device: str = "auto",
                dtype: str = "auto", data: str | None = None, defaults: str = "auto",
                info: Callable[[str], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Unlearn `model_spec` with `method` into run directory `out`; returns the method's summary.

    `fmt` is the prompt format training uses (default: the model's, plain unless a run recorded one);
    the run records it, so evaluating and attacking the run reuse it. `defaults` picks the method's
    paper or world defaults (auto: world for `world:` models, paper otherwise; `methods/defaults.py`);
    `info` receives the line saying which, and what differs from the paper. `out` is checked before
    any work: a non-empty directory this tool did not write is refused unless `force`.
    """
    from obliviate.config import build_config, parse_overrides, read_config_file
    from obliviate.data import data_hash
    from obliviate.io import mark_out_dir
    from obliviate.methods import FinetuneMethod, get_method
    from obliviate.methods.defaults import default_values, describe_defaults, differences_from_paper, resolve_mode
    from obliviate.models.loading import hub_name, save_model
    from obliviate.models.lora import apply_lora, parse_lora, save_adapter
    from obliviate.runs import check_run_out, write_artifact, write_config, write_intervention_artifact

    out = check_run_out(out, force)
    cls = get_method(method)
    mode = resolve_mode(defaults, model_spec)
    values = default_values(cls, mode)
    chosen = {**(read_config_file(config_file, method) if config_file else {}), **parse_overrides(overrides or [])}
    values.update(chosen)
    config = build_config(cls.Config, values, source=str(config_file) if config_file and not overrides else "--set")
    if info is not None:
        info(describe_defaults(cls, mode, config))
    ref = parse_world_spec(model_spec, split)
    if cls.needs_chat and ref is not None:
        raise ObliviateError(f"{method} does not apply to the built-in world's models: it needs an instruction model "
                             "with a chat template (e.g. --model gguf:smollm2 --prompt chat)")
    spec = None
    if data is not None:
        from obliviate.workflow import data as specs

        spec = specs.parse_data_spec(data)
        if forget is not None:
            raise ObliviateError("give --data or --forget/--retain, not both")
        if spec.benchmark == "world":
            split, spec = spec.name, None
            ref = parse_world_spec(model_spec, split)
    if getattr(cls, "exact", False) and ref is not None:
        if spec is not None or forget is not None or retain is not None or lora:
            raise ObliviateError(f"{method} on a world model trains on the world's own data from its base model; "
                                 "give no --forget, --retain, --data or --lora")
        from obliviate.workflow.exact import run_exact_world  # trains from the world's base model (exact.py)

        return run_exact_world(method, config, ref, out, progress)
    if spec is not None:
        forget_items, retain_items = specs.train_sets(spec)
    else:
        forget_items, retain_items = load_train_sets(forget, retain, ref, mapping or [], strict, log)
    from obliviate.methods import check_item_kinds

    check_item_kinds(cls, forget_items, forget or (str(spec) if spec else "the forget set"), config)
    check_item_kinds(cls, retain_items, retain or (str(spec) if spec else "the retain set"), config)
    hashes = {"forget": data_hash(forget_items), "retain": data_hash(retain_items)}  # of the data as given
    instance = cls(config)
    if isinstance(instance, FinetuneMethod) and instance.uses_retain and not retain_items:
        given = f"{spec} has no retain set" if spec is not None else "no --retain set is given"
        if "retain_loss" not in cls.Config.model_fields or "retain_loss" in chosen:
            raise ObliviateError(f"{method} trains on a retain set too, and {given}: give one, or use a "
                                 "forget-only method such as ga")
        # the paper's forget-only variant (plain NPO, MUSE's `npo`), said in one line
        config = config.model_copy(update={"retain_loss": "none"})
        instance = cls(config)
        log(f"{method}: {given}, so it trains without its retain term (retain_loss=none)")
    lora_spec = parse_lora(lora) if lora else None
    inference_time = getattr(cls, "produces", "weights") == "intervention"
    if inference_time and lora_spec is not None:
        raise ObliviateError(f"--lora does not apply to {method}: it leaves the weights frozen")
    model, tok, ref = load_model_spec(model_spec, split, progress=progress, fmt=fmt, device=device, dtype=dtype)
    from obliviate.models.prompts import format_of

    fmt = format_of(tok)
    base_path = _resolvable(getattr(model, "name_or_path", None) or model.config._name_or_path)
    base_name = hub_name(model_spec, base_path)  # a hub model is recorded by its hub name, not a cache path
    if lora_spec is not None:
        model = apply_lora(model, lora_spec)
    forget_items, retain_items, chunks = chunk_train_sets(tok, forget_items, retain_items, config)
    mark_out_dir(out)
    instance.keep_checkpoint = True  # the last checkpoint stays until the final weights are durable (below)
    instance.force_resume = force  # --resume --force: a checkpoint of another config is resumed all the same
    t0 = time.perf_counter()
    summary = instance.unlearn(model, tok, forget_items, retain_items, out, progress=progress, resume=resume)
    seconds = time.perf_counter() - t0
    summary = {**summary, "seconds": seconds, "peak_memory_mb": peak_memory_mb()}
    if chunks:
        summary["chunks"] = chunks
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return summary  # under `accelerate launch`, the main process writes the run
    if inference_time:  # unlearn() saved out/intervention; the run points at the untouched base model
        write_intervention_artifact(out, base_name, method, summary["intervention"])
    elif lora_spec is not None and not merge:
        save_adapter(model, tok, out / "adapter", base_name)
        write_artifact(out, "adapter", path="adapter", base_model=base_name, method=method)
    else:
        if lora_spec is not None:
            model = model.merge_and_unload()
        save_model(model, tok, out / "model")
        write_artifact(out, "weights", path="model", method=method)
    write_config(out, {"method": method, "method_config": config.model_dump(), "model": _resolvable(model_spec),
                       "world": ref.as_dict() if ref else None, "forget": forget, "retain": retain,
                       "lora": lora, "merged": merge, "prompt_format": fmt.state(),
                       "data": specs.record(spec) if spec is not None else None,
                       "defaults": mode, "differs_from_paper": differences_from_paper(cls, config),
                       "split": split, "mapping": list(mapping or []), "strict": strict, "base_model": base_name,
                       "data_hashes": hashes,
                       "unlearn": summary})
    if isinstance(summary.get("classifier"), dict):  # eco, guard and gated prefix methods
        from obliviate.runs import write_classifier_report

        write_classifier_report(out, summary["classifier"])
    from obliviate.train.loop import drop_checkpoint

    drop_checkpoint(out)  # the run is complete and on disk: nothing to resume any more
    return summary
