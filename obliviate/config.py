"""Method configs: pydantic models filled from a YAML/TOML/JSON file and `--set key=value` overrides.

Unknown keys fail with a "did you mean", ill-typed values with the field name and the expected type.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from obliviate.errors import ConfigError


class StrictConfig(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated, NaN and inf are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["lr=1e-4", "lora=true"]` -> `{"lr": "1e-4", "lora": "true"}`; pydantic coerces the strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


RUN_CONFIG_KEYS = ("method", "method_config")  # a run's config.json (obliviate.runs.write_config) has both


def is_run_config(data: Any) -> bool:
    """True for the config.json a run directory holds (its method's settings are under "method_config")."""
    return isinstance(data, dict) and all(k in data for k in RUN_CONFIG_KEYS)


def read_config_file(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """The method config keys in a YAML, TOML or JSON file.

    A run's own config.json (`RUN/config.json`) is read too: its resolved "method_config", so
    `obliviate unlearn --config RUN/config.json` repeats that run's settings. With `method`, a run
    made with another method is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: config must be .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{_where(path, exc)}: cannot parse config ({_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping of key: value")
    if is_run_config(data):
        if method is not None and data["method"] != method:
            raise ConfigError(f"{path}: a run made with method '{data['method']}', not '{method}'")
        return dict(data["method_config"] or {})
    return data


def _where(path: Path, exc: Exception) -> str:
    """`path:line` of a parse error, when the parser knows the line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
    return f"{path}:{line}" if line else str(path)


def _problem(exc: Exception) -> str:
    """The parser's one-line account of what is wrong (YAML's `problem`, else its first line)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "msg", None)
    return " ".join(str(problem or exc).split()) or type(exc).__name__


def build_config(
    cls: type[StrictConfig], values: dict[str, Any] | None = None, source: str = "--set"
) -> StrictConfig:
    """Validate `values` into `cls`, turning pydantic errors into one-line ConfigErrors."""
    values = dict(values or {})
    fields = list(cls.model_fields)
    for key in values:
        if key not in cls.model_fields:
            raise ConfigError(f"{source}: unknown key '{key}' for {cls.__name__}{did_you_mean(key, fields)}")
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"{source}: field '{field}': {err['msg']} (got {err.get('input')!r})") from None


def describe_config(cls: type[StrictConfig]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field, for `obliviate methods NAME`."""
    rows = []
    for name, info in cls.model_fields.items():
        annotation = getattr(info.annotation, "__name__", str(info.annotation)).replace("typing.", "")
        rows.append((name, annotation, repr(info.default), info.description or ""))
    return rows


def with_seed(pairs: Sequence[str], seed: int | None) -> list[str]:
    """`--set` pairs with `seed=SEED` added unless they set the seed already.

    The one seed policy of `obliviate bench` and `obliviate seeds`: on world seed S the method's own
    seed is S too, so a replicate varies the world and the training together (docs/statistics.md).
    """
    out = list(pairs)
    if seed is not None and not any(p.partition("=")[0].strip() == "seed" for p in out):
        out.append(f"seed={seed}")
    return out
