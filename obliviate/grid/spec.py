"""What a bench runs, and where each of its cells lives.

A bench is a grid of cells, one per method × forget split × seed. On the built-in world each seed
is its own world (`world:PRESET@SEED`: other people, other splits, its own target and exact-retrain
oracle), so the spread over seeds covers data and training noise together; the method's own
`seed` is set to the cell's seed too, unless `--set seed=...` fixes it. On a user's own data and
model (`--model`), the seed is the method's seed only. With `--data SPEC` (and `--model`) the grid's one
split is the benchmark's (`tofu:forget10@DIR`, `muse:news@DIR`, `rwku@DIR`, `wmdp@DIR`): cells train on
its training sets and are scored by its own suite (`workflow/data.py`).

Every (split, seed) also has an *anchors* cell that evaluates the target and the oracle on the
same sets; its method cells read the oracle's forget truth ratios from it (forget quality), so
the anchors cell runs first.

    OUT/
      bench.json                       the grid and settings (`BenchSpec`), command, versions
      cells/_anchors/<split>/seed<k>/  target and oracle of seed k's world ("shared" on user data)
      cells/<method>/<split>/seed<k>/
        run/          the unlearned run directory (config.json, results.json, items.jsonl, weights)
        result.json   what the leaderboard reads
        log.txt       the cell's output
        error.json    why it failed, when it did
        COMPLETE      written last: the cell is finished
      leaderboard.csv, leaderboard.json, leaderboard.md, report.html

A cell is complete only when COMPLETE exists and records the fingerprint of the settings the cell
was made with. A cell directory without it is half-written and is redone from scratch; a finished
cell whose fingerprint differs (another `--set`, edited data) is stale, and the runner redoes it
only when asked to (`--redo-stale`), never silently.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import read_json, stable_hash

ANCHORS = "_anchors"
COMPLETE = "COMPLETE"
RESULT = "result.json"
ERROR = "error.json"
BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method (or the anchors) on one forget split and one seed."""

    method: str
    split: str
    seed: int | None  # None: user-data anchors, shared by every seed

    @property
    def is_anchor(self) -> bool:
        return self.method == ANCHORS

    @property
    def label(self) -> str:
        who = "target+oracle" if self.is_anchor else self.method
        return f"{who} {self.split}" + ("" if self.seed is None else f" seed{self.seed}")

    def path(self, root: Path) -> Path:
        return Path(root) / "cells" / self.method / self.split / ("shared" if self.seed is None else f"seed{self.seed}")


@dataclass
class BenchSpec:
    """The grid and every setting that changes a cell's results."""

    methods: list[str]
    splits: list[str]  # world split names, or labels of the user's forget files
    seeds: list[int]
    world: str | None = "small"  # PRESET or PRESET:ARCH; None on user data
    model: str | None = None  # user data: the model to unlearn
    forget_files: dict[str, str] = field(default_factory=dict)  # user data: split label -> forget file
    retain: str | None = None
    oracle: str | None = None  # a model, or an eval/run dir with items.jsonl
    holdout: str | None = None
    utility: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, list[str]] = field(default_factory=dict)  # method -> ["key=value", ...]
    attacks: list[str] = field(default_factory=list)
    max_retain: int | None = None  # evaluate on a seeded subset of this many retain items
    generate: bool = True  # greedy generation for ROUGE
    keep_models: bool = True  # keep each cell's unlearned weights
    threads: int = 0  # torch threads per cell; 0 = 1 on the built-in world, torch's default otherwise
    report_to: list[str] = field(default_factory=list)  # experiment trackers (obliviate.tracking); not in results
    data: str | None = None  # a data spec (`tofu:forget10@DIR`, `muse:news@DIR`, ...): the benchmark's own sets

    # -- the grid ------------------------------------------------------------------------------------
    @property
    def on_world(self) -> bool:
        return self.world is not None

    def world_spec(self, seed: int) -> str:
        preset, _, arch = (self.world or "").partition(":")
        return f"world:{preset}@{seed}" + (f":{arch}" if arch else "")

    def anchor_of(self, cell: Cell) -> Cell:
        return Cell(ANCHORS, cell.split, cell.seed if self.on_world else None)

    def cells(self) -> list[Cell]:
        """Every cell in run order: seed by seed, split by split, the anchors before the methods."""
        out: list[Cell] = []
        for seed in self.seeds:
            for split in self.splits:
                anchor = Cell(ANCHORS, split, seed if self.on_world else None)
                if anchor not in out:
                    out.append(anchor)
                out += [Cell(m, split, seed) for m in self.methods]
        return out

    def method_overrides(self, method: str, seed: int | None) -> list[str]:
        """The method's `--set` pairs, with `seed` set to the cell's seed unless the user set it."""
        from obliviate.config import with_seed

        return with_seed(self.overrides.get(method, []), seed)

    def fingerprint(self, cell: Cell) -> str:
        """Hash of everything that determines the cell's results; a marker with another hash is stale."""
        common = {"world": self.world, "model": self.model, "retain": _digest(self.retain),
                  "oracle": _digest(self.oracle), "holdout": _digest(self.holdout),
                  "utility": {k: _digest(v) for k, v in sorted(self.utility.items())},
                  "forget": _digest(self.forget_files.get(cell.split)), "max_retain": self.max_retain,
                  "generate": self.generate, "cell": asdict(cell)}
        if self.data:  # only then, so the cells of earlier benches keep their fingerprints
            common["data"] = self.data
        if not cell.is_anchor:
            common.update(overrides=self.method_overrides(cell.method, cell.seed), attacks=sorted(self.attacks))
        return stable_hash(common)

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _digest(path: str | None) -> str | None:
    """A file's content hash (so an edited data file makes its cells stale); a directory's or hub name's path."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return str(path)
    stat = p.stat()
    return f"{p}:{_file_hash(str(p.resolve()), stat.st_mtime_ns, stat.st_size)}"


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per (path, modification time, size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# -- cell state on disk ----------------------------------------------------------------------------------

def cell_state(spec: BenchSpec, cell: Cell, root: Path) -> str:
    """"complete", "stale" (finished with other settings), "partial" (half-written) or "absent"."""
    path = cell.path(root)
    if not path.exists():
        return "absent"
    marker = path / COMPLETE
    if not marker.is_file():
        return "partial"
    try:
        done = read_json(marker)
        if (path / RESULT).is_file():
            read_json(path / RESULT)  # a damaged result is a cell to redo, not a finished one
    except (OSError, ValueError, ObliviateError):
        return "partial"
    if not isinstance(done, dict):
        return "partial"
    return "complete" if done.get("fingerprint") == spec.fingerprint(cell) and (path / RESULT).is_file() else "stale"


def load_spec(root: Path) -> BenchSpec:
    path = Path(root) / BENCH_FILE
    if not path.is_file():
        raise ConfigError(f"{root}: not a bench directory (no {BENCH_FILE})")
    return BenchSpec.from_dict(read_json(path)["spec"])


# -- parsing the command line ---------------------------------------------------------------------------

def parse_methods(text: str, moe: bool = False) -> list[str]:
    """"all" or "a,b,c" -> method names, each checked against the method table.

    "all" leaves out the methods that need a mixture-of-experts model (UOE) unless `moe` is set, and those
    that need an instruction model (ALU); named explicitly, they are kept and fail in their cells with their
    own one-line error.
    """
    from obliviate.methods import METHODS, get_method

    if text.strip() == "all":
        return [name for name, cls in METHODS.items() if (moe or not cls.needs_moe) and not cls.needs_chat]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--methods: give method names (a,b,...) or 'all'")
    for name in names:
        get_method(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods {text}: a method is listed twice")
    return names


def parse_seeds(text: str) -> list[int]:
    """"3" -> [0, 1, 2]; "0,4,7" -> [0, 4, 7]."""
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (3) or a list of seeds (0,4,7)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected distinct non-negative seeds")
    return seeds


def parse_world_splits(text: str) -> list[str]:
    from obliviate.world.generator import RETAIN_OF

    splits = [s.strip() for s in text.split(",") if s.strip()]
    for split in splits:
        if split not in RETAIN_OF:
            raise ConfigError(f"--forget: unknown world split '{split}'; choose from {', '.join(RETAIN_OF)}")
    if not splits or len(set(splits)) != len(splits):
        raise ConfigError(f"--forget {text!r}: expected distinct world splits, e.g. forget01,forget10")
    return splits


def parse_forget_files(text: str) -> dict[str, str]:
    """User data: "a.jsonl,b.jsonl" or "small=a.jsonl,big=b.jsonl" -> {label: path}."""
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        label, sep, path = entry.partition("=")
        if not sep:
            label, path = Path(entry).stem, entry
        if label in out:
            raise ConfigError(f"--forget: two forget sets are labelled '{label}'; name them LABEL=PATH")
        out[label] = path
    if not out:
        raise ConfigError("--forget: give a forget file")
    return out


def scope_overrides(methods: list[str], pairs: list[str]) -> dict[str, list[str]]:
    """`--set` pairs per method: `ga.lr=1e-4` for one method, `lr=1e-4` for every method that has `lr`."""
    from obliviate.methods import get_method

    out: dict[str, list[str]] = {m: [] for m in methods}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value or method.key=value")
        scope, dot, name = key.strip().rpartition(".")
        if dot:
            if scope not in out:
                raise ConfigError(f"--set {pair!r}: method '{scope}' is not in --methods")
            if name not in get_method(scope).Config.model_fields:
                raise ConfigError(f"--set {pair!r}: {scope} has no config field '{name}' (see `obliviate methods "
                                  f"{scope}`)")
            out[scope].append(f"{name}={value}")
            continue
        takers = [m for m in methods if name in get_method(m).Config.model_fields]
        if not takers:
            raise ConfigError(f"--set {pair!r}: no method in --methods has a config field '{name}'")
        for m in takers:
            out[m].append(f"{name}={value}")
    return {m: p for m, p in out.items() if p}
