"""Protocols that unlearn several times on the built-in world and plot each metric along the way.

**Scalability** (MUSE, Shi et al. 2024): unlearn forget sets of growing size, each from the same
target, and plot every metric against the forget-set size.

**Sustainability** (MUSE): apply disjoint forget requests one after another, each starting from the
previous result, and plot every metric against the request number.

Both use the world's nested forget splits (forget01 ⊂ forget05 ⊂ forget10, `world.generator`):

- scalability step k unlearns split k from the target;
- sustainability request k is the people of split k who are not in split k − 1, so after request k
  the people forgotten so far are exactly split k.

So after every step the exact-retrain oracle is one the world already defines: the model trained
without split k (`oracle-<split>`). Forget quality at each step compares the forget-set truth
ratios with that oracle, never with a reference that saw some of the forgotten people. Its p-value
still grows less comparable as the forget set grows (see docs/statistics.md); the KS statistic is
plotted beside it.

What is evaluated at each step:

- forget: split k's evaluation items (the whole cumulative set, in sustainability);
- retain: the retain people of the *largest* split, the same items at every step, because those
  people are retained at every step, so the retain curves move only with the model;
- utility sets and a fixed holdout (membership-inference non-members).

`max_items` caps the retain and holdout sets (seeded subsets) to make evaluation cheap; the
forget sets are never capped, since their size is the point. With `references`, the target and the
step's oracle are evaluated on the same sets and plotted as reference lines.

Writes, atomically, into OUT: `<protocol>.json` (after every step, so a stopped protocol keeps its
finished steps), `<protocol>.png`, the runs (`01-forget01/`, ...), the sustainability requests'
data (`requests/`) and the reference evaluations (`references/`).
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import atomic_open, read_json, write_json, write_jsonl

PROTOCOLS = ("scalability", "sustainability")
DEFAULT_SPLITS = ("forget01", "forget05", "forget10")

# (aggregate key, label, log y axis): what each protocol plots, where present.
PLOT_METRICS = [
    ("forget_quality", "forget quality (KS p)", True),
    ("forget_quality/ks_statistic", "KS statistic D", False),
    ("model_utility", "model utility", False),
    ("model_utility_without_rouge", "model utility without ROUGE", False),
    ("forget/probability", "forget probability", False),
    ("forget/rouge", "forget ROUGE-L recall", False),
    ("forget/truth_ratio", "forget truth ratio", False),
    ("retain/probability", "retain probability", False),
    ("retain/rouge", "retain ROUGE-L recall", False),
    ("mia/min_k_auc", "MIA AUC, Min-K%", False),
]


@dataclass
class ProtocolPlan:
    """What a protocol will do: the world, the method and the ordered forget splits."""

    name: str
    method: str
    preset: str
    seed: int
    arch: str
    splits: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    generate: bool = True
    max_items: int | None = None
    references: bool = True


def plan_protocol(name: str, model: str, method: str, splits: Sequence[str] = DEFAULT_SPLITS,
                  overrides: Sequence[str] = (), generate: bool = True, max_items: int | None = None,
                  references: bool = True) -> ProtocolPlan:
    """Check every input before anything is trained: the protocol, the world spec, the method, the splits."""
    from obliviate.methods import get_method
    from obliviate.workflow import parse_world_spec
    from obliviate.world import get_world
    from obliviate.world.generator import RETAIN_OF

    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{name}'; choose one of {', '.join(PROTOCOLS)}")
    ref = parse_world_spec(model)
    if ref is None:
        raise ObliviateError(f"--model {model}: protocols run on the built-in world (world:PRESET[@SEED]), "
                             "whose nested splits come with exact-retrain oracles")
    cls = get_method(method)
    if name == "sustainability" and getattr(cls, "produces", "weights") == "intervention":
        raise ConfigError(f"sustainability chains weight updates; {method} is inference-time (weights "
                          "untouched), so run scalability for it instead")
    for split in splits:
        if split not in RETAIN_OF:
            raise ConfigError(f"--splits: unknown forget split '{split}'; choose from {', '.join(RETAIN_OF)}")
    if len(splits) < 2 or len(set(splits)) != len(splits):
        raise ConfigError("--splits: a protocol needs at least two different forget splits")
    if max_items is not None and max_items < 1:
        raise ConfigError("--max-items must be at least 1")
    world = get_world(ref.preset, ref.seed)
    ordered = tuple(sorted(splits, key=lambda s: len(world.splits[s])))
    for small, large in zip(ordered, ordered[1:], strict=False):
        if not set(world.splits[small]) < set(world.splits[large]):
            raise ConfigError(f"world {ref.preset}@{ref.seed}: {small} is not strictly inside {large}, "
                              "so the splits cannot make growing or disjoint requests")
    return ProtocolPlan(name, method, ref.preset, ref.seed, ref.arch, ordered, tuple(overrides), generate,
                        max_items, references)


# -- evaluation sets and references -----------------------------------------------------------------------

def protocol_eval_sets(plan: ProtocolPlan, split: str):
    """Forget = `split`'s items; retain, utility and holdout are the same items at every step."""
    from obliviate.workflow import EvalSets
    from obliviate.world import get_world

    world = get_world(plan.preset, plan.seed)
    holdout = world.holdout_set()
    if plan.max_items is not None and plan.max_items < len(holdout):
        keep = sorted(random.Random(f"obliviate-protocol-holdout:{plan.seed}").sample(range(len(holdout)),
                                                                                    plan.max_items))
        holdout = [holdout[i] for i in keep]
    return EvalSets(world.forget_set(split), world.retain_set(plan.splits[-1], plan.max_items),
                    world.utility_sets(), holdout)


def _world_ref(plan: ProtocolPlan, split: str):
    from obliviate.workflow import WorldRef

    return WorldRef(plan.preset, plan.seed, split, plan.arch)


def _evaluate(model_dir_or_run: Path, sets, out: Path, oracle_tr, plan: ProtocolPlan, run: bool) -> dict:
    from obliviate.models.loading import load_model
    from obliviate.runs import load_run_model
    from obliviate.workflow import evaluate

    model, tok = load_run_model(model_dir_or_run) if run else load_model(model_dir_or_run)
    return evaluate(model, tok, sets, out, oracle_forget_tr=oracle_tr, generate=plan.generate,
                    config={"target": str(model_dir_or_run), "protocol": plan.name})


def _oracle_and_references(plan: ProtocolPlan, split: str, sets, out: Path) -> tuple[np.ndarray, dict]:
    """The step's oracle forget truth ratios, and the target's and oracle's aggregates if asked for."""
    from obliviate.evals.qa import score_set
    from obliviate.models.loading import load_model
    from obliviate.workflow import world_models

    models = world_models(_world_ref(plan, split), which=("target", "oracle"), progress=False)
    if not plan.references:
        omodel, otok = load_model(models.oracle)
        return score_set(omodel, otok, sets.forget, "forget", "forget", generate=False).truth_ratio, {}
    oracle = _evaluate(models.oracle, sets, out / f"oracle-{split}", None, plan, run=False)
    oracle_tr = oracle.pop("_forget_truth_ratios")  # the oracle has no forget quality of its own
    target = _evaluate(models.target, sets, out / f"target-{split}", oracle_tr, plan, run=False)
    return oracle_tr, {"target": target["aggregates"], "oracle": oracle["aggregates"]}


# -- the protocols -------------------------------------------------------------------------------------------

def _request_files(plan: ProtocolPlan, k: int, out: Path) -> tuple[Path, Path, list[str]]:
    """Sustainability request k: the forget people new in split k, and the retain people of split k."""
    from obliviate.world import get_world

    world = get_world(plan.preset, plan.seed)
    done = set(world.splits[plan.splits[k - 1]]) if k else set()
    pids = [p for p in world.splits[plan.splits[k]] if p not in done]
    forget = [item for fact in world.facts(pids) for item in fact.train_items()]
    forget_path = out / "requests" / f"{k + 1:02d}-forget.jsonl"
    retain_path = out / "requests" / f"{k + 1:02d}-retain.jsonl"
    write_jsonl(forget_path, (it.to_dict() for it in forget))
    write_jsonl(retain_path, (it.to_dict() for it in world.retain_train(plan.splits[k])))
    return forget_path, retain_path, pids


def _per_request(run_dir: Path, requests: list[list[str]]) -> list[dict[str, Any]]:
    """Forget probability and ROUGE of each request's people so far: does earlier forgetting hold?"""
    from obliviate.io import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "items.jsonl") if r["set"] == "forget"]
    out = []
    for j, pids in enumerate(requests):
        mine = [r for r in rows if r.get("subject") in set(pids)]
        entry: dict[str, Any] = {"request": j + 1, "n": len(mine)}
        for field in ("probability", "rouge"):
            values = [r[field] for r in mine if field in r]
            if values:
                entry[field] = float(np.mean(values))
        out.append(entry)
    return out


def run_protocol(plan: ProtocolPlan, out: Path, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a planned protocol into `out`; returns (and writes) `<protocol>.json` and `<protocol>.png`."""
    from obliviate.workflow import run_unlearn
    from obliviate.world import get_world

    out = Path(out)
    world = get_world(plan.preset, plan.seed)
    spec = f"world:{plan.preset}@{plan.seed}" + ("" if plan.arch == "llama" else f":{plan.arch}")
    result: dict[str, Any] = {
        "protocol": plan.name, "method": plan.method, "overrides": list(plan.overrides),
        "world": {"preset": plan.preset, "seed": plan.seed, "arch": plan.arch}, "splits": list(plan.splits),
        "generate": plan.generate, "max_items": plan.max_items,
        "x": "forget-set size (QA items)" if plan.name == "scalability" else "request number",
        "steps": [],
    }
    previous: Path | None = None
    requests: list[list[str]] = []
    for k, split in enumerate(plan.splits):
        run_dir = out / f"{k + 1:02d}-{split}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ObliviateError(f"{run_dir} already exists; choose another --out or remove it")
        if log:
            what = (f"unlearning {split} from the target" if plan.name == "scalability"
                    else f"request {k + 1}: forgetting {split} minus what is already forgotten")
            log(f"[{k + 1}/{len(plan.splits)}] {what} with {plan.method}")
        sets = protocol_eval_sets(plan, split)
        oracle_tr, refs = _oracle_and_references(plan, split, sets, out / "references")
        t0 = time.perf_counter()
        if plan.name == "scalability":
            run_unlearn(plan.method, spec, run_dir, split=split, overrides=list(plan.overrides),
                        progress=progress)
            new_pids = list(world.splits[split])
        else:
            forget_path, retain_path, new_pids = _request_files(plan, k, out)
            run_unlearn(plan.method, str(previous) if previous else spec, run_dir, forget=str(forget_path),
                        retain=str(retain_path), split=split, overrides=list(plan.overrides),
                        progress=progress)
            _mark_world_split(run_dir, plan, split)
            requests.append(new_pids)
        seconds = time.perf_counter() - t0
        evaluated = _evaluate(run_dir, sets, run_dir, oracle_tr, plan, run=True)
        step = {"step": k + 1, "split": split, "run": str(run_dir), "unlearn_seconds": seconds,
                "n_forget_people": len(world.splits[split]), "n_forget_items": len(sets.forget),
                "new_people": new_pids, "aggregates": evaluated["aggregates"], **refs}
        if plan.name == "sustainability":
            step["per_request"] = _per_request(run_dir, requests)
        result["steps"].append(step)
        write_json(out / f"{plan.name}.json", result)
        previous = run_dir
    result["plot"] = str(plot_protocol(result, out / f"{plan.name}.png"))
    write_json(out / f"{plan.name}.json", result)
    return result


def _mark_world_split(run_dir: Path, plan: ProtocolPlan, split: str) -> None:
    """Record in config.json the split forgotten so far, so `obliviate eval RUN` picks the matching oracle."""
    config = read_json(run_dir / "config.json")
    config["world"] = _world_ref(plan, split).as_dict()
    config["protocol"] = {"name": plan.name, "request_of": list(plan.splits)}
    write_json(run_dir / "config.json", config)


# -- plots ---------------------------------------------------------------------------------------------

def metric_value(aggs: dict[str, Any], key: str) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of an aggregate key, nan where absent; KS D lives inside forget_quality."""
    if key == "forget_quality/ks_statistic":
        fq = aggs.get("forget_quality") or {}
        value = fq.get("ks_statistic", math.nan)
        return value, math.nan, math.nan
    agg = aggs.get(key) or {}
    return agg.get("value", math.nan), agg.get("ci_low", math.nan), agg.get("ci_high", math.nan)


def plot_protocol(result: dict[str, Any], path: Path) -> Path:
    """One PNG: a panel per metric against size or request number, with target and oracle lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    scal = result["protocol"] == "scalability"
    xs = [s["n_forget_items"] if scal else s["step"] for s in steps]
    panels = [(k, label, log) for k, label, log in PLOT_METRICS
              if any(not math.isnan(metric_value(s["aggregates"], k)[0]) for s in steps)]
    if not scal and any("per_request" in s for s in steps):
        panels.append(("per_request", "forget probability of each request", False))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label, log) in zip(axes.flat, panels, strict=False):
        if key == "per_request":
            _plot_per_request(ax, steps)
        else:
            _plot_metric(ax, steps, xs, key, log)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(result["x"], fontsize=8)
        ax.set_xticks(xs, [f"{x}\n{s['split']}" for x, s in zip(xs, steps, strict=True)], fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    world = result["world"]
    fig.suptitle(f"{result['protocol']}: {result['method']} on world {world['preset']}@{world['seed']}",
                 fontsize=12)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _plot_metric(ax, steps: list[dict], xs: list[int], key: str, log: bool) -> None:
    values = np.array([metric_value(s["aggregates"], key) for s in steps])  # (steps, 3): value, low, high
    ax.plot(xs, values[:, 0], "o-", color="C0", label="unlearned")
    if not np.all(np.isnan(values[:, 1])):
        ax.fill_between(xs, values[:, 1], values[:, 2], color="C0", alpha=0.2)
    for role, style in (("target", "s--"), ("oracle", "^:")):
        if all(role in s for s in steps):
            ref = [metric_value(s[role], key)[0] for s in steps]
            if not all(math.isnan(v) for v in ref):
                ax.plot(xs, ref, style, color="C1" if role == "target" else "C2", label=role, alpha=0.8)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def _plot_per_request(ax, steps: list[dict]) -> None:
    for j in range(len(steps)):  # request j + 1 exists from step j + 1 on
        later = [s for s in steps if len(s["per_request"]) > j]
        ax.plot([s["step"] for s in later], [s["per_request"][j].get("probability", math.nan) for s in later],
                "o-", label=f"request {j + 1}")
    ax.legend(fontsize=7)
