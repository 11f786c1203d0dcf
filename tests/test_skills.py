"""Skill unlearning: the world's skill task, neuron_adjust and key_space_detection.

Fast tests check the task's items and the two run-time rules on hand-made numbers. The `slow` tests
train the tiny world's skill model (`world/skills.py`: the world's target data plus 100 arithmetic
and 100 copy items, about 35 s on one core) and unlearn arithmetic from it. The target answers the
test halves (40 arithmetic problems, 50 copy items, 50 facts; none given to a method) with accuracy
0.92, 1.0 and 1.0. The margins below are far from those and from what the methods reach
(neuron_adjust: 0.20 / 0.96 / 0.92; key_space_detection: 0.0 / 1.0 / 1.0, abstaining on every
arithmetic query and on no other).
"""

from __future__ import annotations

import random

import pytest
import torch

from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.interventions.key_space import KeySpaceAbstention
from obliviate.interventions.neuron_shift import NeuronShift
from obliviate.methods import METHODS, get_method
from obliviate.methods.neuron_adjust import top_percent
from obliviate.world.skills import SKILLS, _arithmetic, get_skills

# The methods these tests cover (tests/test_methods_world.py checks every registered method is covered).
COVERED = {"neuron_adjust", "key_space_detection"}


# -- the task ------------------------------------------------------------------------------------------

def test_skill_items_are_right_deterministic_and_split_into_disjoint_halves():
    task = get_skills("tiny", 0)
    for it in task.fit["arithmetic"] + task.test["arithmetic"]:
        a, op, b = it.question.removeprefix("What is ").rstrip("?").split()
        assert int(it.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    for it in task.fit["copy"] + task.test["copy"]:
        assert it.question.endswith(it.answer)
    for skill in SKILLS:
        fit, test = {it.question for it in task.fit[skill]}, {it.question for it in task.test[skill]}
        assert fit and test and not fit & test
    split = task.split("arithmetic")
    assert split.forget == task.fit["arithmetic"]
    assert {it.meta["skill"] for it in split.retain} == {"copy", "facts"}
    get_skills.cache_clear()
    assert get_skills("tiny", 0).fit == task.fit


def test_unknown_skill_and_preset_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown skill 'poetry'"):
        get_skills("tiny", 0).split("poetry")
    with pytest.raises(ConfigError, match="no skill task for world preset 'huge'"):
        get_skills("huge", 0)
    with pytest.raises(ConfigError, match="120 distinct arithmetic problems need a larger max_operand than 10"):
        _arithmetic(random.Random(0), 120, 10)  # 55 distinct subtractions exist below 10, 60 are asked


# -- the rules on hand-made numbers -------------------------------------------------------------------

def test_top_percent_keeps_the_largest_gaps():
    delta = torch.arange(200, dtype=torch.float).reshape(2, 100)  # 0 .. 199
    chosen = top_percent(delta, 3.0)
    assert chosen.sum() == 6 and chosen[1, -6:].all()


def test_neuron_shift_moves_forget_like_values_into_the_reflected_retain_distribution():
    stats = {"mu_retain": torch.tensor([0.0]), "sd_retain": torch.tensor([1.0]),
             "mu_forget": torch.tensor([4.0]), "sd_forget": torch.tensor([0.5])}
    shift = NeuronShift(torch.tensor([0]), torch.tensor([1]), stats)
    x = torch.tensor([[[7.0, 4.5, 9.0], [7.0, 0.3, 9.0]]])  # (1, 2, 3): neuron 1 holds 4.5, then 0.3
    out = shift.shift(x, 0)
    assert out[0, 0, 1] == pytest.approx(0.0 - 1.0 * (4.5 - 4.0) / 0.5)  # μ_r − σ_r (x − μ_f) / σ_f = −1
    assert out[0, 1, 1] == pytest.approx(0.3)  # likelier under the retain distribution: kept
    assert torch.equal(out[..., [0, 2]], x[..., [0, 2]])  # unselected neurons untouched
    assert shift.shift(x, 1).equal(x)  # no neuron selected in layer 1


def test_key_space_hypercube_holds_the_forget_queries_and_not_others():
    keys = torch.tensor([[0.0, 1.0], [2.0, 3.0], [1.0, 2.0]])
    mean, std = keys.mean(0), keys.std(0)
    kappa = float(((keys - mean).abs() / std).max())
    rule = KeySpaceAbstention(0, mean, std, kappa, 1.0, [5, 6], 2, [9])
    assert rule.inside(keys).all()
    assert not rule.inside(torch.tensor([[1.0, 3.5], [2.5, 2.0]])).any()
    assert [rule.forced(j) for j in range(4)] == [5, 6, 2, 2]


@pytest.mark.parametrize("name", sorted(COVERED))
def test_registered_with_paper_and_defaults(name):
    cls = METHODS[name]
    assert cls.family == "inference-time" and "Li et al. 2025" in cls.paper
    assert set(cls.paper_defaults) <= set(cls.Config.model_fields)


# -- on the tiny world's skill model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def skills(world_home):
    from obliviate.evals.skills import skill_scores
    from obliviate.models.loading import load_model
    from obliviate.world.skills import build_skill_model

    model, tok = load_model(build_skill_model("tiny", 0, progress=False))
    split = get_skills("tiny", 0).split("arithmetic")
    target = skill_scores(model.eval(), tok, split.tests)
    assert target["arithmetic"]["accuracy"] >= 0.8, "the skill model has learnt arithmetic"
    assert target["copy"]["accuracy"] >= 0.9 and target["facts"]["accuracy"] >= 0.9
    return model, tok, split, target


def _unlearn(skills, name, tmp_path):
    from obliviate.evals.skills import skill_scores

    model, tok, split, _ = skills
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method(name)(build_config(get_method(name).Config, {}))
    summary = method.unlearn(model, tok, split.forget, split.retain, tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "training-free: weights untouched"
    wrapped = type(method).load(tmp_path, model, tok)  # as a run directory is loaded back
    return summary, skill_scores(wrapped, tok, split.tests)


@pytest.mark.slow
def test_neuron_adjust_forgets_arithmetic_and_keeps_the_other_skills(skills, tmp_path):
    target = skills[3]
    summary, after = _unlearn(skills, "neuron_adjust", tmp_path)
    assert 0 < summary["neurons"] <= 0.07 * summary["of"] + 1
    assert after["arithmetic"]["accuracy"] <= 0.5 * target["arithmetic"]["accuracy"]
    assert after["copy"]["accuracy"] >= target["copy"]["accuracy"] - 0.1
    assert after["facts"]["accuracy"] >= target["facts"]["accuracy"] - 0.15


@pytest.mark.slow
def test_key_space_detection_abstains_on_arithmetic_only(skills, tmp_path):
    target = skills[3]
    summary, after = _unlearn(skills, "key_space_detection", tmp_path)
    assert summary["forget_inside"] == 1.0 and summary["retain_inside"] <= 0.1
    assert after["arithmetic"]["abstention"] >= 0.9 and after["arithmetic"]["accuracy"] <= 0.1
    for skill in ("copy", "facts"):
        assert after[skill]["abstention"] <= 0.1
        assert after[skill]["accuracy"] >= target[skill]["accuracy"] - 0.05


# -- the command line ----------------------------------------------------------------------------------

def test_skills_export_writes_the_sets_and_bad_tasks_are_one_line_errors(tmp_path, monkeypatch, capsys):
    from obliviate.io import read_jsonl
    from tests.helpers import assert_one_line_error, run_cli

    code, _, err = run_cli(["skills", "export", str(tmp_path / "d"), "--task", "tiny@0/copy"], monkeypatch, capsys)
    assert code == 0, err
    task = get_skills("tiny", 0)
    assert [r["question"] for r in read_jsonl(tmp_path / "d" / "forget.jsonl")] == [
        it.question for it in task.fit["copy"]]
    assert len(list(read_jsonl(tmp_path / "d" / "test_arithmetic.jsonl"))) == len(task.test["arithmetic"])
    code, _, err = run_cli(["skills", "export", str(tmp_path / "e"), "--task", "tiny@x"], monkeypatch, capsys)
    assert_one_line_error(code, err, "tiny@x", "PRESET[@SEED][/SKILL]")
    code, _, err = run_cli(["eval", str(tmp_path), "--suite", "skill"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--world PRESET[@SEED][/SKILL]")


def test_bench_set_needs_a_method_name():
    from obliviate.workflow.skills import parse_method_overrides

    assert parse_method_overrides(["neuron_adjust:percent=3", "neuron_adjust:rule=sample"]) == {
        "neuron_adjust": {"percent": "3", "rule": "sample"}}
    with pytest.raises(ConfigError, match="expected METHOD:KEY=VALUE"):
        parse_method_overrides(["percent=3"])


@pytest.mark.slow
def test_skill_bench_writes_each_methods_scores(skills, tmp_path):
    from obliviate.io import read_json
    from obliviate.workflow.skills import SkillRef, skill_bench

    rows = skill_bench(SkillRef("tiny", 0, "arithmetic"), ["key_space_detection"], tmp_path,
                       {"key_space_detection": {"margin": "1.0"}}, progress=False, defaults="paper")
    assert rows["target"]["skills"]["arithmetic"]["accuracy"] == skills[3]["arithmetic"]["accuracy"]
    assert rows["key_space_detection"]["config"]["margin"] == 1.0
    bench = read_json(tmp_path / "skill_bench.json")
    assert bench["defaults"] == "paper"
    assert bench["rows"]["key_space_detection"]["aggregates"]["skill/arithmetic/abstention"]["higher_is_better"]
    assert (tmp_path / "key_space_detection" / "intervention" / "intervention.json").is_file()
