"""General utility on real models: delegate benchmarks to EleutherAI's lm-evaluation-harness.

lm-evaluation-harness (Gao et al., "A framework for few-shot language model evaluation",
doi:10.5281/zenodo.5371628; the optional extra `pip install 'obliviate[lm-eval]'`) holds the
standard general-capability benchmarks: MMLU, ARC, HellaSwag, ... `run_lm_eval` hands it the model
obliviate already loaded, so what is scored is exactly what the qa suite scores: a plain or PEFT
model, or a frozen model under an intervention (`InterventionModel`)::

    metrics = run_lm_eval(model, tokenizer, ["mmlu", "arc_easy"], out_dir=run_dir)

The model goes through the harness's own HF backend, `HFLM(pretrained=model, tokenizer=tokenizer)`,
and `simple_evaluate`. Multiple-choice tasks score each choice by its log-likelihood,
log p(choice | context) = Σ_t log p(x_t | x_<t) over the choice's tokens, from `model(input_ids).logits`;
`acc` picks the most likely choice, `acc_norm` the most likely per byte. Generation tasks call
`model.generate`.

The harness expects a `PreTrainedModel`. An `InterventionModel` keeps the LM's interface but not
two details the harness relies on, which `HarnessModel` supplies: `tie_weights()` (a no-op: the
frozen model's weights are as loaded), and stopping criteria that answer one bool for the whole
batch (the harness's stop-sequence criterion), which the wrapper's `generate` takes per row.

The result is {task: {metric: value, metric_stderr: value, ..., "samples": n}}, with lm-eval's
"metric,filter" keys read as "metric" for its default filter ("none") and "metric/filter" otherwise;
`samples` is how many documents were scored (fewer than the task holds under `limit`). It is written
atomically to `out_dir/lm_eval.json`.

Nothing runs remote code unless `--trust-remote-code` is given: `trust_remote_code` is off, tasks
that execute generated code are refused, and so is an `--lm-eval-include` directory whose YAML names
a `!function` (the harness would import and run the Python file beside it).
Tasks load their datasets with `datasets` (from the hub on first use, then its cache);
a local task is a YAML file in `include_path` whose `dataset_kwargs.data_files` name local files
(absolute paths: `datasets` resolves relative ones from the working directory).
"""

from __future__ import annotations

import difflib
import logging
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import write_json

RESULTS_FILE = "lm_eval.json"
INSTALL_HINT = "pip install 'obliviate[lm-eval]'"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}") from None
    return lm_eval, HFLM, TaskManager


class HarnessModel(nn.Module):
    """A model under an intervention, with the two things `HFLM` needs that `InterventionModel` lacks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    @property
    def config(self):
        return self.inner.config

    @property
    def generation_config(self):
        return self.inner.generation_config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def name_or_path(self) -> str:
        return self.inner.name_or_path

    def tie_weights(self) -> None:
        """Nothing to tie: the frozen model's weights are as it was loaded."""

    def forward(self, *args: Any, **kwargs: Any):
        return self.inner(*args, **kwargs)

    def generate(self, *args: Any, stopping_criteria=None, **kwargs: Any) -> torch.Tensor:
        """The wrapper's `generate`; the harness's criteria are combined into one that answers per row."""
        if stopping_criteria:
            from transformers import StoppingCriteriaList

            # StoppingCriteriaList(...)(ids, scores) is a (B,) bool tensor, whatever its members return.
            stopping_criteria = [StoppingCriteriaList(stopping_criteria)]
        return self.inner.generate(*args, stopping_criteria=stopping_criteria, **kwargs)


def harness_model(model: nn.Module) -> nn.Module:
    """`model` as the harness's HF backend can drive it (see the module docstring)."""
    from obliviate.interventions.model import InterventionModel

    return HarnessModel(model) if isinstance(model, InterventionModel) else model


def task_list(spec: str | list[str]) -> list[str]:
    """Task names from "mmlu,arc_easy" (or a list), blanks dropped; at least one."""
    names = spec.split(",") if isinstance(spec, str) else spec
    tasks = [name.strip() for name in names if name.strip()]
    if not tasks:
        raise ObliviateError("--lm-eval: give at least one task name, e.g. --lm-eval mmlu,arc_easy")
    return tasks


def check_no_functions(include_path: Path) -> None:
    """Refuse task YAML files naming a `!function` (Python the harness would run), unless remote code is allowed."""
    from obliviate.models.loading import remote_code_allowed

    if remote_code_allowed():
        return
    for path in sorted([*include_path.rglob("*.yaml"), *include_path.rglob("*.yml")]):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise ObliviateError(f"{path}: cannot read it ({exc.strerror})") from None
        for number, line in enumerate(lines, 1):
            if "!function" in line.split("#", 1)[0]:
                raise ObliviateError(f"{path}:{number}: a !function runs the Python file it names; it is refused "
                                     "unless you pass --trust-remote-code")


def load_task_manager(tasks: list[str], include_path: str | Path | None = None):
    """The harness's TaskManager, after checking that every task exists.

    When every task is a task of `include_path`, only that directory is indexed (indexing the
    harness's thousands of built-in tasks takes seconds).
    """
    _, _, TaskManager = _import_lm_eval()
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ObliviateError(f"--lm-eval-include {include_path}: not a directory of task YAML files")
        check_no_functions(Path(include_path))
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in local.all_subtasks for name in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [name for name in tasks if name not in manager.all_tasks and not Path(name).is_file()]
    if unknown:
        close = sorted({m for name in unknown for m in difflib.get_close_matches(name, manager.all_tasks, n=3)})
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ObliviateError(
            f"unknown lm-eval task(s): {', '.join(unknown)}{hint}; list the harness's tasks with `lm-eval ls tasks`, "
            "or give a directory of task YAML files with --lm-eval-include DIR")
    return manager


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hold back a logger's warnings (the harness warns that it was given a model, not a name)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def evaluate_with_harness(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    log_samples: bool = False,
    manager=None,
) -> dict[str, Any]:
    """The harness's own result dict for `model` on `tasks`: `results`, `n-samples`, and `samples`
    (every request and the model's response) when `log_samples`.

    `manager`: a TaskManager from `load_task_manager(tasks, include_path)`, when already built.
    """
    lm_eval, HFLM, _ = _import_lm_eval()
    tasks = task_list(tasks)
    manager = manager if manager is not None else load_task_manager(tasks, include_path)
    with _quiet("lm_eval.models.huggingface"):
        lm = HFLM(pretrained=harness_model(model), tokenizer=tokenizer, batch_size=batch_size,
                  trust_remote_code=False)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                          task_manager=manager, log_samples=log_samples,
                                          confirm_run_unsafe_code=False)
    except (KeyError, FileNotFoundError, ConnectionError) as exc:  # a task or its dataset that cannot be loaded
        raise ObliviateError(f"lm-eval could not load {', '.join(tasks)}: {_first_line(exc)}") from None
    except ValueError as exc:
        if "unsafe" not in str(exc):
            raise
        raise ObliviateError(f"lm-eval: {_first_line(exc).split('. ')[0]} (tasks that run code the model wrote "
                             "are not allowed)") from None
    if results is None:  # only on a non-zero rank of a distributed launch
        raise ObliviateError("lm-eval returned no results (run it in a single process)")
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str() is quoted
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # lm-eval's "N/A" stderr of metrics it cannot bootstrap
    return float(value)


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {metric: value, metric_stderr: value, "samples": n}} from the harness's result dict."""
    out: dict[str, dict[str, Any]] = {}
    counts = results.get("n-samples", {})
    for task, values in results.get("results", {}).items():
        row: dict[str, Any] = {}
        for key, value in values.items():
            metric, sep, filt = key.partition(",")
            if not sep:
                continue  # "alias", "name", ...
            row[metric if filt == "none" else f"{metric}/{filt}"] = _number(value)
        if task in counts:
            row["samples"] = int(counts[task].get("effective", counts[task].get("original", 0)))
        out[task] = row
    return out


def run_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    out_dir: Path | None,
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    manager=None,
) -> dict[str, dict[str, Any]]:
    """Run lm-evaluation-harness `tasks` on the loaded `model`; write `out_dir/lm_eval.json`.

    Returns {task: {metric: value, metric_stderr: value, "samples": n}} (see the module docstring).
    """
    metrics = summarise(evaluate_with_harness(model, tokenizer, tasks, limit=limit, batch_size=batch_size,
                                              include_path=include_path, num_fewshot=num_fewshot,
                                              manager=manager))
    if out_dir is not None:
        write_json(Path(out_dir) / RESULTS_FILE, metrics)
    return metrics
