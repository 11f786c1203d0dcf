"""The deployment config of `obliviate serve` and `obliviate worker`: one YAML file.

```yaml
model: world:tiny                 # a world preset, a local model directory or a hub name
guard: {method: guard}            # the inference-time guard: guard or eco, with its settings
durable: {method: npo, lora: {r: 8, alpha: 16}, retain: world:forget10}
gates: {forget_max: {forget_rouge: 0.4}, utility_drop_max: 0.1}
api_keys: keys.yaml
workdir: state                    # ledger, adapters, evidence
```

Relative paths (`api_keys`, `workdir`, a retain file, a model directory, a SQLite file) are resolved
against the config file's folder, so the file works from any current directory. Bad input is a
one-line `ConfigError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from obliviate.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GuardConfig(_Strict):
    """The inference-time guard that enforces a request at once."""

    method: Literal["guard", "eco"] = Field("guard", description="guard (refuse) or eco (corrupt the prompt)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the method's config keys")
    keep_after_durable: bool = Field(False, description="keep guarding a request after its unlearning is durable")


class DurableConfig(_Strict):
    """The weight method the worker trains (a fresh adapter on the base) to make forgetting durable."""

    method: str = Field("npo", description="an `obliviate methods` name")
    overrides: dict[str, Any] = Field(default_factory=dict, description="the method's config keys")
    lora: dict[str, Any] | None = Field(default_factory=lambda: {"r": 8, "alpha": 16},
                                        description="LoRA settings (r, alpha, ...); null trains full weights")
    retain: str = Field(description="the retain data: a QA or text file, or a data spec such as world:forget10 "
                                    "(its retain side)")


class GatesConfig(_Strict):
    """What a candidate must pass before it is published."""

    forget_max: dict[str, float] = Field(default_factory=dict, description="metric -> the most allowed on the "
                                         "request's items, e.g. forget_rouge: 0.4")
    forget_min_drop: dict[str, float] = Field(default_factory=dict, description="metric -> the least the candidate "
                                              "must lower it below the live model's on the request's items, e.g. "
                                              "forget_probability: 0.3 (a bound alone passes a model that never "
                                              "stated the fact, or that states it in other words)")
    attack_recovery_max: float | None = Field(None, description="the most recovery any configured attack may show")
    attacks: list[str] = Field(default_factory=list, description="attacks run against the candidate")
    attack_overrides: dict[str, Any] = Field(default_factory=dict, description="the attacks' settings, "
                                             "key: value or attack.key: value (`obliviate attack list`)")
    utility_drop_max: float = Field(0.1, description="the most the retain utility may fall below the live model's")
    retain_items: int = Field(40, gt=0, description="how many retain items (the first ones) utility is measured on")


class ServeConfig(_Strict):
    """One deployment: the model, the guard, the durable method, the gates, the ledger and the keys."""

    model: str
    prompt: str | None = None
    guard: GuardConfig = Field(default_factory=GuardConfig)
    durable: DurableConfig
    gates: GatesConfig = Field(default_factory=GatesConfig)
    database: str = "sqlite:///{workdir}/ledger.db"
    api_keys: Path
    workdir: Path
    store_texts: bool = False
    max_request_bytes: int = Field(1_000_000, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    stale_after: float = Field(60.0, gt=0, description="seconds without a heartbeat after which a running job "
                                                       "counts as dead and is claimed again")
    poll_seconds: float = Field(1.0, gt=0, description="how often an idle worker looks for a job")

    @property
    def database_url(self) -> str:
        """`database` with `{workdir}` filled in."""
        return self.database.replace("{workdir}", str(self.workdir))


def _resolve(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _looks_local(base: Path, value: str) -> bool:
    """A model or data value that names a file or directory (not `world:...`, a data spec or a hub name)."""
    return value.startswith((".", "/", "~")) or (base / value).exists()


def _resolve_paths(base: Path, data: dict[str, Any]) -> None:
    for key in ("api_keys", "workdir"):
        if isinstance(data.get(key), str | Path):
            data[key] = str(_resolve(base, data[key]))
    if isinstance(data.get("model"), str) and _looks_local(base, data["model"]):
        data["model"] = str(_resolve(base, data["model"]))
    durable = data.get("durable")
    if isinstance(durable, dict) and isinstance(durable.get("retain"), str) and _looks_local(base, durable["retain"]):
        durable["retain"] = str(_resolve(base, durable["retain"]))
    database = data.get("database")
    prefix = "sqlite:///"
    if isinstance(database, str) and database.startswith(prefix) and not database.startswith(prefix + "/") \
            and not database.startswith(prefix + "{workdir}") and database != "sqlite:///:memory:":
        data["database"] = prefix + str(_resolve(base, database[len(prefix):]))


def load_config(path: str | Path) -> ServeConfig:
    """The ServeConfig in the YAML file `path`, with relative paths resolved against its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or type(exc).__name__})") \
            from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: cannot parse the config ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of key: value")
    _resolve_paths(path.resolve().parent, data)
    try:
        return ServeConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        raise ConfigError(f"{path}: field '{field}': {err['msg']}{got}") from None
