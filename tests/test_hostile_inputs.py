"""Hostile input, one table: every case exits with code 2 and one line on stderr naming the file (and the
line where there is one), prints no traceback, and leaves every file under its directory as it was:
nothing written, nothing overwritten, nothing deleted (a user's directory keeps every byte).

Each case builds its inputs in a fresh directory and returns the command line and the fragments the
error line must hold. Cases needing a model copy one tiny saved model (built once per module).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli

Case = Callable[[Path, Path], tuple[list[str], list[str]]]  # (case dir, tiny model dir) -> (argv, fragments)
CASES: dict[str, Case] = {}
STDIN: dict[str, str] = {}  # what a case's stdin holds (default: nothing)


def case(name: str, stdin: str | None = None) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        if stdin is not None:
            STDIN[name] = stdin
        return fn

    return register


GOOD = [{"question": "Where was Ann born?", "answer": "Oslo"}, {"question": "Who is Bo?", "answer": "A cook"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _unlearn(d: Path, forget: Path, *extra: str, model: str = "none", out: Path | None = None) -> list[str]:
    return ["unlearn", "--method", "ga", "--model", model, "--forget", str(forget),
            "--out", str(out or d / "run"), *extra]


def _user_dir(d: Path) -> Path:
    """A directory of the user's, holding files named as the tool's own outputs."""
    user = d / "mine"
    (user / "model").mkdir(parents=True)
    (user / "model" / "weights.bin").write_bytes(os.urandom(64))
    for name in ("config.json", "train_log.jsonl", "report.html", "leaderboard.csv", "notes.txt"):
        (user / name).write_text(f"the user's own {name}\n", encoding="utf-8")
    return user


def _a_file(d: Path) -> Path:
    path = d / "a-file.txt"
    path.write_text("not a directory\n", encoding="utf-8")
    return path


def _model_copy(d: Path, model: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(model, d / name))


def _run(d: Path, model: Path) -> Path:
    """A run directory as `unlearn` and `eval` leave it, by hand: weights, artifact, config, results, items."""
    run = d / "run"
    _model_copy(run, model, "model")
    (run / ".obliviate").touch()
    (run / "artifact.json").write_text(json.dumps({"kind": "weights", "path": "model", "method": "ga"}))
    (run / "config.json").write_text(json.dumps({"method": "ga", "method_config": {"lr": 1e-4}}))
    (run / "results.json").write_text(json.dumps({"aggregates": {}, "config": {}}))
    (run / "items.jsonl").write_text(json.dumps({"set": "forget", "index": 0, "rouge": 0.5}) + "\n")
    (run / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return run


# -- data files -------------------------------------------------------------------------------------------

@case("missing-field")
def _(d, model):
    bad = _jsonl(d / "forget.jsonl", [GOOD[0], {"question": "Who?"}])
    return _unlearn(d, bad), [f"{bad}:2: field 'answer' missing"]


@case("non-utf8-jsonl")
def _(d, model):
    bad = d / "forget.jsonl"
    bad.write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\xff\xfe", "answer": "b"}\n')
    return _unlearn(d, bad), [f"{bad}:2: not valid UTF-8"]


@case("empty-forget-set")
def _(d, model):
    empty = d / "forget.jsonl"
    empty.write_text("", encoding="utf-8")
    return _unlearn(d, empty), [str(empty)]


@case("nan-answer")
def _(d, model):
    bad = d / "forget.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "Who?", "answer": NaN}\n', encoding="utf-8")
    return _unlearn(d, bad), [f"{bad}:2: field 'answer' is NaN"]


@case("empty-answer")
def _(d, model):
    bad = _jsonl(d / "forget.jsonl", [GOOD[0], {"question": "Who?", "answer": "  "}])
    return _unlearn(d, bad), [f"{bad}:2: field 'answer' is empty"]


@case("csv-unterminated-quote")
def _(d, model):
    bad = d / "forget.csv"
    rows = "".join(f"q{i},a{i}\n" for i in range(6))
    bad.write_text(f'question,answer\nq,a\nWho?,"an answer never closed\n{rows}', encoding="utf-8")
    return _unlearn(d, bad), [f"{bad}:3: invalid CSV", "never closed"]


@case("duplicate-items-strict")
def _(d, model):
    bad = _jsonl(d / "forget.jsonl", [GOOD[0], GOOD[1], GOOD[0]])
    return _unlearn(d, bad, "--strict"), [f"{bad}:3: duplicate of {bad}:1"]


@case("overlap-strict")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD[:1])
    retain = _jsonl(d / "retain.jsonl", [GOOD[1], GOOD[0]])
    args = ["unlearn", "--method", "graddiff", "--model", "none", "--forget", str(forget), "--retain", str(retain),
            "--out", str(d / "run"), "--strict"]
    return args, [f"{retain}:2", "overlaps"]


@case("unreadable-data-file")
def _(d, model):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    bad = _jsonl(d / "forget.jsonl", GOOD)
    bad.chmod(0)
    return _unlearn(d, bad), [str(bad), "cannot read"]


# -- configs ----------------------------------------------------------------------------------------------

@case("unknown-method")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    args = _unlearn(d, forget)
    args[2] = "gradient-ascent"
    return args, ["unknown method"]


@case("unknown-key")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, "--set", "lrr=2"), ["unknown key 'lrr'", "did you mean 'lr'"]


@case("ill-typed-value")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, "--set", "epochs=many"), ["field 'epochs'"]


@case("lr-inf")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, "--set", "lr=inf"), ["field 'lr'", "inf"]


@case("lr-nan")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, "--set", "lr=nan"), ["field 'lr'"]


@case("max-steps-negative")
def _(d, model):
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, "--set", "max_steps=-1"), ["field 'max_steps'"]


@case("yaml-bad-utf8")
def _(d, model):
    cfg = d / "ga.yaml"
    cfg.write_bytes(b"lr: 0.001\nepochs: \xff\n")
    return _unlearn(d, _jsonl(d / "forget.jsonl", GOOD), "--config", str(cfg)), [f"{cfg}:2: not valid UTF-8"]


@case("yaml-syntax-error")
def _(d, model):
    cfg = d / "ga.yaml"
    cfg.write_text("lr: 0.001\nepochs: 2\n  seed: [1, 2\n", encoding="utf-8")
    return _unlearn(d, _jsonl(d / "forget.jsonl", GOOD), "--config", str(cfg)), [f"{cfg}:3", "cannot parse"]


# -- models -----------------------------------------------------------------------------------------------

@case("missing-model-path")
def _(d, model):
    return ["eval", str(d / "nothing"), "--forget", "x", "--retain", "y", "--out", str(d / "o")], ["nothing"]


@case("pickle-only-model")
def _(d, model):
    pickled = _model_copy(d, model)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, model=str(pickled)), [str(pickled), "pytorch_model.bin", "safetensors"]


@case("truncated-safetensors")
def _(d, model):
    broken = _model_copy(d, model)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, model=str(broken)), [str(broken)]


@case("shape-mismatch")
def _(d, model):
    broken = _model_copy(d, model)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, model=str(broken)), [str(broken)]


@case("custom-code-model", stdin="y\ny\ny\n")
def _(d, model):
    evil = _model_copy(d, model)
    (evil / "modeling_evil.py").write_text(f"open({str(d / 'PWNED')!r}, 'w').close()\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return _unlearn(d, forget, model=str(evil)), [str(evil), "custom code", "--trust-remote-code"]


@case("lm-eval-include-function")
def _(d, model):
    tasks = d / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(f"open({str(d / 'PWNED')!r}, 'w').close()\ndef docs(ds):\n    return ds\n")
    (tasks / "mytask.yaml").write_text("task: mytask\ndataset_path: json\noutput_type: loglikelihood\n"
                                       "process_docs: !function utils.docs\n", encoding="utf-8")
    return (["eval", str(model), "--lm-eval", "mytask", "--lm-eval-include", str(tasks), "--out", str(d / "o")],
            [f"{tasks / 'mytask.yaml'}:4", "!function", "--trust-remote-code"])


# -- --out ------------------------------------------------------------------------------------------------

@case("unlearn-out-is-a-file")
def _(d, model):
    return _unlearn(d, _jsonl(d / "forget.jsonl", GOOD), out=_a_file(d)), ["--out", "a-file.txt", "is a file"]


@case("unlearn-out-inside-a-file")
def _(d, model):
    out = _a_file(d) / "run"
    return _unlearn(d, _jsonl(d / "forget.jsonl", GOOD), model=str(model), out=out), [str(out), "is a file"]


@case("unlearn-out-user-dir")
def _(d, model):
    user = _user_dir(d)
    return _unlearn(d, _jsonl(d / "forget.jsonl", GOOD), model=str(model), out=user), [str(user), "--force"]


@case("demo-out-is-a-file")
def _(d, model):
    return ["demo", "--preset", "tiny", "--out", str(_a_file(d))], ["--out", "is a file"]


@case("demo-out-user-dir")
def _(d, model):
    user = _user_dir(d)
    return ["demo", "--preset", "tiny", "--out", str(user)], [str(user), "--force"]


@case("bench-out-inside-a-file")
def _(d, model):
    out = _a_file(d) / "bench"
    return ["bench", "--methods", "ga", "--world", "tiny", "--seeds", "1", "--out", str(out)], [str(out), "is a file"]


@case("bench-out-user-dir")
def _(d, model):
    user = _user_dir(d)
    return ["bench", "--methods", "ga", "--world", "tiny", "--seeds", "1", "--out", str(user)], [str(user), "--force"]


@case("eval-out-inside-a-file")
def _(d, model):
    out = _a_file(d) / "eval"
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return ["eval", str(model), "--forget", str(forget), "--retain", str(forget), "--out", str(out)], [str(out)]


# -- damaged run files ------------------------------------------------------------------------------------

@case("eval-artifact-json-truncated")
def _(d, model):
    run = _run(d, model)
    (run / "artifact.json").write_text('{"kind": "weights", "pa')
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(run), "--forget", str(forget), "--retain", str(forget)],
            [f"{run / 'artifact.json'}:1", "damaged"])


@case("eval-artifact-json-missing-key")
def _(d, model):
    run = _run(d, model)
    (run / "artifact.json").write_text(json.dumps({"kind": "adapter", "path": "adapter"}))
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(run), "--forget", str(forget), "--retain", str(forget)],
            [str(run / "artifact.json"), "base_model", "damaged"])


@case("eval-config-json-truncated")
def _(d, model):
    run = _run(d, model)
    (run / "config.json").write_text('{"method": "ga",\n "method_con')
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(run), "--forget", str(forget), "--retain", str(forget)],
            [f"{run / 'config.json'}:2", "damaged"])


@case("eval-config-json-wrong-schema")
def _(d, model):
    run = _run(d, model)
    (run / "config.json").write_text(json.dumps(["not", "a", "config"]))
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(run), "--forget", str(forget), "--retain", str(forget)],
            [str(run / "config.json"), "damaged"])


@case("attack-artifact-json-truncated")
def _(d, model):
    run = _run(d, model)
    (run / "artifact.json").write_text("{")
    return ["attack", "--all", str(run)], [f"{run / 'artifact.json'}:1", "damaged"]


@case("report-results-json-truncated")
def _(d, model):
    run = _run(d, model)
    (run / "results.json").write_text('{"aggregates": {')
    return ["report", str(run)], [f"{run / 'results.json'}:1", "damaged"]


@case("report-items-jsonl-truncated")
def _(d, model):
    run = _run(d, model)
    with open(run / "items.jsonl", "a") as handle:
        handle.write('{"set": "forget", "ind')
    return ["report", str(run)], [f"{run / 'items.jsonl'}:2", "damaged"]


@case("report-train-log-truncated")
def _(d, model):
    run = _run(d, model)
    with open(run / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 2, "lo')
    return ["report", str(run)], [f"{run / 'train_log.jsonl'}:2", "damaged"]


@case("seeds-results-json-truncated")
def _(d, model):
    run = _run(d, model)
    (run / "results.json").write_text('{"aggregates": {')
    return ["seeds", str(run), str(run)], [f"{run / 'results.json'}:1"]


@case("report-bench-json-truncated")
def _(d, model):
    bench = d / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text('{"spec": {"methods": ["ga"')
    return ["report", str(bench)], [f"{bench / 'bench.json'}:1", "damaged"]


@case("eval-oracle-items-truncated")
def _(d, model):
    oracle = d / "oracle"
    oracle.mkdir()
    (oracle / "items.jsonl").write_text('{"set": "forget", "index": 0, "truth_ratio": 0.5}\n{"set": "forg')
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(model), "--forget", str(forget), "--retain", str(forget), "--oracle", str(oracle),
             "--out", str(d / "o")], [f"{oracle / 'items.jsonl'}:2", "damaged"])


@case("eval-oracle-items-wrong-schema")
def _(d, model):
    oracle = d / "oracle"
    oracle.mkdir()
    (oracle / "items.jsonl").write_text('{"set": "forget", "index": 0, "truth_ratio": 0.5}\n'
                                        '{"set": "forget", "index": 1, "tr": 0.4}\n')
    forget = _jsonl(d / "forget.jsonl", GOOD)
    return (["eval", str(model), "--forget", str(forget), "--retain", str(forget), "--oracle", str(oracle),
             "--out", str(d / "o")], [f"{oracle / 'items.jsonl'}:2", "truth_ratio"])


# -- other tools' logs ------------------------------------------------------------------------------------

def _tofu_log(bad_value) -> dict:
    part = {"avg_gt_loss": {"0": 1.0, "1": 2.0}, "avg_paraphrased_loss": {"0": 1.0, "1": 1.5},
            "average_perturb_loss": {"0": [2.0, 2.5], "1": [2.0, 3.0]}, "rougeL_recall": {"0": 0.5, "1": 0.4}}
    log = {name: json.loads(json.dumps(part)) for name in ("eval_log.json", "eval_real_author_wo_options.json",
                                                          "eval_real_world_wo_options.json", "eval_log_forget.json")}
    log["eval_log_forget.json"]["avg_gt_loss"]["1"] = bad_value
    return log


@case("tofu-log-not-json")
def _(d, model):
    log = d / "log.json"
    log.write_text("{not json", encoding="utf-8")
    return ["compat", "tofu-legacy", str(log), str(log)], [str(log)]


@case("tofu-log-null-value")
def _(d, model):
    log = d / "log.json"
    log.write_text(json.dumps(_tofu_log(None)), encoding="utf-8")
    return ["compat", "tofu-legacy", str(log), str(log)], [str(log), "avg_gt_loss", "item 1"]


@case("tofu-log-nan-value")
def _(d, model):
    log = d / "log.json"
    log.write_text(json.dumps(_tofu_log(float("nan"))), encoding="utf-8")
    return ["compat", "tofu-legacy", str(log), str(log)], [str(log), "avg_gt_loss", "item 1"]


# -- the table ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    return save_model(make_tiny_llama(), build_tiny_tokenizer(), tmp_path_factory.mktemp("tiny") / "model")


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None, int]]:
    """Every file and directory under `root`: (mode, bytes for files, mtime in ns)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, path.read_bytes() if path.is_file() else None,
                                              st.st_mtime_ns if path.is_file() else 0)
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, tmp_path, tiny_model_dir, monkeypatch, capsys):
    import io

    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    args, fragments = CASES[name](d, tiny_model_dir)
    monkeypatch.setattr("sys.stdin", io.StringIO(STDIN.get(name, "")))
    before = snapshot(d)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_one_line_error(code, err, *fragments)
    assert snapshot(d) == before, "files were written, changed or deleted"


# -- beside the table -------------------------------------------------------------------------------------

def test_force_writes_a_run_into_a_users_directory_and_keeps_the_rest(tmp_path, tiny_model_dir, monkeypatch,
                                                                      capsys):
    user = _user_dir(tmp_path)
    forget = _jsonl(tmp_path / "forget.jsonl", GOOD)
    args = _unlearn(tmp_path, forget, "--set", "max_steps=1", "--set", "batch_size=2", model=str(tiny_model_dir),
                    out=user)
    code, _, err = run_cli([*args, "--force", "--json"], monkeypatch, capsys)
    assert_one_line_error(code, err, "model/", "move it away")  # its model/ would be replaced: still refused
    shutil.rmtree(user / "model")
    kept = {name: (user / name).read_bytes() for name in ("notes.txt", "report.html", "leaderboard.csv")}
    code, _, err = run_cli([*args, "--force", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert (user / "artifact.json").is_file() and (user / "model").is_dir()
    assert {name: (user / name).read_bytes() for name in kept} == kept


def test_duplicate_items_warn_without_strict(tmp_path, monkeypatch, capsys):
    forget = _jsonl(tmp_path / "forget.jsonl", [GOOD[0], GOOD[1], GOOD[0]])
    code, out, err = run_cli(_unlearn(tmp_path, forget, model=str(tmp_path / "no-model")), monkeypatch, capsys)
    said = " ".join((out + err).split())  # the console wraps long lines
    assert f"{forget}:3: duplicate of {forget}:1" in said  # warned, then went on (and failed on the model)
    assert code == 2 and "no-model" in err


def test_a_diverged_model_is_not_saved(tmp_path):
    import torch

    from obliviate.errors import ObliviateError
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    model = make_tiny_llama()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(ObliviateError, match="NaN or inf"):
        save_model(model, build_tiny_tokenizer(), tmp_path / "model")
    assert not any(tmp_path.iterdir())


def test_trust_remote_code_is_passed_as_false(tmp_path, tiny_model_dir, monkeypatch):
    """Every load names trust_remote_code, so transformers never asks on stdin."""
    import transformers

    from obliviate.models.loading import load_model

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "absent"))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(tiny_model_dir, device="cpu")
    assert seen and all(value is False for value in seen), seen


def test_forget_generations_stay_out_of_items_unless_asked(tmp_path, tiny_model_dir, monkeypatch, capsys):
    extra = {"paraphrased_answer": "It is Paris.", "perturbed_answers": ["It is Rome.", "It is Oslo."]}
    forget = _jsonl(tmp_path / "forget.jsonl", [{**row, **extra} for row in GOOD])
    retain = _jsonl(tmp_path / "retain.jsonl", [{"question": "What is the capital of France?", "answer": "Paris",
                                                 **extra}])
    for flag, out in (([], tmp_path / "plain"), (["--keep-generations"], tmp_path / "kept")):
        code, _, err = run_cli(["eval", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain),
                                "--out", str(out), "--max-new-tokens", "2", "--json", *flag], monkeypatch, capsys)
        assert code == 0, err
    rows = {name: [json.loads(line) for line in (tmp_path / name / "items.jsonl").read_text().splitlines()]
            for name in ("plain", "kept")}
    assert not any("generation" in r for r in rows["plain"] if r["set"] == "forget")
    assert all("generation" in r for r in rows["kept"] if r["set"] == "forget")
    assert all("rouge" in r for r in rows["plain"] if r["set"] == "forget")  # the scores are kept


def test_an_unreadable_data_file_is_one_line(tmp_path, monkeypatch, capsys):
    """A file the user may not read (simulated: the tests may run as root, who reads everything)."""
    forget = _jsonl(tmp_path / "forget.jsonl", GOOD)
    read_bytes = Path.read_bytes

    def denied(self):
        if self == forget:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    code, _, err = run_cli(_unlearn(tmp_path, forget), monkeypatch, capsys)
    assert_one_line_error(code, err, str(forget), "cannot read it (Permission denied)")
    assert not (tmp_path / "run").exists()


def test_bench_redoes_a_cell_whose_results_are_damaged(tmp_path):
    from obliviate.grid.spec import COMPLETE, RESULT, BenchSpec, cell_state

    spec = BenchSpec(methods=["ga"], splits=["forget01"], seeds=[0], world="tiny")
    cell = spec.cells()[-1]
    path = cell.path(tmp_path)
    path.mkdir(parents=True)
    (path / COMPLETE).write_text(json.dumps({"fingerprint": spec.fingerprint(cell)}))
    (path / RESULT).write_text(json.dumps({"aggregates": {}}))
    assert cell_state(spec, cell, tmp_path) == "complete"
    (path / RESULT).write_text('{"aggregates": {')
    assert cell_state(spec, cell, tmp_path) == "partial"  # redone by `bench` run again, not read


def test_a_run_whose_weights_diverge_is_stopped_and_not_saved(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Finite losses and gradients, but a weight turned infinite: the guard checks the weights too."""
    import torch

    import obliviate.methods

    ga = obliviate.methods.get_method("ga")

    class Diverges(ga):
        def compute_loss(self, model, batch):
            out = super().compute_loss(model, batch)
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("inf")
            return out

    monkeypatch.setattr(obliviate.methods, "get_method", lambda name: Diverges)
    forget = _jsonl(tmp_path / "forget.jsonl", GOOD)
    args = _unlearn(tmp_path, forget, "--json", "--set", "max_steps=1", "--set", "batch_size=2",
                    "--set", "grad_accum=1", model=str(tiny_model_dir))
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_one_line_error(code, err, "NaN or inf", "lower the learning rate")
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "artifact.json").exists()
