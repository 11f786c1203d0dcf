"""Scalability and sustainability protocols, and `obliviate seeds`, on the `tiny` world.

Both protocols use forget05 ⊂ forget10 and a few GA steps: the world needs its target and the two
oracles (trained once per session in the shared `world_home` cache).
"""

from __future__ import annotations

import json

import pytest

from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import read_jsonl
from obliviate.protocols import plan_protocol, run_protocol
from obliviate.world import get_world
from tests.helpers import run_cli

GA = ["--method", "ga", "--model", "world:tiny", "--splits", "forget05,forget10", "--set", "max_steps=3"]


def forget_subjects(run_dir) -> set[str]:
    return {r["subject"] for r in read_jsonl(run_dir / "items.jsonl") if r["set"] == "forget"}


# -- bad input, before anything is trained ---------------------------------------------------------------

def test_plan_refuses_what_it_cannot_run():
    with pytest.raises(ObliviateError, match="built-in world"):
        plan_protocol("scalability", "./my-model", "ga")
    with pytest.raises(ConfigError, match="unknown protocol"):
        plan_protocol("stability", "world:tiny", "ga")
    with pytest.raises(ConfigError, match="unknown forget split 'forget50'"):
        plan_protocol("scalability", "world:tiny", "ga", splits=["forget05", "forget50"])
    with pytest.raises(ConfigError, match="at least two"):
        plan_protocol("scalability", "world:tiny", "ga", splits=["forget05"])
    with pytest.raises(ConfigError, match="inference-time"):
        plan_protocol("sustainability", "world:tiny", "icul")
    plan = plan_protocol("scalability", "world:tiny@2", "ga", splits=["forget10", "forget01"])
    assert plan.splits == ("forget01", "forget10") and plan.seed == 2  # ordered by size


def test_cli_protocol_error_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["protocol", "sustainability", "--method", "prompt", "--model", "world:tiny",
                            "--out", str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 2 and "inference-time" in err and len(err.strip().splitlines()) == 1


# -- the protocols on the tiny world ---------------------------------------------------------------------

@pytest.mark.slow
def test_scalability_grows_nested_forget_sets_from_the_target(tmp_path, monkeypatch, capsys, world_home):
    out = tmp_path / "scal"
    args = ["protocol", "scalability", *GA, "--max-items", "24", "--out", str(out), "--json"]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert json.loads((out / "scalability.json").read_text()) == result
    assert (out / "scalability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first, second = result["steps"]
    assert [first["split"], second["split"]] == ["forget05", "forget10"]
    world = get_world("tiny", 0)
    for step in result["steps"]:
        run = out / f"{step['step']:02d}-{step['split']}"
        assert forget_subjects(run) == set(world.splits[step["split"]])
        fq = step["aggregates"]["forget_quality"]
        # each size against its own exact-retrain oracle, with the KS statistic and n beside the p-value
        assert fq["n"] == fq["n_oracle"] == step["n_forget_items"] and 0 <= fq["ks_statistic"] <= 1
        assert json.loads((run / "config.json").read_text())["model"] == "world:tiny@0"  # from the target
        target = step["target"]["forget/probability"]["value"]
        oracle = step["oracle"]["forget/probability"]["value"]
        assert target > oracle + 0.5  # the references: the target knows, the oracle never saw them
        assert step["aggregates"]["forget/probability"]["value"] < target  # GA moved away from the target
    assert first["n_forget_items"] < second["n_forget_items"]
    hashes = [json.loads((out / f"{s['step']:02d}-{s['split']}" / "results.json").read_text())["data_hashes"]
              for s in result["steps"]]
    assert hashes[0]["retain"] == hashes[1]["retain"] and hashes[0]["forget"] != hashes[1]["forget"]


@pytest.mark.slow
def test_sustainability_chains_disjoint_requests(tmp_path, world_home):
    plan = plan_protocol("sustainability", "world:tiny", "ga", splits=["forget05", "forget10"],
                         overrides=["max_steps=3"], generate=False, max_items=24, references=False)
    out = tmp_path / "sus"
    result = run_protocol(plan, out, progress=False)
    assert (out / "sustainability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    world = get_world("tiny", 0)
    first, second = result["steps"]
    assert not set(first["new_people"]) & set(second["new_people"])  # disjoint requests...
    assert set(first["new_people"]) | set(second["new_people"]) == set(world.splits["forget10"])  # = forget10
    request2 = {r["subject"] for r in read_jsonl(out / "requests" / "02-forget.jsonl")}
    assert request2 == set(second["new_people"])
    config = json.loads((out / "02-forget10" / "config.json").read_text())
    assert config["model"] == str(out / "01-forget05")  # request 2 starts from request 1's result
    assert config["world"]["split"] == "forget10"  # so `obliviate eval` picks the cumulative oracle
    assert forget_subjects(out / "02-forget10") == set(world.splits["forget10"])
    assert second["aggregates"]["forget_quality"]["n_oracle"] == second["n_forget_items"]
    assert [r["request"] for r in second["per_request"]] == [1, 2]
    assert all(r["n"] == 24 for r in second["per_request"])
    assert "forget/rouge" not in second["aggregates"]  # generate=False


@pytest.mark.slow
def test_seeds_evaluates_each_world_seed(tmp_path, monkeypatch, capsys, world_home):
    out = tmp_path / "seeds"
    args = ["seeds", "--model", "world:tiny", "--n", "1", "--no-generate", "--out", str(out), "--json"]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["seeds"] == [0] and summary["runs"] == [str(out / "seed0")]
    fq = json.loads((out / "seed0" / "results.json").read_text())["aggregates"]["forget_quality"]
    assert summary["metrics"]["forget_quality"]["mean"] == pytest.approx(fq["value"])
    n_forget = len(get_world("tiny", 0).forget_set("forget10"))
    assert summary["metrics"]["forget_quality/n"]["values"] == [n_forget]
