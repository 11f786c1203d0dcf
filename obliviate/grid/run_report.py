"""`report.html` for one evaluated run (see `bench.report` for the page itself).

What the run directory holds (results.json, items.jsonl, config.json, train_log.jsonl) is joined
with what can be recovered cheaply: on the built-in world, the questions and answers of each item
(the world is regenerated from its seed), the target's and the oracle's aggregates (the shared
evaluation cache, filled by `eval`, `demo` and `bench`) and their greedy answers to the forget
questions (generated here, a few batches). On user data, the questions come from the run's forget
and retain files when their hashes match the evaluated sets, and the oracle's answers from its
items.jsonl when the evaluation named one.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.grid import plots
from obliviate.grid.report import esc, figure, page, pre, table
from obliviate.io import atomic_open, read_json, read_jsonl

# (aggregate key, label) of the headline table and bars.
HEADLINE = [
    ("forget_quality", "forget quality (KS p) ↑"),
    ("model_utility", "model utility ↑"),
    ("forget/probability", "forget probability ↓"),
    ("forget/rouge", "forget ROUGE-L ↓"),
    ("forget/truth_ratio", "forget truth ratio"),
    ("forget/extraction_strength", "forget extraction strength ↓"),
    ("retain/probability", "retain probability ↑"),
    ("retain/rouge", "retain ROUGE-L ↑"),
    ("retain/truth_ratio", "retain truth ratio ↑"),
    ("mia/min_k_auc", "MIA AUC, Min-K%"),
]
BAR_KEYS = [(k, label.rstrip(" ↑↓")) for k, label in HEADLINE if k not in ("forget_quality", "mia/min_k_auc")]
ITEM_FIELDS = [("probability", "probability"), ("truth_ratio", "truth ratio R"), ("rouge", "ROUGE-L"),
               ("extraction_strength", "extraction"), ("exact_memorisation", "exact mem.")]


@dataclass
class RunContext:
    """What the report adds to the run's own files; every part may be empty."""

    questions: dict[str, list[Any]] = field(default_factory=dict)  # set name -> QAItems, aligned with items.jsonl
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)  # "target"/"oracle" -> aggregates
    generations: dict[str, list[str]] = field(default_factory=dict)  # "target"/"oracle" -> forget answers
    notes: list[str] = field(default_factory=list)


def run_label(config: dict[str, Any]) -> str | None:
    """The name a run is shown under: its method's labelled-variant name for its config (`spul+gate`)."""
    from obliviate.methods import method_label

    method = config.get("method")
    return method_label(method, config.get("method_config")) if method else None


def write_run_report(run_dir: Path, out: Path | None = None, context: RunContext | None = None) -> Path:
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    items = read_jsonl(run_dir / "items.jsonl") if (run_dir / "items.jsonl").is_file() else []
    ctx = context if context is not None else build_context(run_dir, config, results)
    name = run_label(config) or run_dir.name
    columns = {**({"target": ctx.anchors["target"]} if "target" in ctx.anchors else {}),
               name: results.get("aggregates", {}),
               **({"oracle": ctx.anchors["oracle"]} if "oracle" in ctx.anchors else {})}
    subtitle = f"{run_dir}: {name} on {config.get('model', results.get('target', '?'))}"
    if config.get("world"):
        w = config["world"]
        subtitle += f" (world {w.get('preset')}@{w.get('seed')}, {w.get('split')})"
    sections = [
        ("tradeoff", "Forget quality × model utility", figure(_tradeoff(columns, name, config), "tradeoff",
            "The run beside the target (×) and the exact-retrain oracle (★); model utility with its item-level "
            "bootstrap CI. Up and right is better; forget quality on a log scale.")),
        ("metrics", "Headline metrics", _headline_table(columns)
         + figure(plots.grouped_metrics(columns, BAR_KEYS), "metrics",
                  "Headline metrics with their 95% bootstrap CIs over items.")
         + _text_table(run_dir)),
        ("training", "Training", figure(plots.curves(_train_panels(run_dir), "training"), "training",
                                        "Per-step values from train_log.jsonl.")),
        ("attacks", "Robustness attacks", _attack_section(run_dir)),
        ("forget", "Forget questions: target, unlearned, oracle", _side_by_side(items, ctx, name)),
        ("items", "Every item", _item_table(items, ctx)),
        ("notes", "Notes", "".join(f"<p>{esc(n)}</p>" for n in ctx.notes)),
        ("provenance", "Command, config, versions and data", _provenance(config, results)),
    ]
    text = page(f"obliviate run: {run_dir.name}", subtitle, sections)
    path = out or run_dir / "report.html"
    with atomic_open(path) as handle:
        handle.write(text)
    return path


# -- what the run does not hold ---------------------------------------------------------------------------------------

def build_context(run_dir: Path, config: dict[str, Any], results: dict[str, Any]) -> RunContext:
    ctx = RunContext()
    if config.get("world"):
        _world_context(ctx, config, results)
    else:
        _user_context(ctx, config, results)
    return ctx


def _world_context(ctx: RunContext, config: dict[str, Any], results: dict[str, Any]) -> None:
    from obliviate.models.generation import generate_answers
    from obliviate.models.loading import load_model
    from obliviate.workflow import EvalSets, WorldRef, cached_world_eval
    from obliviate.world import build_world_models, get_world

    ref = WorldRef(**config["world"])
    world = get_world(ref.preset, ref.seed)
    max_retain = (results.get("eval_sets") or {}).get("max_retain")
    sets = EvalSets(world.forget_set(ref.split), world.retain_set(ref.split, max_items=max_retain),
                    world.utility_sets(), world.holdout_set())
    if sets.hashes() != results.get("data_hashes"):
        ctx.notes.append("The run was evaluated on other sets than its world's, so items are shown without their "
                         "questions and without the target and oracle.")
        return
    ctx.questions = {"forget": sets.forget, "retain": sets.retain, **sets.utility, "holdout": sets.holdout or []}
    models = build_world_models(ref.preset, ref.seed, ref.split, which=(), progress=False, arch=ref.arch)
    if models.target is None or models.oracle is None:
        ctx.notes.append("The world's target or oracle is not in the model cache; build it with "
                         f"`obliviate world build --preset {ref.preset} --seed {ref.seed} --split {ref.split}`.")
        return
    from obliviate.grid.cell import with_self_forget_quality

    oracle_eval = cached_world_eval(ref, "oracle", models.oracle, sets)
    oracle_tr = oracle_eval["_forget_truth_ratios"]
    target_eval = cached_world_eval(ref, "target", models.target, sets, oracle_tr)
    ctx.anchors = {"target": target_eval["aggregates"],
                   "oracle": with_self_forget_quality(oracle_eval["aggregates"], oracle_tr)}
    questions = [it.question for it in sets.forget]
    for role, path in (("target", models.target), ("oracle", models.oracle)):
        model, tok = load_model(path)
        ctx.generations[role] = generate_answers(model, tok, questions, max_new_tokens=32)


def _user_context(ctx: RunContext, config: dict[str, Any], results: dict[str, Any]) -> None:
    from obliviate.data import data_hash, load_items
    from obliviate.errors import ObliviateError

    hashes = results.get("data_hashes") or {}
    for name in ("forget", "retain"):
        path = config.get(name)
        if not path:
            continue
        try:
            loaded = load_items(path, "qa")
        except ObliviateError:
            continue
        if data_hash(loaded) == hashes.get(name):
            ctx.questions[name] = loaded
    oracle = results.get("oracle")
    if oracle and (Path(oracle) / "items.jsonl").is_file():
        rows = [r for r in read_jsonl(Path(oracle) / "items.jsonl") if r.get("set") == "forget"]
        if rows and all("generation" in r for r in rows):
            ctx.generations["oracle"] = [r["generation"] for r in rows]
    if "forget" not in ctx.questions:
        ctx.notes.append("The questions are not shown: the run's config names no forget file whose contents "
                         "match the evaluated forget set.")


# -- sections ------------------------------------------------------------------------------------------------------

def _tradeoff(columns: dict[str, dict], name: str, config: dict[str, Any]) -> str | None:
    rows = []
    for label, aggs in columns.items():
        fq, mu = aggs.get("forget_quality") or {}, aggs.get("model_utility") or {}
        metrics = {"forget_quality": {"mean": fq.get("value", math.nan)},
                   "model_utility": {"mean": mu.get("value", math.nan), "ci_low": mu.get("ci_low", math.nan),
                                     "ci_high": mu.get("ci_high", math.nan)}}
        rows.append({"model": label, "kind": "anchor" if label in ("target", "oracle") and label != name
                     else "method", "metrics": metrics})
    split = (config.get("world") or {}).get("split", "")
    return plots.tradeoff({split: rows})


def _agg_text(a: dict[str, Any] | None) -> tuple[str, float | None]:
    from obliviate.grid.leaderboard import fmt

    if not a:
        return "—", None
    text = fmt(a.get("value"))
    if a.get("ci_low") is not None and math.isfinite(a.get("ci_low", math.nan)):
        text += f" [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]"
    return text, a.get("value")


def _headline_table(columns: dict[str, dict]) -> str:
    rows = [[label, *[_agg_text(aggs.get(key)) for aggs in columns.values()]]
            for key, label in HEADLINE if any(key in aggs for aggs in columns.values())]
    return table(["metric", *columns], rows, sortable=False)


def _text_table(run_dir: Path) -> str:
    path = run_dir / "text_results.json"
    if not path.is_file():
        return ""
    aggs = read_json(path).get("aggregates", {})
    rows = [[key, _agg_text(a)] for key, a in aggs.items()]
    return "<h3>Text suite (MUSE)</h3>" + table(["metric", "value [95% CI]"], rows, sortable=False)


def _train_panels(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if "step" in r]
    keys = [k for k in (rows[0] if rows else {}) if k != "step" and isinstance(rows[0][k], (int, float))]
    return [{"title": key, "xlabel": "step", "series": [{"label": key, "x": [r["step"] for r in rows],
                                                         "y": [r.get(key, math.nan) for r in rows]}]}
            for key in keys[:6]]


def _attack_section(run_dir: Path) -> str:
    """attacks.json (written by `obliviate attack` or `bench --attacks`): recovery per attack, relearn curve."""
    from obliviate.grid.report import relearn_panel

    path = run_dir / "attacks.json"
    if not path.is_file():
        return ""
    data = read_json(path)
    summary = data.get("robustness") or {}
    rows = []
    for name, row in (summary.get("attacks") or {}).items():
        ci = row.get("recovery_ci") or [None, None]
        rec = row.get("recovery")
        text = "—" if rec is None else f"{rec:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else "")
        rows.append([name, row.get("status") or "", (text, rec), row.get("robustness") if row.get("robustness")
                     is not None else "—", row.get("reason") or ""])
    out = table(["attack", "status", "recovery [95% CI]", "robustness", "note"], rows)
    out += (f'<p class="muted">Robustness (harmonic mean over {summary.get("n", 0)} attacks): '
            f'{esc(_fmt(summary.get("harmonic_mean")))}. {esc(summary.get("definition", ""))}</p>')
    extra = ((data.get("attacks") or {}).get("relearn") or {}).get("extra") or {}
    if extra:
        from obliviate.grid.extras import relearn_curve

        panel = relearn_panel(relearn_curve(extra), "relearn")
        out += figure(plots.curves([panel], "relearn"), "relearn",
                      "Relearning: share of held-out forget facts known after each fine-tuning step on the others.")
    return out


def _fmt(value: Any) -> str:
    from obliviate.grid.leaderboard import fmt

    return fmt(value) if isinstance(value, (int, float)) else "—"


def _side_by_side(items: list[dict], ctx: RunContext, name: str) -> str:
    from obliviate.metrics import rouge_l

    forget = [r for r in items if r.get("set") == "forget"]
    if not forget or not any("generation" in r for r in forget):
        return ""
    qs = ctx.questions.get("forget") or []
    known = len(qs) == len(forget)
    answers = [q.answer for q in qs] if known else None
    rouge = {role: rouge_l(answers, gens)["recall"] for role, gens in ctx.generations.items()
             if answers and len(gens) == len(answers)}
    headers = ["#", "question", "answer", *(["target"] if "target" in ctx.generations else []), name,
               *(["oracle"] if "oracle" in ctx.generations else []),
               *[f"ROUGE {role}" for role in ("target",) if role in rouge], f"ROUGE {name}",
               *[f"ROUGE {role}" for role in ("oracle",) if role in rouge]]
    rows = []
    for i, row in enumerate(forget):
        q = qs[i] if known else None
        cells: list[Any] = [row.get("index", i), q.question if q else "—", q.answer if q else "—"]
        if "target" in ctx.generations:
            cells.append(ctx.generations["target"][i] if i < len(ctx.generations["target"]) else "—")
        cells.append(row.get("generation", "—"))
        if "oracle" in ctx.generations:
            cells.append(ctx.generations["oracle"][i] if i < len(ctx.generations["oracle"]) else "—")
        if "target" in rouge:
            cells.append(float(rouge["target"][i]))
        cells.append(float(row["rouge"]) if "rouge" in row else "—")
        if "oracle" in rouge:
            cells.append(float(rouge["oracle"][i]))
        rows.append(cells)
    return (table(headers, rows, scroll=True)
            + '<p class="muted">Greedy answers (32 new tokens) to each forget question; ROUGE-L recall against '
              "the answer. Click a column to sort.</p>")


def _item_table(items: list[dict], ctx: RunContext) -> str:
    if not items:
        return ""
    fields = [(k, label) for k, label in ITEM_FIELDS if any(k in r for r in items)]
    has_gen = any("generation" in r for r in items)
    headers = ["set", "#", "subject", "question", "answer", *(["generation"] if has_gen else []),
               *[label for _, label in fields]]
    rows = []
    for r in items:
        qs = ctx.questions.get(r.get("set"), [])
        i = r.get("index", 0)
        q = qs[i] if i < len(qs) else None
        cells: list[Any] = [r.get("set"), i, r.get("subject") or "", q.question if q else "—", q.answer if q else "—"]
        if has_gen:
            cells.append(r.get("generation", ""))
        cells += [float(r[k]) if isinstance(r.get(k), (int, float)) else "—" for k, _ in fields]
        rows.append(cells)
    return table(headers, rows, scroll=True) + (
        f'<p class="muted">{len(items)} items from items.jsonl; truth ratio R = perturbed over paraphrased '
        "probability (geometric mean). Click a column to sort.</p>")


def _provenance(config: dict[str, Any], results: dict[str, Any]) -> str:
    command = config.get("command") or results.get("command") or []
    shown = {k: v for k, v in config.items() if k not in ("command", "versions", "data_hashes")}
    eval_info = {k: v for k, v in results.items() if k not in ("aggregates", "versions", "data_hashes")}
    return ("<h3>Command</h3>" + pre(shlex.join(command) if command else "(not recorded)")
            + "<h3>Run config</h3>" + pre(shown) + "<h3>Evaluation</h3>" + pre(eval_info)
            + "<h3>Versions</h3>" + pre({"unlearn": config.get("versions"), "eval": results.get("versions")})
            + "<h3>Data hashes</h3>" + pre({"training": config.get("data_hashes"),
                                           "evaluation": results.get("data_hashes")}))
