"""The bench's verdict in sentences, computed from the leaderboard's numbers.

For each forget split:

- **forget quality**: forget quality is itself a test against the oracle (the KS test between the
  model's and the oracle's forget-set truth ratios), so a method *reaches the oracle's forget
  quality* when that test does not tell it from the oracle (p ≥ ALPHA) on every seed;
- **utility**: a method *keeps utility* when its mean model utility lies within the oracle's 95%
  interval over seeds (with one seed there is no interval, and the sentence says so);
- **the Pareto front**: the methods no other method beats on both forget quality and model utility;
- **attacks**: for each attack, the mean oracle-relative recovery (0: no more than the oracle knows,
  1: everything back) and the method it recovers most from.

Every number in a sentence is the leaderboard's, so the sentences and the table cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05


def _mean(row: dict, key: str) -> float:
    m = (row.get("metrics") or {}).get(key) or {}
    value = m.get("mean")
    return float(value) if value is not None and math.isfinite(value) else math.nan


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value != 0 and abs(value) < 0.01 else f"{value:.3f}"


def _names(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def reaches_oracle(row: dict, alpha: float = ALPHA) -> tuple[bool, int, int]:
    """(every seed's forget quality ≥ alpha, seeds passing, seeds with a value)."""
    values = [v for v in ((row.get("metrics") or {}).get("forget_quality") or {}).get("values", [])
              if v is not None and math.isfinite(v)]
    passing = sum(v >= alpha for v in values)
    return bool(values) and passing == len(values), passing, len(values)


def pareto_front(rows: Sequence[dict]) -> list[str]:
    """Methods that no other method beats on both forget quality and model utility (ties do not beat)."""
    points = {r["model"]: (_mean(r, "forget_quality"), _mean(r, "model_utility")) for r in rows}
    points = {k: v for k, v in points.items() if all(math.isfinite(x) for x in v)}
    front = []
    for name, (fq, mu) in points.items():
        dominated = any(ofq >= fq and omu >= mu and (ofq > fq or omu > mu)
                        for other, (ofq, omu) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: -points[n][0])


def split_verdict(rows: Sequence[dict], alpha: float = ALPHA) -> list[str]:
    """The sentences for one split's rows (the leaderboard's, anchors included)."""
    methods = [r for r in rows if r["kind"] == "method"]
    oracle = next((r for r in rows if r["model"] == "oracle"), None)
    if not methods:
        return []
    out = []
    with_fq = [r for r in methods if math.isfinite(_mean(r, "forget_quality"))]
    if with_fq:
        reach = [r for r in with_fq if reaches_oracle(r, alpha)[0]]
        fq = {r["model"]: _mean(r, "forget_quality") for r in with_fq}
        if reach:
            text = (f"{len(reach)} of {len(with_fq)} methods reach the oracle's forget quality (the KS test against "
                    f"the oracle's truth ratios does not tell them apart, p ≥ {alpha} on every seed): "
                    + _names([f"{r['model']} (p = {_fmt(fq[r['model']])})" for r in reach]) + ".")
        else:
            best = max(with_fq, key=lambda r: fq[r["model"]])
            text = (f"No method reaches the oracle's forget quality: the KS test tells every one from the oracle "
                    f"(p < {alpha} on some seed); the closest is {best['model']} (p = {_fmt(fq[best['model']])}).")
        partial = [(r["model"], *reaches_oracle(r, alpha)[1:]) for r in with_fq if r not in reach]
        partial = [(name, passing, n) for name, passing, n in partial if passing > 0]
        if partial:
            seeds = [f"{name} ({passing} of {n})" for name, passing, n in partial]
            text += " On some seeds only: " + _names(seeds) + "."
        out.append(text)
    out += _utility_sentence(methods, oracle)
    front = pareto_front(methods)
    if front:
        out.append(f"Pareto front (no method has both higher forget quality and higher model utility): "
                   f"{_names(front)}.")
    out += _attack_sentences(methods)
    return out


def _utility_sentence(methods: Sequence[dict], oracle: dict | None) -> list[str]:
    mu = {r["model"]: _mean(r, "model_utility") for r in methods}
    mu = {k: v for k, v in mu.items() if math.isfinite(v)}
    if not mu or oracle is None or not math.isfinite(_mean(oracle, "model_utility")):
        return []
    stats = oracle["metrics"]["model_utility"]
    low, high = stats.get("ci_low"), stats.get("ci_high")
    ref = _mean(oracle, "model_utility")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        ranked = sorted(mu, key=lambda k: abs(mu[k] - ref))
        return [f"The oracle's model utility is {_fmt(ref)} (one seed: no interval to compare with); closest: "
                + _names([f"{k} ({_fmt(mu[k])})" for k in ranked[:3]]) + "."]
    within = [k for k, v in mu.items() if low <= v <= high]
    below = sorted([k for k, v in mu.items() if v < low], key=lambda k: mu[k])
    above = [k for k, v in mu.items() if v > high]
    text = f"Model utility within the oracle's 95% interval [{_fmt(low)}, {_fmt(high)}]: "
    text += (_names(within) if within else "no method") + "."
    if below:
        text += " Below it: " + _names([f"{k} ({_fmt(mu[k])})" for k in below]) + "."
    if above:
        text += " Above it: " + _names([f"{k} ({_fmt(mu[k])})" for k in above]) + "."
    return [text]


def _attack_sentences(methods: Sequence[dict]) -> list[str]:
    attacks = sorted({a for r in methods for a in (r.get("attacks") or {})})
    if not attacks:
        return ["No attacks were run (bench --attacks all measures what relearning, rewordings and the other "
                "attacks bring back)."]
    parts = []
    for attack in attacks:
        rec = {r["model"]: (r["attacks"].get(attack) or {}).get("mean") for r in methods}
        rec = {k: v for k, v in rec.items() if v is not None and math.isfinite(v)}
        if not rec:
            continue
        worst = max(rec, key=lambda k: rec[k])
        mean = sum(rec.values()) / len(rec)
        parts.append(f"{attack} brings back {mean:.0%} on average (recovery relative to the oracle), most from "
                     f"{worst} ({rec[worst]:.0%})")
    return ["What the attacks bring back: " + "; ".join(parts) + "."] if parts else []


def verdict(board: dict[str, Any], alpha: float = ALPHA) -> dict[str, list[str]]:
    """{split: [sentence, ...]} for a leaderboard (`leaderboard.build_leaderboard`)."""
    by_split: dict[str, list[dict]] = {}
    for row in board["rows"]:
        by_split.setdefault(row["split"], []).append(row)
    return {split: split_verdict(rows, alpha) for split, rows in by_split.items()}
