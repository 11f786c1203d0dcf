"""Run directories: every run describes itself.

    RUN/
      config.json     resolved config, command line, package versions, data hashes
      artifact.json   what the run produced and how to load it ({"kind": "weights", "path": "model"})
      model/          the unlearned weights (safetensors + tokenizer) for weight-editing methods
      intervention/   or, for inference-time methods, the intervention applied to the frozen base model
      results.json    aggregates with direction and 95% CIs
      classifier.json the prompt classifier's held-out error rates (methods that gate on one: eco, guard, ...)
      items.jsonl     per-item values
      train_log.jsonl per-step losses

`load_run_model` is the only place that knows how an artifact becomes a model, so evaluation and
attacks never need to know which kind of method produced a run.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from obliviate.errors import DataError, ObliviateError
from obliviate.io import DAMAGED, OUT_MARKER, check_out_dir, read_json, write_json
from obliviate.version import __version__

# The installed distributions whose versions change a run's numbers, recorded in every config.json.
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "numpy",
            "scipy", "scikit-learn", "rouge-score")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{distribution: version} of the installed packages; None for one not installed."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout obliviate runs from, or None when it is not installed from one."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def versions() -> dict[str, Any]:
    """obliviate's version (and git commit, from a checkout), Python, the platform and the package versions."""
    import torch
    import transformers

    return {
        "obliviate": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "packages": package_versions(),
    }


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """RUN/config.json: the command line, the versions and the run's resolved settings (`obliviate rerun` reads it)."""
    write_json(Path(run_dir) / "config.json", {"command": sys.argv, "versions": versions(), **config})


def write_artifact(run_dir: Path, kind: str, **info: Any) -> None:
    write_json(Path(run_dir) / "artifact.json", {"kind": kind, **info})


def write_intervention_artifact(run_dir: Path, base_model: str, method: str, intervention: str,
                                path: str = "intervention") -> None:
    """artifact.json of an inference-time run: the frozen base model and the saved intervention.

    The intervention itself (`Intervention.save`) is already in `run_dir/path`.
    """
    write_artifact(run_dir, "intervention", path=path, base_model=str(base_model), method=method,
                   intervention=intervention)


CLASSIFIER_REPORT = "classifier.json"


def write_classifier_report(run_dir: Path, report: dict[str, Any]) -> None:
    """classifier.json: a prompt classifier's threshold and held-out FNR/FPR (`fit_detector`'s report).

    The same report is the "classifier" entry of the unlearn summary in config.json.
    """
    write_json(Path(run_dir) / CLASSIFIER_REPORT, report)


# Files by which a directory is known as a run of this tool (`io.check_out_dir`): the marker every run
# writes first, an older run's artifact.json, a checkpoint left by a stopped run.
RUN_MARKERS = (OUT_MARKER, "artifact.json", "checkpoint", ".checkpoint.tmp", ".checkpoint.old")


RUN_SUBDIRS = ("model", "adapter", "intervention")  # directories a run replaces as a whole


def check_run_out(out: str | Path, force: bool = False) -> Path:
    """`--out` for a run: refused when a file, inside a file, or a non-empty directory not of this tool.

    With `force`, a directory not of this tool is written into, but a directory a run replaces as a
    whole (`RUN_SUBDIRS`) is never taken from it: such a name already there is refused.
    """
    out = check_out_dir(out, RUN_MARKERS, force)
    if out.is_dir() and not any((out / name).exists() for name in RUN_MARKERS):
        for name in RUN_SUBDIRS:
            if (out / name).exists():
                raise ObliviateError(f"--out {out}: its {name}/ was not written by this tool and a run would "
                                     "replace it; move it away, or give another directory")
    return out


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "artifact.json").is_file()


def recorded_format(run_dir: str | Path):
    """The prompt format a run was made with (config.json's "prompt_format"), or None for older runs."""
    from obliviate.models.prompts import PromptFormat

    config = Path(run_dir) / "config.json"
    recorded = read_json(config) if config.is_file() else {}
    if not isinstance(recorded, dict):
        raise DataError(config, f"expected a JSON object; {DAMAGED}")
    state = recorded.get("prompt_format")
    try:
        return PromptFormat.from_state(state) if state else None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(config, f"'prompt_format' is not one this tool writes; {DAMAGED}") from None


def load_run_model(run_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) for any run, whatever kind of method produced it, in the run's prompt format."""
    from obliviate.models.prompts import use_format

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ObliviateError(f"{run_dir}: not a run directory (no artifact.json)")
    model, tokenizer = _load_artifact(run_dir, device, dtype)
    fmt = recorded_format(run_dir)
    if fmt is not None:
        use_format(tokenizer, fmt)
    return model, tokenizer


def _load_artifact(run_dir: Path, device: str, dtype: str):
    from obliviate.models.loading import load_model
    path = run_dir / "artifact.json"
    artifact = read_json(path)
    if not isinstance(artifact, dict):
        raise DataError(path, f"expected a JSON object; {DAMAGED}")
    kind = artifact.get("kind")
    if kind in ("adapter", "intervention") and not isinstance(artifact.get("base_model"), str):
        raise DataError(path, f"a run of kind '{kind}' names no base_model; {DAMAGED}")
    if kind == "weights":
        return load_model(run_dir / artifact.get("path", "model"), device=device, dtype=dtype)
    if kind == "adapter":
        from peft import PeftModel

        base, tokenizer = load_model(artifact["base_model"], device=device, dtype=dtype)
        model = PeftModel.from_pretrained(base, run_dir / artifact.get("path", "adapter"))
        return model.eval(), tokenizer
    if kind == "intervention":
        from obliviate.interventions import load_intervention

        base, tokenizer = load_model(artifact["base_model"], device=device, dtype=dtype)
        intervention = load_intervention(run_dir / artifact.get("path", "intervention"), base, tokenizer)
        return intervention.wrap(base, tokenizer).eval(), tokenizer
    raise ObliviateError(f"{run_dir}/artifact.json: unknown artifact kind '{kind}'")
