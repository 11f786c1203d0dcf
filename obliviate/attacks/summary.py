"""The robustness summary: each attack's oracle-relative recovery and the harmonic mean of robustness.

Per attack: its status, recovery (base.py) with the 95% CI and its baseline (the oracle, or chance
when there is none: recovery relative to the target), and robustness = 1 - clip(recovery,
0, 1). The summary's `harmonic_mean` is taken over the attacks that produced a recovery and count
towards it (not the `direct` reference row); attacks left out are listed with the reason (not
applicable, cannot judge this model, uninformative on these models). The harmonic mean is
dominated by the weakest attack: one attack that gets everything back gives 0.

Written atomically into the run directory:

    RUN/attacks.json          every attack's report (merged with earlier ones) and the "robustness" block
    RUN/attack_items.jsonl    per-item rows: attack, role, variant, key, item, knows, answers, ...
    RUN/results.json          gains the same "robustness" block, when the run has been evaluated

Running one attack replaces that attack's report and rows and keeps the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from obliviate.attacks.base import ATTACKS, harmonic_mean, robustness
from obliviate.io import read_json, read_jsonl, write_json, write_jsonl

DEFINITION = ("recovery = (s_unlearned - s_oracle) / (s_target - s_oracle) with s the fraction of forget facts the "
              "model ranks correctly under the attack; without an oracle (baseline 'chance'), recovery relative to "
              "the target = (s_unlearned - s_chance) / (s_target - s_chance), the share of the target's "
              "above-chance knowledge the attack gets out of the unlearned model, s_chance = 1/(k+1) with k wrong "
              "alternatives; robustness = 1 - clip(recovery, 0, 1); harmonic_mean over the attacks with a "
              "recovery (0: some attack recovers everything, 1: every attack finds no more than the baseline)")


def robustness_summary(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"attacks": {name: row}, "harmonic_mean", "n", "left_out": {name: reason}, "definition"}."""
    rows: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    counted = []
    for name, rep in reports.items():
        counts = ATTACKS[name].in_summary if name in ATTACKS else True
        row = {"status": rep.get("status"), "recovery": rep.get("recovery"), "recovery_ci": rep.get("recovery_ci"),
               "robustness": robustness(rep.get("recovery")), "counts": counts}
        if rep.get("baseline"):
            row["baseline"] = rep["baseline"]
        if rep.get("status") != "ok":
            row["reason"] = rep.get("reason")
        elif rep.get("recovery") is None:
            row["reason"] = rep.get("note")
        rows[name] = row
        if not counts:
            continue
        if row["robustness"] is None:
            left_out[name] = row.get("reason") or "no recovery"
        else:
            counted.append(row["robustness"])
    return {"attacks": rows, "harmonic_mean": harmonic_mean(counted), "n": len(counted), "left_out": left_out,
            "definition": DEFINITION}


def write_attack_results(run_dir: str | Path, reports: Mapping[str, dict], rows: Mapping[str, Mapping[str, list]],
                         meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge `reports` (and their rows) into RUN/attacks.json and RUN/attack_items.jsonl; return the summary."""
    run_dir = Path(run_dir)
    path, items_path = run_dir / "attacks.json", run_dir / "attack_items.jsonl"
    merged = dict(read_json(path).get("attacks", {})) if path.exists() else {}
    merged.update(reports)
    summary = robustness_summary(merged)
    kept = [r for r in read_jsonl(items_path) if r.get("attack") not in reports] if items_path.exists() else []
    fresh = [{"attack": name, "role": role, **row}
             for name, by_role in rows.items() for role, role_rows in by_role.items() for row in role_rows]
    write_jsonl(items_path, kept + fresh)
    write_json(path, {"attacks": merged, "robustness": summary, **(meta or {})})
    results = run_dir / "results.json"
    if results.exists():
        payload = read_json(results)
        payload["robustness"] = summary
        write_json(results, payload)
    return summary
