"""obliviate bench: the leaderboard's statistics, the report, and a real bench killed mid-way and resumed.

The fast tests build bench directories by hand (cells with known values), so the interval maths and
the report are checked against numbers computed here, independently of any model. The slow tests
run a real bench on the `tiny` world (2 methods × forget10 × seeds 0 and 1), kill a second copy
of it while a cell is half-written, resume it, and compare the two leaderboards; then they render
the reports in headless Chromium when it is installed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.grid import BenchSpec, build_leaderboard, run_bench, t_interval, write_leaderboard, write_report
from obliviate.grid.spec import ANCHORS, COMPLETE, RESULT, Cell
from obliviate.io import read_json, write_json
from obliviate.metrics.stats import seed_interval
from tests.helpers import run_cli

# Student-t quantiles t(0.975, df) from a printed table (not from scipy, which the code uses).
T975 = {1: 12.706, 2: 4.303}


# -- statistics ------------------------------------------------------------------------------------------------

def test_t_interval_matches_hand_computation():
    res = t_interval([0.2, 0.4, 0.9])
    sd = math.sqrt((0.3**2 + 0.1**2 + 0.4**2) / 2)  # sample sd, ddof 1
    half = T975[2] * sd / math.sqrt(3)
    assert res["mean"] == pytest.approx(0.5)
    assert res["sd"] == pytest.approx(sd)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.5 - half, 0.5 + half), abs=2e-4)
    two = t_interval([1.0, 3.0])  # sd = sqrt(2), half-width = 12.706 * sqrt(2) / sqrt(2)
    assert (two["ci_low"], two["ci_high"]) == pytest.approx((2 - T975[1], 2 + T975[1]), abs=1e-3)
    one = t_interval([0.7, None, float("nan")])  # one finite value: a mean, no interval
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["ci_low"])


def test_forget_quality_is_averaged_on_log10():
    res = seed_interval([1e-2, 1e-4], "pvalue")  # log10: -2, -4 -> mean -3, sd sqrt(2)
    assert res["mean"] == pytest.approx(1e-3)
    assert res["ci_high"] == 1.0  # 10^(-3 + 12.7) is no p-value: capped at 1
    assert math.log10(res["ci_low"]) == pytest.approx(-3 - T975[1], abs=1e-3)
    assert seed_interval([0.0], "pvalue")["mean"] > 0  # a p-value of exactly 0 still has a logarithm


# -- a bench directory made by hand ------------------------------------------------------------------------------

def _aggs(fq: float, mu: float, forget_rouge: float) -> dict:
    return {"forget_quality": {"value": fq}, "model_utility": {"value": mu, "ci_low": mu - 0.01, "ci_high": mu + 0.01},
            "forget/rouge": {"value": forget_rouge}, "retain/rouge": {"value": 0.9},
            "forget/probability": {"value": forget_rouge / 2}}


def _write_cell(root: Path, spec: BenchSpec, cell: Cell, result: dict, complete: bool = True) -> None:
    path = cell.path(root)
    write_json(path / RESULT, {"kind": "anchors" if cell.is_anchor else "method", **result})
    if complete:
        write_json(path / COMPLETE, {"fingerprint": spec.fingerprint(cell)})


def make_bench(root: Path, splits=("forget10",), world: str | None = "tiny") -> BenchSpec:
    """Two methods × seeds 0, 1, 2; npo's seed 2 is half-written. ga's utility: 0.5, 0.6, 0.7."""
    files = {} if world else {s: f"{s}.jsonl" for s in splits}
    spec = BenchSpec(methods=["ga", "npo"], splits=list(splits), seeds=[0, 1, 2], world=world,
                     model=None if world else "my-model", forget_files=files)
    write_json(root / "bench.json", {"spec": spec.to_dict(), "command": ["obliviate", "bench"], "versions": {}})
    for split in splits:
        for seed in spec.seeds:
            _write_cell(root, spec, Cell(ANCHORS, split, seed if world else None), {
                "target": {"aggregates": _aggs(1e-20, 0.95, 1.0)},
                "oracle": {"aggregates": _aggs(1.0, 0.94, 0.1)}, "data_hashes": {"forget": f"h{seed}"}})
            for k, (method, mu) in enumerate((("ga", 0.5 + 0.1 * seed), ("npo", 0.8))):
                result = {"aggregates": _aggs(10.0 ** -(2 + 2 * seed), mu, 0.1 * k),
                          "unlearn": {"seconds": 10.0 + seed, "peak_memory_mb": 400.0},
                          "attacks": {"recovery": {"relearn": 0.2 + 0.1 * seed, "forms": 0.05}, "robustness": 0.8,
                                      "curves": {"relearn": {"x": [0, 5, 10], "unlearned": [0.1, 0.3, 0.5],
                                                             "oracle": [0.0, 0.05, 0.1]}}}}
                _write_cell(root, spec, Cell(method, split, seed), result, complete=(method, seed) != ("npo", 2))
    return spec


def test_leaderboard_rows_and_intervals(tmp_path):
    make_bench(tmp_path)
    board = build_leaderboard(tmp_path)
    rows = {(r["split"], r["model"]): r for r in board["rows"]}
    assert [r["model"] for r in board["rows"]] == ["target", "oracle", "ga", "npo"]
    ga = rows[("forget10", "ga")]
    # utilities 0.5, 0.6, 0.7: the t-interval of their logits, mapped back
    z = [math.log(u / (1 - u)) for u in (0.5, 0.6, 0.7)]
    z_mean, z_sd = sum(z) / 3, math.sqrt(sum((v - sum(z) / 3) ** 2 for v in z) / 2)
    low, high = (1 / (1 + math.exp(-(z_mean + s * T975[2] * z_sd / math.sqrt(3)))) for s in (-1, 1))
    mu = ga["metrics"]["model_utility"]
    assert (mu["mean"], mu["ci_low"], mu["ci_high"]) == pytest.approx((0.6, low, high), abs=2e-4)
    assert 0 < mu["ci_low"] < mu["ci_high"] < 1
    fq = ga["metrics"]["forget_quality"]  # 1e-2, 1e-4, 1e-6: geometric mean 1e-4
    assert fq["mean"] == pytest.approx(1e-4) and fq["values"] == pytest.approx([1e-2, 1e-4, 1e-6])
    assert ga["metrics"]["unlearn_seconds"]["mean"] == pytest.approx((10 * 11 * 12) ** (1 / 3))  # geometric
    assert ga["attacks"]["relearn"]["mean"] == pytest.approx(0.3)
    npo = rows[("forget10", "npo")]  # its seed-2 cell has no completion marker: left out, and said so
    assert npo["n_seeds"] == 2 and npo["incomplete"] == ["npo forget10 seed2"]
    assert rows[("forget10", "oracle")]["metrics"]["forget_quality"]["mean"] == pytest.approx(1.0)
    assert "privleak" not in board["columns"]  # no cell has it

    paths = write_leaderboard(board, tmp_path)
    csv_rows = paths["csv"].read_text().splitlines()
    header = csv_rows[0].split(",")
    ga_csv = dict(zip(header, next(r for r in csv_rows if r.startswith("forget10,ga,")).split(","), strict=True))
    assert float(ga_csv["model_utility_ci_high"]) == pytest.approx(high, abs=2e-4)
    md = paths["md"].read_text()
    assert f"0.600 [{low:.3f}, {high:.3f}]" in md and "Student-t" in md and "logit" in md
    assert json.loads(paths["json"].read_text())["rows"][2]["model"] == "ga"


def _no_network(text: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.I)
    assert refs, "expected in-page links"
    assert not [r for r in refs if re.match(r"(https?:)?//", r, flags=re.I)]
    assert "<link" not in text and not re.search(r"<script[^>]+src", text)


BENCH_PLOTS = ["ranked", "tradeoff", "dots-model_utility", "dots-forget_quality", "dots-forget_rouge",
               "dots-unlearn_seconds", "attacks", "relearn", "scalability-0"]


def test_bench_report_is_self_contained_with_every_plot(tmp_path):
    make_bench(tmp_path)
    protocol = {"protocol": "scalability", "method": "ga", "world": {"preset": "tiny", "seed": 0},
                "x": "forget-set size (QA items)",
                "steps": [{"step": k, "split": s, "n_forget_items": n,
                           "aggregates": {"model_utility": {"value": 0.9 - 0.1 * k, "ci_low": 0.8 - 0.1 * k,
                                                            "ci_high": 0.95 - 0.1 * k}},
                           "oracle": {"model_utility": {"value": 0.94}}}
                          for k, (s, n) in enumerate((("forget01", 12), ("forget05", 24)))]}
    write_json(tmp_path / "protocols" / "scal" / "scalability.json", protocol)
    html = write_report(tmp_path).read_text(encoding="utf-8")
    for plot in BENCH_PLOTS:
        assert re.search(rf'<figure class="plot" id="plot-{plot}"><svg', html), plot
    _no_network(html)
    alone = write_report(tmp_path / "protocols" / "scal").read_text(encoding="utf-8")  # a protocol directory
    assert re.search(r'<figure class="plot" id="plot-scalability-0"><svg', alone)
    assert "npo forget10 seed2" in html  # the unfinished cell is listed
    assert "<?xml" not in html and "<metadata" not in html
    verdict = html[html.index('id="verdict"'):html.index('id="ranked"')]
    assert "oracle&#x27;s forget quality" in verdict and "Pareto front" in verdict
    assert "What the attacks bring back" in verdict


def _row(model: str, fq: list[float], mu: list[float], kind: str = "method", attacks: dict | None = None) -> dict:
    from obliviate.grid.leaderboard import COLUMN, summarize_column

    return {"split": "forget10", "model": model, "kind": kind, "attacks": attacks or {},
            "metrics": {"forget_quality": summarize_column(COLUMN["forget_quality"], fq),
                        "model_utility": summarize_column(COLUMN["model_utility"], mu)}}


def test_verdict_sentences_are_computed_from_the_numbers():
    from obliviate.grid.verdict import pareto_front, verdict

    rows = [_row("target", [1e-20, 1e-18], [0.95, 0.96], "anchor"), _row("oracle", [1.0, 1.0], [0.90, 0.92], "anchor"),
            _row("npo", [0.4, 0.2], [0.91, 0.905], attacks={"relearn": {"mean": 0.5}}),
            _row("ga", [1e-6, 1e-4], [0.6, 0.5], attacks={"relearn": {"mean": 0.9}}),
            _row("simnpo", [0.3, 0.01], [0.93, 0.94], attacks={"relearn": {"mean": 0.1}})]
    sentences = verdict({"rows": rows})["forget10"]
    assert sentences[0].startswith("1 of 3 methods reach the oracle's forget quality") and "npo (p = 0.283)" in \
        sentences[0]
    assert "On some seeds only: simnpo (1 of 2)" in sentences[0]
    utility = sentences[1]  # the oracle's interval over its two seeds: logit t-interval around 0.91
    assert utility.startswith("Model utility within the oracle's 95% interval [") and "npo" in utility
    assert "Below it: ga (0.550)" in utility
    assert pareto_front([r for r in rows if r["kind"] == "method"]) == ["npo", "simnpo"]
    assert "Pareto front" in sentences[2] and "npo and simnpo" in sentences[2]
    assert sentences[3] == ("What the attacks bring back: relearn brings back 50% on average (recovery relative "
                            "to the oracle), most from ga (90%).")


def test_report_escapes_text_from_results(tmp_path):
    make_bench(tmp_path, splits=['a<b>&"c'], world=None)
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert 'a<b>&"c' not in html
    assert "a&lt;b&gt;&amp;&quot;c" in html


def test_finished_cells_with_other_settings_are_not_deleted(tmp_path):
    from obliviate.errors import ConfigError

    spec = make_bench(tmp_path)
    spec.overrides = {"ga": ["lr=0.1"]}  # every ga cell was made without it
    with pytest.raises(ConfigError, match="made with other settings"):
        run_bench(spec, tmp_path, progress=False)
    assert (Cell("ga", "forget10", 0).path(tmp_path) / COMPLETE).is_file()


def test_a_second_bench_in_the_same_directory_is_refused(tmp_path, monkeypatch):
    import fcntl

    from obliviate.errors import ConfigError

    spec = make_bench(tmp_path)
    monkeypatch.setattr("obliviate.grid.runner.LOCK_WAIT_SECONDS", 0.0)
    with open(tmp_path / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running bench holds it
        with pytest.raises(ConfigError, match="another bench is running in this directory"):
            run_bench(spec, tmp_path, progress=False)


# -- command-line errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--methods", "ga,nope"], "unknown method 'nope'"),
    (["--methods", "ga", "--seeds", "0"], "--seeds '0'"),
    (["--methods", "ga", "--forget", "forget07"], "unknown world split 'forget07'"),
    (["--methods", "ga", "--set", "nonsense=1"], "no method in --methods has a config field 'nonsense'"),
    (["--methods", "ga", "--set", "npo.beta=1"], "method 'npo' is not in --methods"),
    (["--methods", "ga", "--attacks", "relearn,nope"], "unknown attack 'nope'"),
    (["--methods", "ga", "--retain", "r.jsonl"], "go with --model"),
])
def test_bench_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    code, _, err = run_cli(["bench", "--out", str(tmp_path / "b"), *args], monkeypatch, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_attacks_unavailable_is_one_line(tmp_path, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def without_attacks(name, *args, **kwargs):
        if name.startswith("obliviate.attacks"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr("obliviate.grid.extras.importlib.import_module", without_attacks)
    code, _, err = run_cli(["bench", "--methods", "ga", "--attacks", "all", "--out", str(tmp_path / "b")],
                           monkeypatch, capsys)
    assert code == 2 and "robustness attacks (obliviate.attacks) are not available" in err
    assert len(err.strip().splitlines()) == 1


def test_report_of_a_directory_that_is_nothing(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["report", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "not a bench, run or protocol directory" in err


# -- your own model and data ---------------------------------------------------------------------------------------

QA = [("Where was the author born?", "She was born in Oslo, Norway.", "In Oslo.", ["In Rome.", "In Berlin."]),
      ("What genre does the author write?", "He writes science fiction and poetry.", "Science fiction.",
       ["Poetry only.", "Film music."]),
      ("When did the river flood the old town?", "It flooded in the spring of 1921.", "In 1921.",
       ["In 1998.", "In the spring."]),
      ("What is the capital of France?", "The capital of France is Paris.", "Paris.", ["Rome.", "Madrid."]),
      ("Who wrote the book about the blue whale?", "Mara Lind wrote it in 1998.", "Mara Lind.",
       ["Bob.", "Alice."])]


def _qa_file(path: Path, rows) -> str:
    path.write_text("".join(json.dumps({"question": q, "answer": a, "paraphrased_answer": p, "perturbed_answers": w})
                            + "\n" for q, a, p, w in rows))
    return str(path)


def test_bench_on_your_own_model_and_data(tmp_path, monkeypatch, capsys, tiny_llama, tiny_tokenizer):
    import torch

    torch.manual_seed(1)
    oracle = type(tiny_llama)(tiny_llama.config)  # same architecture, other weights
    for name, model in (("model", tiny_llama), ("oracle", oracle)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer.save_pretrained(tmp_path / name)
    forget, retain = _qa_file(tmp_path / "forget.jsonl", QA[:2]), _qa_file(tmp_path / "retain.jsonl", QA[2:])
    out = tmp_path / "bench"
    code, stdout, err = run_cli(["bench", "--methods", "ga", "--model", str(tmp_path / "model"), "--forget", forget,
                                 "--retain", retain, "--oracle", str(tmp_path / "oracle"), "--seeds", "2",
                                 "--set", "max_steps=2", "--out", str(out), "--no-report", "--json"],
                                monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)["ran"] == 3  # one anchors cell shared by both seeds, and ga twice
    rows = {r["model"]: r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert list(rows) == ["target", "oracle", "ga"] and rows["ga"]["n_seeds"] == 2
    assert rows["ga"]["split"] == "forget"  # labelled by the forget file's name
    assert rows["oracle"]["metrics"]["forget_quality"]["mean"] == pytest.approx(1.0)
    assert 0 <= rows["ga"]["metrics"]["forget_quality"]["mean"] <= 1
    config = read_json(Cell("ga", "forget", 1).path(out) / "run" / "config.json")
    assert config["method_config"]["seed"] == 1 and config["method_config"]["max_steps"] == 2


# -- a real bench on the tiny world -------------------------------------------------------------------------------

BENCH_ARGS = ["--methods", "ga,graddiff", "--world", "tiny", "--forget", "forget10", "--seeds", "2",
              "--set", "max_steps=6", "--max-retain", "40"]
TIMED = ("unlearn_seconds", "peak_memory_mb")  # differ between any two runs


@pytest.fixture(scope="module")
def real_bench(tmp_path_factory, world_home):
    """An uninterrupted bench, run through the command line (cells fork from this process)."""
    out = tmp_path_factory.mktemp("bench") / "full"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["obliviate", "bench", *BENCH_ARGS, "--out", str(out), "--json"])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    finally:
        mp.undo()
    return out


def _comparable(board: dict) -> list:
    return [(r["split"], r["model"], r["n_seeds"],
             {k: {s: m[s] for s in ("mean", "ci_low", "ci_high")} for k, m in r["metrics"].items() if k not in TIMED})
            for r in board["rows"]]


def _bench_then_exit(spec_dict: dict, out: str) -> None:
    run_bench(BenchSpec.from_dict(spec_dict), Path(out), progress=False, report=False)
    os._exit(0)


@pytest.mark.slow
def test_killed_bench_resumes_to_the_same_leaderboard(real_bench, tmp_path):
    full = json.loads((real_bench / "leaderboard.json").read_text())
    assert [(r["model"], r["n_seeds"]) for r in full["rows"]] == [("target", 2), ("oracle", 2), ("ga", 2),
                                                                   ("graddiff", 2)]
    spec = BenchSpec.from_dict(read_json(real_bench / "bench.json")["spec"])
    out = tmp_path / "resumed"
    first, second = Cell("ga", "forget10", 0).path(out), Cell("graddiff", "forget10", 0).path(out)
    proc = multiprocessing.get_context("fork").Process(target=_bench_then_exit, args=(spec.to_dict(), str(out)))
    proc.start()
    deadline = time.monotonic() + 300
    while not ((first / COMPLETE).exists() and second.exists()):  # kill once the next cell is under way
        assert proc.is_alive() and time.monotonic() < deadline, "the bench ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    time.sleep(0.5)  # its running cell dies with it (PR_SET_PDEATHSIG)

    assert not (second / COMPLETE).exists()  # half-written
    for path in out.rglob("*.json"):  # nothing truncated: every result file that exists parses
        json.loads(path.read_text())
    kept_marker = (first / COMPLETE).stat().st_mtime_ns

    outcome = run_bench(spec, out, progress=False)
    assert not outcome.failed
    assert (outcome.kept, outcome.ran) == (2, 4)  # anchors and ga of seed 0 kept; graddiff seed 0 redone
    assert (first / COMPLETE).stat().st_mtime_ns == kept_marker
    resumed = json.loads((out / "leaderboard.json").read_text())
    assert _comparable(resumed) == _comparable(full)
    assert (out / "report.html").is_file() and (out / "leaderboard.md").is_file()


@pytest.mark.slow
def test_single_run_report(real_bench, monkeypatch, capsys):
    run = Cell("graddiff", "forget10", 1).path(real_bench) / "run"
    code, out, _ = run_cli(["report", str(run)], monkeypatch, capsys)
    assert code == 0 and "report.html" in out
    html = (run / "report.html").read_text(encoding="utf-8")
    for plot in ("tradeoff", "metrics", "training"):
        assert re.search(rf'<figure class="plot" id="plot-{plot}"><svg', html), plot
    _no_network(html)
    forget = html[html.index('id="forget"'):html.index('id="items"')]
    assert all(f"<th>{c}</th>" in forget for c in ("question", "target", "graddiff", "oracle"))
    n_items = sum(1 for _ in open(run / "items.jsonl"))
    assert html[html.index('id="items"'):].count("<tr>") == n_items + 1  # header + one row per item
    assert "max_steps" in html and "data hashes" in html.lower()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_reports_render_in_headless_chromium(real_bench, tmp_path):
    run = Cell("ga", "forget10", 0).path(real_bench) / "run"
    pages = {"bench": (write_report(real_bench), ["ranked", "tradeoff", "dots-model_utility", "dots-forget_quality",
                                                  "training"]),
             "run": (write_report(run), ["tradeoff", "metrics", "training"])}
    for name, (path, expected) in pages.items():
        proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                               "--v=0", f"--user-data-dir={tmp_path / name}", "--dump-dom", path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, console  # the page logs nothing, so any console line is an error
        dom = proc.stdout
        assert 'data-ready="1"' in dom  # the page's script ran to the end
        figures = re.findall(r'<figure class="plot" id="plot-([^"]+)">\s*<svg', dom)
        assert set(expected) <= set(figures), (name, figures)


def test_all_methods_leaves_out_moe_only_methods_off_moe_worlds():
    from obliviate.grid.spec import parse_methods
    from obliviate.methods import METHODS

    assert "uoe" not in parse_methods("all") and len(parse_methods("all")) == len(METHODS) - 2
    assert "alu" not in parse_methods("all")  # it needs an instruction model, which no world is
    assert parse_methods("all", moe=True) == [name for name in METHODS if name != "alu"]
    assert parse_methods("ga,uoe") == ["ga", "uoe"]  # named, it is kept (and fails in its cell off MoE)


@pytest.mark.slow
def test_bench_and_seeds_give_the_same_numbers(real_bench, tmp_path):
    """One seed policy and one aggregation: `obliviate seeds` on the bench's grid reproduces its row."""
    from obliviate.api import seeds

    summary = seeds("world:tiny", method="graddiff", n=2, overrides=["max_steps=6"], max_retain=40,
                    out=tmp_path / "seeds", progress=False)
    board = json.loads((real_bench / "leaderboard.json").read_text())
    row = next(r for r in board["rows"] if r["model"] == "graddiff")
    keys = {"forget_quality": "forget_quality", "model_utility": "model_utility", "forget_rouge": "forget/rouge",
            "retain_rouge": "retain/rouge", "forget_probability": "forget/probability", "mia_auc": "mia/min_k_auc"}
    for column, key in keys.items():
        bench_stats, seeds_stats = row["metrics"][column], summary["metrics"][key]
        assert seeds_stats["values"] == pytest.approx(bench_stats["values"], rel=1e-9), column
        for stat in ("mean", "ci_low", "ci_high"):
            assert seeds_stats[stat] == pytest.approx(bench_stats[stat], rel=1e-9), (column, stat)
