"""The public Python API: the issue's example on the tiny world, result types, errors and the import layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import obliviate as ob
from obliviate.errors import ObliviateError

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_exports_are_the_api_and_load_lazily():
    code = ("import sys, obliviate as ob; assert 'obliviate.api' not in sys.modules; "
            "assert ob.unlearn is __import__('obliviate.api', fromlist=['x']).unlearn; print(ob.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ob.__version__
    for name in ob.__all__:
        assert getattr(ob, name) is not None
        if name != "__version__":
            assert getattr(ob, name).__doc__, f"{name} has no docstring"
    with pytest.raises(AttributeError):
        ob.no_such_thing  # noqa: B018


def test_no_subpackage_shadows_an_api_name():
    """Importing a submodule sets it as an attribute of the package, so no module may share an API name."""
    import pkgutil

    import obliviate

    modules = {m.name for m in pkgutil.iter_modules(obliviate.__path__)}
    assert not modules & set(ob.__all__), modules & set(ob.__all__)
    for m in modules - {"__main__"}:  # (importing __main__ would run the command line)
        __import__(f"obliviate.{m}")
    assert callable(ob.bench) and callable(ob.compare) and ob.bench.__module__ == "obliviate.api.studies"


def test_lora_spec_round_trips_through_the_cli_parser():
    from obliviate.models.lora import parse_lora

    spec = parse_lora(ob.LoRA(r=4, alpha=8, targets="q_proj+v_proj", dropout=0.1).spec())
    assert (spec.r, spec.alpha, spec.targets, spec.dropout) == (4, 8, "q_proj+v_proj", 0.1)


def test_items_filter_and_dataframe():
    items = ob.Items([{"set": "forget", "p": 0.1}, {"set": "retain", "p": 0.9}, {"set": "forget", "p": 0.3}])
    assert len(items.where(set="forget")) == 2
    frame = items.to_pandas()
    assert list(frame.columns) == ["set", "p"] and frame["p"].sum() == pytest.approx(1.3)


def test_loading_what_is_not_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(ObliviateError, match="not a run directory"):
        ob.Run.load(tmp_path)
    with pytest.raises(ObliviateError, match="no results.json"):
        ob.EvalResult.load(tmp_path)


def test_bad_data_spec_fails_before_any_model_loads(tmp_path):
    with pytest.raises(ObliviateError, match="expected one of world:SPLIT"):
        ob.unlearn("ga", model="world:tiny", data="tofu-ish", out=tmp_path / "r")
    with pytest.raises(ObliviateError, match="not world:PRESET"):
        ob.unlearn("ga", model="gpt2-does-not-exist", data="world:forget10", out=tmp_path / "r")
    with pytest.raises(ObliviateError, match="unknown method|no method"):
        ob.unlearn("no-such-method", model="world:tiny", data="world:forget10", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_issue_example_on_the_tiny_world(tmp_path, monkeypatch, world_home):
    """unlearn with LoRA -> evaluate against an oracle eval dir -> table, items, attack, bench."""
    from obliviate.workflow import WorldRef, world_models

    monkeypatch.chdir(tmp_path)
    oracle_dir = world_models(WorldRef("tiny", 0, "forget10"), progress=False).oracle
    oracle_eval = ob.evaluate(str(oracle_dir), world="tiny", out="runs/oracle-eval", generate=False, progress=False)
    assert Path("runs/oracle-eval/items.jsonl").is_file() and "forget_quality" in oracle_eval.aggregates

    run = ob.unlearn("npo", model="world:tiny", data="world:forget10", lora=ob.LoRA(r=8, alpha=16),
                     out="runs/npo", overrides={"lr": 1e-3}, progress=False)
    assert isinstance(run, ob.Run) and run.artifact["kind"] == "adapter" and run.method == "npo"
    assert run.config["method_config"]["lr"] == 1e-3 and run.config["lora"].startswith("r=8,alpha=16")

    result = ob.evaluate(run, oracle="runs/oracle-eval", progress=False)
    assert isinstance(result, ob.EvalResult)
    for key in ("forget_quality", "model_utility", "forget/probability"):
        assert 0.0 <= result[key] <= 1.0
    target = ob.evaluate("world:tiny", out="runs/target-eval", progress=False)
    assert result["forget/probability"] < target["forget/probability"]  # NPO forgot something
    assert result.table().row_count >= 8
    frame = result.items.to_pandas()
    assert set(frame["set"]) >= {"forget", "retain"} and len(frame) == len(result.items)
    assert ob.EvalResult.load("runs/npo").aggregates == result.aggregates

    report = ob.attack(run, ["relearn", "forms"], overrides={"relearn.steps": 5}, progress=False)
    assert set(report.reports) == {"relearn", "forms"} and report.written == Path("runs/npo/attacks.json")
    assert report.written.is_file() and report.table().row_count >= 2

    board = ob.bench(methods=["ga", "npo"], world="tiny", seeds=3, out="bench/b1",
                     overrides={"max_steps": 4}, max_retain=40, generate=False, progress=False)
    assert board.total == board.ran + board.kept and not board.failed
    frame = board.to_pandas()
    methods = frame[frame["model"].isin(["ga", "npo"])]
    assert set(methods["model"]) == {"ga", "npo"} and set(methods["seeds"]) == {3}
    assert ob.BenchResult.load("bench/b1").rows == board.rows


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), str(tree / "pyproject.toml")], cwd=tree, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_import_layers_hold_and_a_cli_import_from_the_bench_grid_breaks_them(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "obliviate", tree / "obliviate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    assert _lint_imports(tree).returncode == 0
    spec = tree / "obliviate" / "grid" / "spec.py"
    spec.write_text(spec.read_text(encoding="utf-8") + "\nimport obliviate.cli  # noqa\n", encoding="utf-8")
    broken = _lint_imports(tree)
    assert broken.returncode != 0
    assert "obliviate.grid is not allowed to import obliviate.cli" in broken.stdout
    assert "obliviate.grid.spec -> obliviate.cli" in broken.stdout
