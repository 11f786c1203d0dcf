"""Parity with open-unlearning's own TOFU evaluator on a model and data this project did not make.

tests/fixtures/ou-tiny holds a TOFU-schema directory and two tiny chat Llamas (Llama-3-style template):
`tiny-model` (trained on everything) and `tiny-model-retain` (without forget10). Their README says how
they were made. `open_unlearning_values.json` holds open-unlearning's own numbers for them, with the
commit and the command that produced them. `obliviate eval --preset open-unlearning` must report the
same seven headline keys: to 1e-4 absolute, privleak to 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from obliviate.evals import open_unlearning as ou
from tests.helpers import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "ou-tiny"
RECORDED = json.loads((FIXTURE / "open_unlearning_values.json").read_text())


def test_the_recorded_values_say_where_they_came_from():
    assert len(RECORDED["commit"]) == 40 and RECORDED["repo"] == "locuslab/open-unlearning"
    assert "experiment=eval/tofu/default" in RECORDED["command"] and set(RECORDED["values"]) == set(ou.KEYS)


def test_open_unlearnings_extraction_strength_and_privleak_definitions():
    # the first position from which every prediction matches; 1/N when none does
    es = ou.extraction_strength([np.array([0, 1, 1, 1]), np.array([1, 1]), np.array([1, 0, 0, 0])])
    np.testing.assert_allclose(es, [0.75, 1.0, 0.25])
    assert ou.privleak(1.0, 0.76125) == pytest.approx(-99.99999995811518, abs=1e-9)  # the recorded value
    assert ou.privleak(0.76125, None) == pytest.approx(RECORDED["retain_model_values"]["privleak"], abs=1e-6)
    assert ou.min_k([np.array([-1.0, -3.0, -2.0, -4.0, -0.5])]).tolist() == [3.5]  # lowest int(0.4·5) = 2


@pytest.mark.slow
def test_obliviate_reports_open_unlearnings_seven_keys(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["eval", str(FIXTURE / "tiny-model"), "--data", f"tofu:forget10@{FIXTURE / 'TOFU'}",
                              "--oracle", str(FIXTURE / "tiny-model-retain"), "--preset", "open-unlearning",
                              "--out", str(tmp_path / "eval"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)["open_unlearning"]
    for key, expected in RECORDED["values"].items():
        tolerance = 1e-3 if key == "privleak" else 1e-4
        assert got[key] == pytest.approx(expected, abs=tolerance), key
    fq = RECORDED["values"]["forget_quality"]
    assert got["forget_quality"] == pytest.approx(fq, rel=1e-6)  # a p-value of 3e-11: to 1e-6 relative too
    assert got["min_k_auc"] == pytest.approx(RECORDED["min_k_auc"]["tiny-model"])
    assert got["ref_min_k_auc"] == pytest.approx(RECORDED["min_k_auc"]["tiny-model-retain"])
