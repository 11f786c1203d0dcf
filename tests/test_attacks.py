"""Robustness attacks: the recovery formula and summary on hand-made numbers, each attack's plumbing on
a tiny model built in code, and (slow) the sanity check on the built-in world: every attack finds the
knowledge in the target and not in the oracle.

The world preset of the sanity check is `tiny` unless $OBLIVIATE_SANITY_PRESET names another (the
issue's acceptance names `small`; `OBLIVIATE_SANITY_PRESET=small pytest -m slow tests/test_attacks.py`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from obliviate.attacks import ATTACKS, ORDER, get_attack
from obliviate.attacks.base import MIN_GAP, AttackSets, RunInfo, compare_rows, harmonic_mean, recovery, robustness
from obliviate.attacks.facts import alternatives, raw_value
from obliviate.attacks.measure import AttackPrompt, answers_correctly, measure
from obliviate.attacks.probe import Probe
from obliviate.attacks.quantize import rtn_quantise
from obliviate.attacks.relearn import Relearn, relearn_ratio, split_facts
from obliviate.attacks.runner import Subjects, attack_configs, run_attacks
from obliviate.attacks.summary import robustness_summary, write_attack_results
from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError, ObliviateError
from obliviate.io import read_json, read_jsonl, write_json
from tests.helpers import run_cli

CHANCE = 1 / 6  # the world's facts have 5 wrong alternatives


# -- the recovery measure on hand-made numbers ------------------------------------------------------


def test_recovery_formula():
    assert recovery(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert recovery(0.1, 0.1, 0.9) == pytest.approx(0.0)
    assert recovery(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert recovery(0.0, 0.1, 0.9) == pytest.approx(-0.125)  # not clipped: noise can go below the oracle
    assert recovery(0.5, 0.4, 0.4 + MIN_GAP / 2) is None  # the attack cannot tell knowing from not knowing
    assert robustness(-0.125) == 1.0 and robustness(1.3) == 0.0 and robustness(0.25) == pytest.approx(0.75)
    assert robustness(None) is None


def test_harmonic_mean():
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.0, 1.0]) == 0.0  # one attack that recovers everything decides it
    assert harmonic_mean([]) is None


def _rows(values: dict[str, list[float]], variant: str) -> list[dict]:
    return [{"key": f"f{i}", "variant": variant, "knows": v} for i, v in enumerate(values)]


def test_compare_rows_pools_informative_forms_only():
    n = 10
    by_role = {
        "target": _rows([1] * n, "a") + _rows([1] + [0] * (n - 1), "weak") + _rows([1] * n, "ref"),
        "oracle": _rows([0] * n, "a") + _rows([0] * n, "weak") + _rows([0] * n, "ref"),
        "unlearned": _rows([1] * 5 + [0] * 5, "a") + _rows([0] * n, "weak") + _rows([1] * n, "ref"),
    }
    report = compare_rows(by_role, reference=("ref",))
    assert report["headline_variants"] == ["a"]
    assert report["recovery"] == pytest.approx(0.5)
    low, high = report["recovery_ci"]
    assert 0 <= low < 0.5 < high <= 1
    assert report["variants"]["weak"]["informative"] is False and "uninformative" in report["variants"]["weak"]["note"]
    assert report["variants"]["ref"]["reference"] is True
    assert report["robustness"] == pytest.approx(0.5)


def test_compare_rows_without_target_reports_leak_not_recovery():
    by_role = {"oracle": _rows([0] * 8, "a"), "unlearned": _rows([1] * 2 + [0] * 6, "a")}
    report = compare_rows(by_role)
    assert report["recovery"] is None and "no target" in report["note"]
    assert report["knows"]["leak"] == pytest.approx(0.25)


def test_compare_rows_no_informative_form_gives_no_number():
    by_role = {role: _rows([0, 0, 0, 1], "a") for role in ("target", "oracle", "unlearned")}
    report = compare_rows(by_role)
    assert report["recovery"] is None and report["robustness"] is None
    assert "cannot detect" in report["note"]


def test_relearn_ratio_cases():
    # the unlearned model gains 0.6 on V, the oracle 0.1: R = 0.1 / 0.6
    value, _ = relearn_ratio(u0=0.1, uk=0.7, o0=0.05, ok=0.15, t0=0.95)
    assert value == pytest.approx(0.1 / 0.6)
    # no gain, or a loss: as robust as the oracle, never a negative or exploding ratio
    assert relearn_ratio(0.1, 0.05, 0.05, 0.15, 0.95)[0] == 1.0
    assert relearn_ratio(0.1, 0.1, 0.05, 0.05, 0.95)[0] == 1.0
    # a gain of one fact in noise (< a tenth of the knowledge gap over the oracle's gain) is not relearning
    assert relearn_ratio(0.1, 0.14, 0.05, 0.05, 0.95)[0] == 1.0
    # a model that already answers V (the target itself) has no R: nothing was unlearned
    value, note = relearn_ratio(0.95, 0.95, 0.05, 0.05, 0.95)
    assert value is None and "before relearning" in note
    assert relearn_ratio(0.1, 0.5, 0.05, 0.05, 0.15)[0] is None  # the target does not know V either


def test_split_facts_is_a_seeded_partition():
    keys = [f"k{i}" for i in range(9)]
    train, held = split_facts(keys, 0.5, seed=3)
    assert train and held and not train & held and train | held == set(keys)
    assert (train, held) == split_facts(list(reversed(keys)), 0.5, seed=3)
    assert split_facts(keys, 0.5, seed=4) != (train, held)


def test_summary_on_hand_made_reports():
    reports = {
        "direct": {"status": "ok", "recovery": 0.9},
        "forms": {"status": "ok", "recovery": 0.5, "recovery_ci": [0.3, 0.7]},
        "jailbreak": {"status": "ok", "recovery": -0.1},
        "relearn": {"status": "not applicable", "reason": "inference-time run"},
        "probe": {"status": "ok", "recovery": None, "note": "no form separates"},
    }
    summary = robustness_summary(reports)
    assert summary["harmonic_mean"] == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))  # direct is a reference row
    assert summary["n"] == 2
    assert set(summary["left_out"]) == {"relearn", "probe"}
    assert summary["attacks"]["direct"]["counts"] is False
    assert summary["attacks"]["jailbreak"]["robustness"] == 1.0


def test_write_attack_results_merges_and_updates_results(tmp_path):
    write_json(tmp_path / "results.json", {"aggregates": {"forget_quality": {"value": 0.5}}})
    rows = {"target": [{"key": "f0", "variant": "a", "knows": 1.0}]}
    write_attack_results(tmp_path, {"forms": {"status": "ok", "recovery": 0.5}}, {"forms": rows})
    write_attack_results(tmp_path, {"jailbreak": {"status": "ok", "recovery": 0.0}}, {"jailbreak": rows})
    write_attack_results(tmp_path, {"forms": {"status": "ok", "recovery": 1.0}}, {"forms": rows})
    saved = read_json(tmp_path / "attacks.json")
    assert set(saved["attacks"]) == {"forms", "jailbreak"} and saved["attacks"]["forms"]["recovery"] == 1.0
    items = read_jsonl(tmp_path / "attack_items.jsonl")
    assert sorted(r["attack"] for r in items) == ["forms", "jailbreak"]  # a rerun replaces its own rows
    results = read_json(tmp_path / "results.json")
    assert results["aggregates"]["forget_quality"]["value"] == 0.5
    assert results["robustness"]["harmonic_mean"] == pytest.approx(0.0)  # forms now recovers everything


# -- helpers ------------------------------------------------------------------------------------------


def test_answer_matching_and_templates():
    assert answers_correctly("Punak. Then more.", "Punak", ["Grathym"])
    assert not answers_correctly("Punakian", "Punak")  # whole words only
    assert not answers_correctly("Punak or Grathym", "Punak", ["Grathym"])  # hedging over options is no answer
    assert raw_value("in the city of {value}", "in the city of Grathym") == "Grathym"
    assert raw_value("{a} {value} by trade", "an ostler by trade") == "ostler"
    assert raw_value("in the city of {value}", "elsewhere") == "elsewhere"


def test_rtn_quantise_rounds_to_a_4_bit_grid():
    w = torch.randn(8, 100)
    q = rtn_quantise(w, bits=4, group_size=32)
    assert q.shape == w.shape
    for row in range(8):
        for start in range(0, 100, 32):
            group_w, group_q = w[row, start:start + 32], q[row, start:start + 32]
            step = group_w.abs().max() / 7
            assert len(torch.unique(group_q)) <= 16
            assert torch.all((group_q - group_w).abs() <= step / 2 + 1e-6)


class _Holder(torch.nn.Module):
    """Holds a LoRA model without merging it, as the sharded (S3T) intervention holds its adapters."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return self.inner(input_ids=input_ids).logits


@pytest.mark.parametrize("scheme", ["int8", "rtn4"])
def test_quantisers_leave_unmerged_lora_adapters_in_full_precision(scheme):
    from peft import LoraConfig, get_peft_model

    from obliviate.attacks.quantize import quantise_int8, quantise_rtn4
    from tests.conftest import make_tiny_llama

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(make_tiny_llama(), config)
    model = _Holder(lora).eval()
    ids = torch.tensor([[5, 9, 12, 40, 7]])
    quantised = quantise_int8(model) if scheme == "int8" else quantise_rtn4(model, group_size=16)
    out = quantised(ids)  # a quantised LoRA layer used to fail here ('function' object has no attribute 'dtype')
    assert out.shape == model(ids).shape and torch.isfinite(out).all()
    for name, module in quantised.named_modules():
        if name.endswith("lora_A.default") or name.endswith("lora_B.default"):
            original = model.get_submodule(name)
            assert type(module) is torch.nn.Linear and torch.equal(module.weight, original.weight)
    base = "inner.base_model.model.model.layers.0.self_attn.q_proj.base_layer"
    if scheme == "int8":
        assert type(quantised.get_submodule(base)) is not torch.nn.Linear  # the base layer is quantised
    else:
        assert not torch.equal(quantised.get_submodule(base).weight, model.get_submodule(base).weight)


# -- plumbing on a tiny model built in code --------------------------------------------------------


ITEMS = [
    QAItem("Where was Mara Lind born?", "Oslo", "She was born in Oslo.", ["Rome", "Berlin"],
           ["Where was the author Mara Lind born?"], subject="Mara Lind", meta={"attribute": "city"}),
    QAItem("What genre does Mara Lind write?", "poetry", None, ["music", "film"],
           ["What genre does the author Mara Lind write?"], subject="Mara Lind", meta={"attribute": "genre"}),
    QAItem("Where was Bob born?", "London", None, ["Paris", "Madrid"], ["Where was the author Bob born?"],
           subject="Bob", meta={"attribute": "city"}),
    QAItem("What genre does Bob write?", "fiction", None, ["science", "story"], [], subject="Bob",
           meta={"attribute": "genre"}),
]
SETS = AttackSets(forget=ITEMS[:2], retain=ITEMS[2:])


def test_measure_rows_on_a_tiny_model(tiny_llama, tiny_tokenizer):
    prompts = [AttackPrompt("k", "v", "Question: Where was Mara Lind born?\nAnswer:", "Oslo", ["Rome", "Berlin"]),
               AttackPrompt("j", "v", "Question: Where?\nAnswer:", "Oslo", [])]
    rows = measure(tiny_llama, tiny_tokenizer, prompts, max_new_tokens=4)
    assert rows[0]["knows"] in (0.0, 1.0) and 0 < rows[0]["option_prob"] < 1
    assert np.isnan(rows[1]["knows"])  # nothing to rank against
    assert {"answers", "generation"} <= set(rows[0])


@pytest.mark.parametrize("name", ["direct", "forms", "jailbreak", "in_context", "stepwise"])
def test_prompt_attacks_run_without_a_world(name, tiny_llama, tiny_tokenizer):
    attack = get_attack(name)(get_attack(name).Config(max_new_tokens=3))
    rows = attack.run(tiny_llama, tiny_tokenizer, SETS)["rows"]
    assert rows and all(r["knows"] in (0.0, 1.0) for r in rows if not np.isnan(r["knows"]))
    if name == "forms":  # only the forms that need no world templates
        assert {r["variant"] for r in rows} == {"paraphrase", "multiple_choice", "true_false"}


def test_every_registered_attack_is_ordered():
    assert set(ORDER) == set(ATTACKS)
    with pytest.raises(ConfigError, match="did you mean 'forms'"):
        get_attack("form")


def test_attack_configs_scoping():
    configs = attack_configs(["forms", "relearn"], ["seed=3", "relearn.steps=5"])
    assert configs["forms"].seed == 3 and configs["relearn"].seed == 3 and configs["relearn"].steps == 5
    with pytest.raises(ConfigError, match="no attack run here has a field"):
        attack_configs(["forms"], ["steps=5"])


def test_relearn_not_applicable_to_an_inference_time_run(tmp_path, monkeypatch, capsys):
    ok, reason = Relearn().applies_to(RunInfo("r", kind="intervention", method="eco"))
    assert not ok and "inference-time" in reason and "original model" in reason
    assert Relearn().applies_to(RunInfo("r", kind="weights"))[0]
    # through the command line: the reason, never a number, and no model is loaded
    run = tmp_path / "eco"
    write_json(run / "artifact.json", {"kind": "intervention", "base_model": str(tmp_path / "missing"),
                                       "method": "eco", "path": "intervention"})
    code, out, _ = run_cli(["attack", "relearn", str(run), "--json"], monkeypatch, capsys)
    assert code == 0
    report = json.loads(out)["attacks"]["relearn"]
    assert report["status"] == "not applicable" and "inference-time" in report["reason"]
    assert "recovery" not in report
    assert read_json(run / "attacks.json")["robustness"]["left_out"]["relearn"] == report["reason"]


class _LogitsOnly(torch.nn.Module):
    """A model that gives logits and nothing else (no hidden states)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **kwargs):
        return CausalLMOutputWithPast(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)


def test_probe_without_hidden_states_is_one_line(tiny_llama, tiny_tokenizer):
    with pytest.raises(ObliviateError) as err:
        Probe().run(_LogitsOnly(tiny_llama), tiny_tokenizer, SETS)
    message = str(err.value)
    assert "\n" not in message and "no hidden states" in message
    assert "behavioural attacks" in message and "probe the model it wraps" in message


def test_alternatives_outside_the_world_are_the_perturbed_answers():
    assert alternatives(ITEMS[0]) == ["Rome", "Berlin"]


# -- the sanity check on the world: present in the target, absent in the oracle ------------------------


PRESET = os.environ.get("OBLIVIATE_SANITY_PRESET", "tiny")
FAST = {"generate": "false"}  # recognition is the headline measure; generation only where it is asserted


@pytest.fixture(scope="module")
def world_subjects(world_home):
    from obliviate.attacks.facts import world_sets
    from obliviate.models.loading import load_model
    from obliviate.world import build_world_models

    models = build_world_models(PRESET, 0, "forget10", which=("target", "oracle"), progress=False)
    target, oracle = load_model(models.target), load_model(models.oracle)
    # The target in the unlearned role: the attacks must find everything there.
    return Subjects(RunInfo(f"world:{PRESET}"), {"unlearned": target, "oracle": oracle, "target": target},
                    world_sets(PRESET, 0, "forget10"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ORDER if n != "probe"])
def test_sanity_knowledge_present_in_target_absent_in_oracle(name, world_subjects):
    overrides = dict(FAST, **({"generate": "true"} if name == "direct" else {}))
    configs = attack_configs([name], [f"{k}={v}" for k, v in overrides.items()])
    report = run_attacks([name], world_subjects, configs, progress=False, stop_on_error=True).reports[name]
    levels = report["knows"]["levels"]
    assert report["headline_variants"], report["variants"]
    assert levels["target"] >= levels["oracle"] + 0.4, levels  # present in the target...
    assert levels["oracle"] <= CHANCE + 0.1, levels  # ...absent in the oracle: at or below chance
    assert report["recovery"] == pytest.approx(1.0)  # the target in the unlearned role recovers all
    if name == "direct":
        said = report["answers"]["levels"]
        assert said["target"] >= 0.9 and said["oracle"] <= 0.1
    if name == "relearn":
        assert report["R"]["value"] is None  # the target already knew V: no ratio, not a misleading 1
        assert report["R"]["delta_oracle"] <= 0.15  # relearning T does not teach V to a model that never knew it
        assert report["variants"]["relearned"]["knows"]["levels"]["oracle"] <= CHANCE + 0.1
    if name == "quantize":
        variants = report["variants"]
        assert {"none", "int8", "rtn4"} <= set(variants) and variants["none"]["reference"]
        if not torch.cuda.is_available():
            assert "no CUDA GPU" in report["extra"]["target"]["skipped"]["nf4"]


@pytest.mark.slow
def test_sanity_probe_reads_target_not_oracle(world_subjects):
    report = run_attacks(["probe"], world_subjects, progress=False, stop_on_error=True).reports["probe"]
    levels, prior = report["knows"]["levels"], report["prior"]
    assert levels["target"] >= prior + 0.3, (levels, prior)
    assert levels["oracle"] <= prior + 0.1, (levels, prior)


@pytest.mark.slow
def test_cli_attack_on_a_world_model(tmp_path, monkeypatch, capsys, world_home):
    code, out, err = run_cli(["attack", "direct", f"world:{PRESET}", "--out", str(tmp_path), "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["attacks"]["direct"]["status"] == "ok"
    assert payload["attacks"]["direct"]["recovery"] == pytest.approx(1.0)
    assert (tmp_path / "attacks.json").exists() and (tmp_path / "attack_items.jsonl").exists()


@pytest.mark.slow
def test_sanity_second_oracle_recovers_nothing(world_subjects):
    """A second exact retrain (another seed) in the unlearned role: no attack finds what it never saw."""
    from obliviate.models.loading import load_model
    from obliviate.world import build_world_models

    models = build_world_models(PRESET, 0, "forget10", which=("oracle2",), progress=False)
    subjects = Subjects(world_subjects.run, {**world_subjects.models, "unlearned": load_model(models.oracle2)},
                        world_subjects.sets)
    names = [n for n in ORDER if n != "probe"]  # the probe's oracle is checked against its prior above
    configs = attack_configs(names, [f"{k}={v}" for k, v in FAST.items()])
    reports = run_attacks(names, subjects, configs, progress=False, stop_on_error=True).reports
    for name, report in reports.items():
        assert report["recovery"] is not None and abs(report["recovery"]) <= 0.25, (name, report["recovery"])
    assert robustness_summary(reports)["harmonic_mean"] >= 0.8
    assert reports["relearn"]["R"]["value"] == 1.0  # relearning brings back nothing the oracle did not learn
