"""Data specs: a benchmark named by a string, from the hub or a local copy.

- `world:SPLIT`: unlearning trains on the split's forget and retain training items; the qa suite
  scores the world's sets against the exact-retrain oracle.
- `tofu:forget01|05|10[@PATH]`: trains on `forgetNN` and `retainNN`; the qa suite scores
  `forgetNN_perturbed`, `retain_perturbed`, real authors, world facts and `holdoutNN`.
- `muse:news|books[@PATH]`: trains on the `raw` corpus, `forget` with `retain1` as the retain set
  (text passages); the text suite scores VerbMem, KnowMem and PrivLeak.
- `rwku[@PATH]`: trains on RWKU's forget corpus (`positive.json`, text; RWKU has no retain set); the
  qa suite scores the forget probes (levels 1-3) and the neighbour probes, and RWKU's own table
  (ROUGE-L recall per level) is added to the results.
- `wmdp[@PATH]`: trains on the corpora of a local copy (`wmdp@PATH` only: the bio corpus is gated);
  lm-evaluation-harness scores WMDP-Bio, WMDP-Cyber and the MMLU subsets.

PATH is a local copy in the benchmark's own schema (see each adapter in `data/adapters/`); without
it the hub is read. A run records its data spec with PATH made absolute, so `obliviate eval RUN`
needs nothing else. `legacy=True` evaluates TOFU's first 300 items of every set, as TOFU's own
evaluation did (`ds_size: 300`), for parity with the published forget-quality values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from obliviate.data.schema import Item
from obliviate.errors import ConfigError
from obliviate.workflow.evaluation import EvalSets

BENCHMARKS = ("world", "tofu", "muse", "rwku", "wmdp")
NAMELESS = ("rwku", "wmdp")  # `rwku[@PATH]`, `wmdp[@PATH]`: no split name
MUSE_CORPORA = ("news", "books")
LEGACY_ITEMS = 300
FORMS = "world:SPLIT, tofu:forget01|05|10[@PATH], muse:news|books[@PATH], rwku[@PATH], wmdp[@PATH]"
Suite = Literal["qa", "text", "lm_eval"]


@dataclass(frozen=True)
class DataSpec:
    """`benchmark[:name][@path]`, parsed."""

    benchmark: str
    name: str = ""
    path: str | None = None

    def __str__(self) -> str:
        return self.benchmark + (f":{self.name}" if self.name else "") + (f"@{self.path}" if self.path else "")

    @property
    def suite(self) -> Suite:
        """The evaluation suite the benchmark reports with."""
        return {"muse": "text", "wmdp": "lm_eval"}.get(self.benchmark, "qa")

    @property
    def label(self) -> str:
        """A short name for the benchmark's split (a bench's split label)."""
        return self.name or self.benchmark


def parse_data_spec(spec: str) -> DataSpec:
    """`tofu:forget10@./TOFU` -> DataSpec("tofu", "forget10", "./TOFU"); a one-line error otherwise."""
    from obliviate.data.adapters.tofu import FORGET_SPLITS

    head, at, path = spec.partition("@")
    benchmark, sep, name = head.partition(":")
    if benchmark not in BENCHMARKS or (at and not path):
        raise ConfigError(f"--data {spec!r}: expected one of {FORMS}")
    if benchmark in NAMELESS:
        if sep:
            raise ConfigError(f"--data {spec!r}: {benchmark} takes no split name ({benchmark}[@PATH])")
    elif not sep or not name:
        raise ConfigError(f"--data {spec!r}: expected one of {FORMS}")
    if benchmark == "tofu" and name not in FORGET_SPLITS:
        raise ConfigError(f"--data {spec!r}: unknown TOFU split '{name}' (choose from {', '.join(FORGET_SPLITS)})")
    if benchmark == "muse" and name not in MUSE_CORPORA:
        raise ConfigError(f"--data {spec!r}: unknown MUSE corpus '{name}' (choose from {', '.join(MUSE_CORPORA)})")
    if benchmark == "world" and path:
        raise ConfigError(f"--data {spec!r}: the world's data comes with its model (world:SPLIT, no @PATH)")
    return DataSpec(benchmark, name, path or None)


def source(spec: DataSpec) -> str:
    """Where the benchmark is read from: the local copy (absolute), else its hub name."""
    from obliviate.data.adapters import muse, rwku, tofu, wmdp

    if spec.benchmark == "world":
        raise ConfigError(f"--data {spec}: the world's data comes with its model")
    if spec.path:
        return str(Path(spec.path).resolve())
    hub = {"tofu": tofu.HUB_NAME, "rwku": rwku.HUB_NAME, "wmdp": wmdp.HUB_NAME}
    return muse.HUB_NAMES[spec.name] if spec.benchmark == "muse" else hub[spec.benchmark]


def train_sets(spec: DataSpec) -> tuple[list[Item], list[Item]]:
    """(forget, retain) items that unlearning trains on: QA items, or text passages for the corpora."""
    if spec.benchmark == "tofu":
        from obliviate.data.adapters.tofu import load_tofu

        data = load_tofu(source(spec), spec.name)
        return list(data.forget), list(data.retain_train if data.retain_train is not None else data.retain)
    if spec.benchmark == "muse":
        from obliviate.data.adapters.muse import load_muse_corpus

        return load_muse_corpus(source(spec), "forget"), load_muse_corpus(source(spec), "retain1")
    if spec.benchmark == "rwku":
        from obliviate.data.adapters.rwku import load_rwku

        return load_rwku(source(spec), passages=True).passages, []
    if spec.benchmark == "wmdp":
        from obliviate.data.adapters.wmdp import load_wmdp_corpora

        if not spec.path:
            raise ConfigError("--data wmdp: unlearning needs WMDP's corpora: give wmdp@DIR, a folder holding "
                              "bio-forget-corpus.jsonl (gated: cais/wmdp-bio-forget-corpus) and/or "
                              "cyber-forget-corpus.jsonl, with *-retain-corpus.jsonl as retain sets")
        return load_wmdp_corpora(source(spec))
    raise ConfigError(f"--data {spec}: the world's training sets come with world:PRESET models")


def eval_sets(spec: DataSpec, legacy: bool = False) -> EvalSets:
    """The qa suite's sets (TOFU and RWKU); `legacy`: the first 300 items of each, as TOFU's own evaluation."""
    if spec.benchmark == "rwku":
        from obliviate.data.adapters.rwku import load_rwku

        data = load_rwku(source(spec))
        return EvalSets(data.forget, data.neighbours)
    if spec.benchmark != "tofu":
        raise ConfigError(f"--data {spec}: its sets are not scored by the qa suite (its suite: {spec.suite})"
                          if spec.benchmark != "world" else
                          f"--data {spec}: the world's evaluation sets come with world:PRESET models")
    from obliviate.data.adapters.tofu import load_tofu

    data = load_tofu(source(spec), spec.name)
    cut = (lambda items: list(items)[:LEGACY_ITEMS]) if legacy else list
    return EvalSets(cut(data.forget), cut(data.retain), {k: cut(v) for k, v in data.utility.items()},
                    cut(data.holdout) if data.holdout else None)


def rwku_table(sets: EvalSets, items: list[dict[str, Any]]) -> dict[str, float | None]:
    """RWKU's headline numbers from the qa suite's per-item rows: mean ROUGE-L recall of the generated
    answers per probe level, forget levels 1-3 (lower is better) and neighbour levels 1-2 (higher)."""
    import numpy as np

    out: dict[str, float | None] = {}
    for role, prefix, levels in (("forget", "forget", "123"), ("retain", "neighbor", "12")):
        rouge = {r["index"]: r.get("rouge") for r in items if r.get("set") == role}
        source_items = sets.forget if role == "forget" else sets.retain
        for level in levels:
            values = [rouge.get(i) for i, it in enumerate(source_items) if it.meta.get("level") == level]
            values = [v for v in values if v is not None]
            out[f"{prefix}_level{level}_rouge_l_r"] = float(np.mean(values)) if values else None
    return out


def resolve_spec(target: str, data: str | None, forget: str | None = None) -> DataSpec | None:
    """The data spec an evaluation of `target` uses: `data`, else the one its run recorded (unless
    `forget` files are given); None when there is none."""
    from obliviate.io import read_json
    from obliviate.runs import is_run_dir

    if data:
        return parse_data_spec(data)
    config = Path(target) / "config.json"
    if forget is None and is_run_dir(target) and config.is_file() and (recorded := read_json(config).get("data")):
        return parse_data_spec(recorded)
    return None


def record(spec: DataSpec) -> str:
    """The spec as a run records it: a local path made absolute, so the run resolves from anywhere."""
    return str(DataSpec(spec.benchmark, spec.name, str(Path(spec.path).resolve()) if spec.path else None))
