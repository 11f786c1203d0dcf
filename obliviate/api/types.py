"""The API's result types: each loads back from the directory the CLI or the API wrote."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import ObliviateError


@dataclass(frozen=True)
class LoRA:
    """A LoRA adapter to train instead of the full weights (peft), e.g. `LoRA(r=8, alpha=16)`.

    `targets` is "all-linear" or module names joined by "+" (`"q_proj+v_proj"`).

        >>> LoRA(r=4, alpha=8).spec()
        'r=4,alpha=8,targets=all-linear,dropout=0.0'
    """

    r: int = 8
    alpha: int = 16
    targets: str = "all-linear"
    dropout: float = 0.0

    def spec(self) -> str:
        """The `--lora` string of the same adapter."""
        return f"r={self.r},alpha={self.alpha},targets={self.targets},dropout={self.dropout}"


@dataclass
class Items(Sequence):
    """Per-item rows (one dict each: set, index, metric values); `to_pandas()` makes a DataFrame.

        >>> Items([{"set": "forget", "probability": 0.5}]).to_pandas().shape
        (1, 2)
    """

    rows: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def where(self, **equal: Any) -> Items:
        """The rows whose fields equal the given values, e.g. `items.where(set="forget")`."""
        return Items([r for r in self.rows if all(r.get(k) == v for k, v in equal.items())])

    def to_pandas(self):
        """A pandas DataFrame, one row per item."""
        import pandas as pd

        return pd.DataFrame(self.rows)


@dataclass
class EvalResult:
    """A qa-suite evaluation: `aggregates` (name -> {value, ci_low, ci_high, higher_is_better, ...}),
    per-item `items`, and the directory it was written to.

        result = ob.evaluate("runs/npo")
        result["model_utility"]          # the aggregate's value
        result.table()                   # the table `obliviate eval` prints
        ob.EvalResult.load("runs/npo")   # the same, read back from results.json and items.jsonl
    """

    aggregates: dict[str, dict[str, Any]]
    items: Items = field(default_factory=Items)
    path: Path | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Read an evaluated run or eval directory (results.json and items.jsonl)."""
        from obliviate.io import read_json, read_jsonl

        path = Path(path)
        if not (path / "results.json").is_file():
            raise ObliviateError(f"{path}: no results.json; evaluate it first (obliviate eval {path})")
        payload = read_json(path / "results.json")
        rows = read_jsonl(path / "items.jsonl") if (path / "items.jsonl").is_file() else []
        return cls(payload["aggregates"], Items(rows), path, payload)

    def __getitem__(self, key: str) -> float:
        if key not in self.aggregates:
            raise KeyError(f"{key!r}: not an aggregate of this result (have {', '.join(sorted(self.aggregates))})")
        return self.aggregates[key]["value"]

    def table(self, title: str = "qa suite", name: str | None = None):
        """The rich Table that `obliviate eval` prints (print it with `rich.print`)."""
        from obliviate.tables import side_by_side

        label = name or (self.path.name if self.path is not None else "model")
        return side_by_side({label: self.aggregates}, title)


@dataclass
class Run:
    """A run directory written by `unlearn`: its config, artifact and (once evaluated) results.

        run = ob.Run.load("runs/npo")
        model, tokenizer = run.load_model()   # the unlearned model, whichever kind of method made it
    """

    path: Path
    config: dict[str, Any]
    artifact: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run directory (config.json and artifact.json)."""
        from obliviate.io import read_json
        from obliviate.runs import is_run_dir

        path = Path(path)
        if not is_run_dir(path):
            raise ObliviateError(f"{path}: not a run directory (no artifact.json)")
        config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
        return cls(path, config, read_json(path / "artifact.json"))

    @property
    def method(self) -> str | None:
        return self.config.get("method") or self.artifact.get("method")

    @property
    def summary(self) -> dict[str, Any]:
        """What unlearning reported: steps, seconds, peak memory, the method's own numbers."""
        return self.config.get("unlearn", {})

    def load_model(self):
        """(model, tokenizer): the unlearned model, an intervention-wrapped one for inference-time methods."""
        from obliviate.runs import load_run_model

        return load_run_model(self.path)

    def results(self) -> EvalResult:
        """The run's qa-suite results (after `evaluate`)."""
        return EvalResult.load(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass
class AttackReport:
    """The attacks' reports (name -> report with `recovery`, its CI and per-form levels) and the summary.

        report = ob.attack("runs/gd", ["relearn", "forms"])
        report.recovery("forms")         # 0 = like the oracle, 1 = like the target
        report.robustness["harmonic_mean"]
    """

    reports: dict[str, dict[str, Any]]
    robustness: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    written: Path | None = None

    def recovery(self, name: str) -> float | None:
        """The attack's oracle-relative recovery, or None when it did not run or could not tell."""
        return self.reports[name].get("recovery")

    def table(self, title: str = "forget facts recovered by each attack"):
        """The rich Table that `obliviate attack` prints."""
        from obliviate.tables import attack_table

        return attack_table(self.reports, title)




@dataclass
class BenchResult:
    """A bench directory: its leaderboard (one row per split and model, mean and interval over seeds).

        board = ob.bench(methods=["ga", "npo"], world="tiny", seeds=2, out="bench/b1")
        board.to_pandas()                    # split, model, seeds and one column per metric
        ob.BenchResult.load("bench/b1")      # the same, read back
    """

    path: Path
    leaderboard: dict[str, Any]
    total: int = 0
    ran: int = 0
    kept: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        """Read a bench directory's leaderboard from its complete cells."""
        from obliviate.grid.leaderboard import build_leaderboard

        return cls(Path(path), build_leaderboard(Path(path)))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.leaderboard["rows"]

    def to_pandas(self):
        """One row per (split, model): the mean of each metric over seeds."""
        import pandas as pd

        return pd.DataFrame([{"split": r["split"], "model": r["model"], "seeds": r["n_seeds"],
                              **{k: m.get("mean") for k, m in r["metrics"].items()}} for r in self.rows])
