"""The optional parts of a cell: PrivLeak from the text suite, and the robustness attacks.

Both live in packages of their own (`obliviate.evals.text`, `obliviate.attacks`). A bench uses
them when they are installed: PrivLeak silently (it is one more column), the attacks only when
asked with `--attacks`, which fails at once with one line when the attacks are not available.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def preload() -> None:
    """Import the optional suites that are installed, so forked cells share them instead of importing each."""
    for name in ("obliviate.evals.text", "obliviate.attacks.runner"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: the cells that need it say so


# -- PrivLeak (MUSE), from the text suite -------------------------------------------------------------------

def text_suite_available() -> bool:
    return _importable("obliviate.evals.text")


def world_privleak_data(ref, split: str):
    """The world's passages in MUSE's shape; with generation off, the suite scores PrivLeak only."""
    from obliviate.evals.text import world_muse_data
    from obliviate.world import get_world

    return world_muse_data(get_world(ref.preset, ref.seed), split)


def oracle_privleak(model, tokenizer, data) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The oracle's text aggregates (its PrivLeak against itself is 0) and its Min-K% scores."""
    from obliviate.evals.text import privleak_summary, run_text_suite

    result = run_text_suite(model, tokenizer, data, oracle=None, generate=False)
    own = result.as_oracle("oracle")
    aggregates = {**result.aggregates, **privleak_summary(own.forget, own.holdout, own)}
    return aggregates, {"forget": own.forget.tolist(), "holdout": own.holdout.tolist()}


def privleak(model, tokenizer, data, oracle_scores: dict[str, list[float]], out_dir: Path | None = None
             ) -> dict[str, Any]:
    """The text suite's aggregates (MUSE AUC, PrivLeak against the oracle's scores) for one model."""
    import numpy as np

    from obliviate.evals.text import OracleAUC, evaluate_text

    oracle = OracleAUC.from_scores(np.asarray(oracle_scores["forget"]), np.asarray(oracle_scores["holdout"]),
                                   "oracle")
    payload, _ = evaluate_text(model, tokenizer, data, out_dir, oracle=oracle, generate=False)
    return payload["aggregates"]


# -- robustness attacks ---------------------------------------------------------------------------------

def attack_names() -> list[str]:
    """The registered attacks in their usual order; a one-line ConfigError when they are not available."""
    try:
        attacks = importlib.import_module("obliviate.attacks")
    except ImportError:
        attacks = None
    registry = getattr(attacks, "ATTACKS", None)
    if not registry:
        raise ConfigError("--attacks: the robustness attacks (obliviate.attacks) are not available in this "
                          "installation; run the bench without --attacks")
    order = list(getattr(attacks, "ORDER", ()))
    return [n for n in order if n in registry] + [n for n in registry if n not in order]


def parse_attacks(text: str | None) -> list[str]:
    """"all" or "a,b" -> attack names, checked against the attack registry."""
    if not text:
        return []
    known = attack_names()
    if text.strip() == "all":
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in known:
            from obliviate.config import did_you_mean

            raise ConfigError(f"--attacks: unknown attack '{name}'{did_you_mean(name, known)}; "
                              f"choose from {', '.join(known)} or all")
    return names


def run_attacks(names: list[str], run_dir: Path) -> dict[str, Any]:
    """Attack a world run (against its world's oracle and target) and keep what the leaderboard needs.

    The attacks write their own attacks.json and attack_items.jsonl into the run. Returned:
    {"recovery": {attack: value}, "robustness": harmonic mean, "status": {attack: status or reason},
    "curves": {"relearn": {"x", "unlearned", "oracle", "target"}}}.
    """
    from obliviate.attacks.runner import attack_configs, load_models
    from obliviate.attacks.runner import run_attacks as attack
    from obliviate.attacks.summary import write_attack_results

    subjects = load_models(str(run_dir), progress=False)
    done = attack(names, subjects, attack_configs(names, []), progress=False)
    summary = write_attack_results(run_dir, done.reports, done.rows)
    rows = summary.get("attacks", {})
    out: dict[str, Any] = {
        "recovery": {n: r["recovery"] for n, r in rows.items() if r.get("counts", True) and r.get("recovery")
                     is not None},
        "robustness": summary.get("harmonic_mean"),
        "status": {n: r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"
                   for n, r in rows.items()},
    }
    curves = ((done.reports.get("relearn") or {}).get("extra") or {})
    if curves:
        out["curves"] = {"relearn": relearn_curve(curves)}
    return out


def relearn_curve(extra: dict[str, Any]) -> dict[str, Any]:
    """The relearn attack's per-role curves as one {"x", role: [knows]} record."""
    curve: dict[str, Any] = {"xlabel": "relearning steps", "ylabel": "held-out forget facts known"}
    for role, info in extra.items():
        points = (info or {}).get("curve") or []
        if points:
            curve["x"] = [p["step"] for p in points]
            curve[role] = [p.get("knows") for p in points]
    return curve
