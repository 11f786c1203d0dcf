"""`report.html`: one self-contained static page for a bench, a run, or a protocol directory.

No network and no server: the plots are inline SVG drawn by matplotlib (`bench.plots`), the style
and the table sorting (a few lines of JavaScript) are inline, and every piece of text from results
or data is HTML-escaped.

- **bench** (a directory with bench.json): the forget-quality × model-utility trade-off (each
  method a point with CI whiskers over seeds, target and oracle as anchors, log FQ), the leaderboard
  table, a bar chart per metric with its CIs, the attack recovery heat map (methods × attacks) and
  relearning curves when attacks ran, scalability/sustainability curves found under the bench, the
  unfinished cells, and the command, settings, versions and data hashes.
- **run** (a run directory evaluated with `obliviate eval`, or a bench cell's `run/`): the run
  beside the target and the oracle (world runs), the headline metrics with their item-level CIs,
  the training curve, the forget questions with the target's, the unlearned model's and the
  oracle's generations side by side, the per-item table (sortable), and the provenance.
- **protocol** (a directory with scalability.json or sustainability.json): its curves.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.errors import ObliviateError
from obliviate.grid import plots
from obliviate.grid.spec import BENCH_FILE, ERROR, RESULT, cell_state, load_spec
from obliviate.io import atomic_open, read_json

PROTOCOL_FILES = ("scalability.json", "sustainability.json")

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:12px 28px 60px}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:34px 0 8px;border-bottom:1px solid #ddd}
nav a{margin-right:14px;font-size:13px}.muted{color:#666;font-size:13px}
figure.plot{margin:10px 0;overflow-x:auto;background:#fff;border:1px solid #e4e4e4;padding:8px}
figure.plot svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:12.5px;background:#fff;margin:8px 0}
th,td{border:1px solid #e0e0e0;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f3;position:sticky;top:0}table.sortable th{cursor:pointer}
table.sortable th:after{content:" ⇅";color:#aaa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.anchor td{background:#fbf7e9}.scroll{max-height:560px;overflow:auto;border:1px solid #eee}
pre{background:#f3f3f5;padding:10px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure.plot{flex:1 1 440px;margin:0}
"""

# Click a header to sort by that column; numeric cells carry their value in data-v.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.dataset.dir !== "asc";
      th.dataset.dir = asc ? "asc" : "desc";
      var key = function (tr) {
        var td = tr.children[col], v = td.dataset.v !== undefined ? td.dataset.v : td.textContent;
        var n = parseFloat(v);
        return isNaN(n) ? String(v).toLowerCase() : n;
      };
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    });
  });
});
document.body.dataset.ready = "1";
"""


# -- HTML building blocks ----------------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def figure(svg: str | None, plot_id: str, caption: str) -> str:
    if svg is None:
        return ""
    return f'<figure class="plot" id="plot-{esc(plot_id)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.2e}" if value != 0 and abs(value) < 1e-2 else f"{value:.3f}" if abs(value) < 100 \
            else f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], sortable: bool = True, row_classes=None,
          scroll: bool = False) -> str:
    """An HTML table; a cell is a value, or (text, sort value) for a formatted number."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                text, sort = cell
                v = "" if sort is None or (isinstance(sort, float) and not math.isfinite(sort)) else f"{sort!r}"
                cells.append(f'<td class="num" data-v="{esc(v)}">{esc(text)}</td>')
            elif isinstance(cell, (int, float)) and not isinstance(cell, bool):
                cells.append(f'<td class="num" data-v="{esc(repr(cell))}">{esc(_num(cell))}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out = (f'<table class="{"sortable" if sortable else "plain"}"><thead><tr>{head}</tr></thead>'
           f"<tbody>{''.join(body)}</tbody></table>")
    return f'<div class="scroll">{out}</div>' if scroll else out


def pre(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, default=str, allow_nan=True)
    return f"<pre>{esc(text)}</pre>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: sections are (anchor id, heading, inner HTML); empty ones are left out."""
    sections = [s for s in sections if s[2]]
    nav = "".join(f'<a href="#{esc(sid)}">{esc(head)}</a>' for sid, head, _ in sections)
    body = "".join(f'<section id="{esc(sid)}"><h2>{esc(head)}</h2>{inner}</section>' for sid, head, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"muted\">{esc(subtitle)}</p><nav>{nav}</nav>{body}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def _write(path: Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return path


# -- dispatch ---------------------------------------------------------------------------------------------------

def write_report(path: str | Path, out: Path | None = None) -> Path:
    """report.html for a bench, run or protocol directory (into it, unless `out` is given)."""
    path = Path(path)
    if (path / BENCH_FILE).is_file():
        return write_bench_report(path, out)
    if (path / "results.json").is_file():
        from obliviate.grid.run_report import write_run_report

        return write_run_report(path, out)
    if any((path / name).is_file() for name in PROTOCOL_FILES):
        return write_protocol_report(path, out)
    if (path / "artifact.json").is_file():
        raise ObliviateError(f"{path}: the run has no results.json yet; run `obliviate eval {path}` first")
    raise ObliviateError(f"{path}: not a bench, run or protocol directory (no bench.json, results.json, "
                         "scalability.json or sustainability.json)")


# -- bench ----------------------------------------------------------------------------------------------------

def rows_by_split(board: dict[str, Any]) -> dict[str, list[dict]]:
    """The leaderboard's rows grouped by forget split, in order (the plots' input)."""
    out: dict[str, list[dict]] = {}
    for row in board["rows"]:
        out.setdefault(row["split"], []).append(row)
    return out


def write_bench_report(root: Path, out: Path | None = None) -> Path:
    from obliviate.grid.leaderboard import COLUMN, build_leaderboard, cell_text

    root = Path(root)
    board = build_leaderboard(root)
    bench = read_json(root / BENCH_FILE)
    spec = board["spec"]
    by_split = rows_by_split(board)
    keys = board["columns"]
    headers = ["split", "model", "seeds", *[board["labels"][k] for k in keys]]
    rows, classes = [], []
    for row in board["rows"]:
        cells: list[Any] = [row["split"], row["model"], row["n_seeds"]]
        for k in keys:
            m = row["metrics"].get(k)
            cells.append((cell_text(m, COLUMN[k].log), m["mean"] if m else None))
        rows.append(cells)
        classes.append("anchor" if row["kind"] == "anchor" else "")
    dots = "".join(figure(plots.metric_dots(by_split, k, board["labels"][k], COLUMN[k].log, scale=COLUMN[k].scale,
                                            higher_is_better=COLUMN[k].higher_is_better), f"dots-{k}",
                          f"{board['labels'][k]}: each method's mean over seeds with its 95% interval over seeds, "
                          "best first, against the oracle (gold line, its interval shaded) and the target (black "
                          "dashed line)")
                   for k in keys)
    where = f"world {spec['world']}" if spec.get("world") else f"model {spec.get('model')}"
    subtitle = (f"{root.name}: {len(spec['methods'])} methods × {len(spec['splits'])} splits × "
                f"{len(spec['seeds'])} seeds on {where}. Intervals: {board['ci']}.")
    sections = [
        ("verdict", "Verdict", _verdict_section(board)),
        ("ranked", "Methods against the oracle",
         figure(plots.ranked(by_split), "ranked",
                "Each method's forget quality and model utility (mean over seeds, 95% interval over seeds), ranked "
                "by forget quality, the same order in every panel; gold: the exact-retrain oracle and its interval; "
                "dashed: the target.")),
        ("tradeoff", "Forget quality × model utility",
         figure(plots.tradeoff(by_split), "tradeoff",
                "Each method a point (mean over seeds) with whiskers at its 95% interval over seeds; "
                "the target (×, black) and the exact-retrain oracle (★, gold; its utility interval shaded) are "
                "the anchors. Up and right is better. Forget quality is a KS p-value on a log scale and is "
                "comparable within a split only.")),
        ("leaderboard", "Leaderboard", table(headers, rows, row_classes=classes)
         + f'<p class="muted">{esc(board["ci"])}. Click a column to sort.</p>'),
        ("metrics", "Metrics", f'<div class="grid">{dots}</div>' if dots else ""),
        ("training", "Training curves", _training_section(root)),
        ("attacks", "Attack recovery", _attack_section(by_split, root)),
        ("curves", "Scalability and sustainability", _protocol_section(root)),
        ("cells", "Unfinished cells", _unfinished_section(root)),
        ("provenance", "Command, settings, versions and data", _bench_provenance(root, bench)),
    ]
    return _write(out or root / "report.html", page(f"obliviate bench: {root.name}", subtitle, sections))


def _verdict_section(board: dict[str, Any]) -> str:
    from obliviate.grid.verdict import ALPHA, verdict

    out = ""
    for split, sentences in verdict(board).items():
        if sentences:
            out += f"<h3>{esc(split)}</h3><ul>" + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>"
    if out:
        out += (f'<p class="muted">Computed from the leaderboard below: forget quality is the KS test against the '
                f"oracle (reached when p ≥ {ALPHA} on every seed); utility is compared with the oracle's 95% "
                "interval over seeds.</p>")
    return out


def _first_runs(root: Path) -> dict[tuple[str, str], Path]:
    """(method, split) -> the run directory of its first complete seed."""
    spec = load_spec(root)
    out: dict[tuple[str, str], Path] = {}
    for cell in spec.cells():
        if cell.is_anchor or (cell.method, cell.split) in out or cell_state(spec, cell, root) != "complete":
            continue
        out[(cell.method, cell.split)] = cell.path(root) / "run"
    return out


def _training_section(root: Path) -> str:
    """Each split's training loss curves, one line per method (its first seed), where the runs logged them."""
    panels: dict[str, dict[str, Any]] = {}
    for (method, split), run in _first_runs(root).items():
        log = run / "train_log.jsonl"
        if not log.is_file():
            continue
        from obliviate.io import read_jsonl

        rows = [r for r in read_jsonl(log) if isinstance(r.get("loss"), int | float)]
        if len(rows) < 2:
            continue
        series = [{"label": "loss", "x": [r["step"] for r in rows], "y": [r["loss"] for r in rows], "style": "-",
                   "color": plots.METHOD_COLORS[0]}]
        for j, key in enumerate(k for k in ("forget_nll", "retain_nll", "forget_loss", "retain_loss") if k in rows[0]):
            series.append({"label": key, "x": [r["step"] for r in rows], "y": [r.get(key) for r in rows],
                           "style": "--", "color": plots.METHOD_COLORS[1 + j]})
        panels[f"{method} {split}"] = {"title": f"{method} · {split}", "xlabel": "step", "ylabel": "", "series": series}
    return figure(plots.curves(list(panels.values()), "training"), "training",
                  "Each method's training loss and its own logs at every optimiser step (train_log.jsonl of its "
                  "first seed); each method minimises its own loss, so compare shapes, not levels.")


def _resolved_settings(root: Path) -> str:
    """Each method's resolved config (every field, defaults included), from its first run's config.json."""
    rows = []
    for (method, _split), run in _first_runs(root).items():
        config = run / "config.json"
        if not config.is_file() or any(r[0] == method for r in rows):
            continue
        resolved = read_json(config).get("method_config") or {}
        rows.append([method, ", ".join(f"{k}={v}" for k, v in resolved.items() if k != "seed")])
    if not rows:
        return ""
    return ("<h3>Resolved method settings</h3>" + table(["method", "settings (seed: the world seed of each cell)"],
                                                         rows, sortable=False))


def _attack_section(by_split: dict[str, list[dict]], root: Path) -> str:
    heat = figure(plots.attack_heatmap(by_split), "attacks",
                  "Each attack's recovery relative to the oracle (0: no more than the oracle recovers; 1: all of "
                  "it), mean over seeds.")
    curves = plots.curves(relearn_panels(root), "relearn")
    return heat + figure(curves, "relearn", "Relearning: forget-set recovery against fine-tuning steps, the "
                                            "unlearned model beside the oracle.")


def relearn_panels(root: Path) -> list[dict[str, Any]]:
    """Relearning curves from the cells' attack results ({"curves": {"relearn": {...}}}), seed 0's."""
    from obliviate.grid.leaderboard import display_name

    spec = load_spec(root)
    panels = []
    for cell in spec.cells():
        if cell.is_anchor or cell_state(spec, cell, root) != "complete":
            continue
        curve = ((read_json(cell.path(root) / RESULT).get("attacks") or {}).get("curves") or {}).get("relearn")
        if curve and cell.seed in (spec.seeds[0], None):
            panels.append(relearn_panel(curve, f"{display_name(spec, cell.method)} {cell.split}"))
    return panels


def relearn_panel(curve: dict[str, Any], title: str) -> dict[str, Any]:
    colors = {"unlearned": "C0", "oracle": "#d4a017", "target": "black"}
    series = [{"label": name, "x": curve["x"], "y": curve[name], "color": color} for name, color in colors.items()
              if curve.get(name)]
    return {"title": title, "xlabel": curve.get("xlabel", "fine-tuning steps"),
            "ylabel": curve.get("ylabel", "forget recovery"), "series": series}


def _unfinished_section(root: Path) -> str:
    spec = load_spec(root)
    rows = []
    for cell in spec.cells():
        state = cell_state(spec, cell, root)
        if state == "complete":
            continue
        path = cell.path(root)
        why = read_json(path / ERROR).get("error", "") if (path / ERROR).is_file() else {
            "absent": "not run yet", "partial": "interrupted", "stale": "made with other settings"}[state]
        rows.append([cell.label, state, why, str(path.relative_to(root))])
    if not rows:
        return ""
    return (table(["cell", "state", "why", "directory"], rows)
            + '<p class="muted">Run the same bench command again to finish these cells.</p>')


def _bench_provenance(root: Path, bench: dict[str, Any]) -> str:
    spec = load_spec(root)
    hashes = {}
    for cell in spec.cells():
        if cell.is_anchor and cell_state(spec, cell, root) == "complete":
            hashes[cell.label] = read_json(cell.path(root) / RESULT).get("data_hashes")
    command = shlex.join(bench.get("command", []))
    return ("<h3>Command</h3>" + pre(command or "(not recorded)") + _resolved_settings(root)
            + "<h3>Bench settings</h3>" + pre(bench.get("spec"))
            + "<h3>Versions</h3>" + pre(bench.get("versions")) + "<h3>Data hashes (per split and seed)</h3>"
            + pre(hashes))


# -- protocols (scalability, sustainability) ------------------------------------------------------------------------

PROTOCOL_METRICS = [("forget_quality", "forget quality (KS p)", True), ("model_utility", "model utility", False),
                    ("forget/probability", "forget probability", False), ("forget/rouge", "forget ROUGE-L", False),
                    ("retain/rouge", "retain ROUGE-L", False)]


def protocol_panels(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A panel per metric of a protocol's result: unlearned (with its CI band), target and oracle."""
    steps = result.get("steps") or []
    scal = result.get("protocol") == "scalability"
    xs = [s.get("n_forget_items") if scal else s.get("step") for s in steps]
    panels = []
    for key, label, log in PROTOCOL_METRICS:
        def get(aggs, field, key=key):
            return float((aggs or {}).get(key, {}).get(field, math.nan))
        series = []
        y = [get(s.get("aggregates"), "value") for s in steps]
        if not np.isfinite(y).any():
            continue
        series.append({"label": "unlearned", "x": xs, "y": y, "lo": [get(s.get("aggregates"), "ci_low") for s in steps],
                       "hi": [get(s.get("aggregates"), "ci_high") for s in steps], "color": "C0"})
        for role, color, style in (("target", "black", "s--"), ("oracle", "#d4a017", "^:")):
            ref = [get(s.get(role), "value") for s in steps]
            if np.isfinite(ref).any():
                series.append({"label": role, "x": xs, "y": ref, "color": color, "style": style})
        panels.append({"title": label, "xlabel": result.get("x", ""), "log": log, "series": series})
    return panels


def _protocol_files(root: Path) -> list[Path]:
    found = []
    for name in PROTOCOL_FILES:
        found += sorted(root.glob(name)) + sorted(root.glob(f"*/{name}")) + sorted(root.glob(f"*/*/{name}"))
    return found


def _protocol_section(root: Path) -> str:
    out = ""
    for i, path in enumerate(_protocol_files(root)):
        result = read_json(path)
        world = result.get("world") or {}
        title = f"{result.get('protocol')}: {result.get('method')} on world {world.get('preset')}@{world.get('seed')}"
        out += figure(plots.curves(protocol_panels(result), f"protocol{i}", title), f"{result.get('protocol')}-{i}",
                      f"{title} ({path.relative_to(root) if path.is_relative_to(root) else path}): each metric "
                      "after each step, with the target and the step's exact-retrain oracle.")
    return out


def write_protocol_report(root: Path, out: Path | None = None) -> Path:
    root = Path(root)
    files = _protocol_files(root)
    sections = [("curves", "Scalability and sustainability", _protocol_section(root)),
                ("provenance", "Protocol results", "".join(pre(read_json(f)) for f in files))]
    return _write(out or root / "report.html", page(f"obliviate protocol: {root.name}", str(root), sections))
