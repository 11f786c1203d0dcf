"""The gates' verdicts and the evidence files, without a model: pass, fail and not-applicable gates, escaping
in the HTML page, and the hashes that name data, adapters and weights."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.errors import ConfigError
from obliviate.serve.config import GatesConfig
from obliviate.serve.evidence import render_html, sha256_dir, sha256_items, sha256_state_dict, write_evidence
from obliviate.serve.gates import check_config, check_gates

BEFORE = {"forget_probability": 0.95, "forget_rouge": 1.0, "forget_text_probability": None, "utility": 0.90}


def test_gates_pass_fail_and_not_applicable():
    gates = GatesConfig(forget_max={"forget_rouge": 0.4, "forget_text_probability": 0.2}, utility_drop_max=0.1)
    good = {**BEFORE, "forget_rouge": 0.1, "utility": 0.85}
    report = check_gates(gates, BEFORE, good)
    assert report.passed and report.failed() == []
    verdicts = {c.gate: c.passed for c in report.checks}
    assert verdicts == {"forget_rouge <= 0.4": True, "forget_text_probability <= 0.2": None,
                        "utility drop <= 0.1": True}
    drop = next(c for c in report.checks if c.gate.startswith("utility"))
    assert (drop.before, drop.after, drop.value) == (0.90, 0.85, pytest.approx(0.05))

    assert check_gates(gates, BEFORE, {**good, "forget_rouge": 0.5}).failed() == ["forget_rouge <= 0.4"]
    assert check_gates(gates, BEFORE, {**good, "utility": 0.7}).failed() == ["utility drop <= 0.1"]
    assert not check_gates(gates, BEFORE, {**good, "utility": None}).passed  # utility unmeasured: no pass


def test_a_drop_gate_fails_a_candidate_that_only_sits_under_a_bound_the_live_model_met():
    gates = GatesConfig(forget_max={"forget_rouge": 0.4}, forget_min_drop={"forget_probability": 0.3})
    live = {"forget_rouge": 0.4, "forget_probability": 0.9, "utility": 0.9}
    unchanged = {**live, "forget_probability": 0.85}
    report = check_gates(gates, live, unchanged)
    assert report.failed() == ["forget_probability drop >= 0.3"]  # the bound alone would have passed it
    moved = next(c for c in report.checks if "drop >= 0.3" in c.gate)
    assert (moved.before, moved.after, moved.value) == (0.9, 0.85, pytest.approx(0.05))
    assert check_gates(gates, live, {**live, "forget_probability": 0.5}).passed
    with pytest.raises(ConfigError, match="gates.forget_min_drop: unknown metric"):
        check_config(GatesConfig(forget_min_drop={"forget_prob": 0.3}))


def test_attack_gates_need_a_measured_recovery():
    gates = GatesConfig(attacks=["relearn", "forms"], attack_recovery_max=0.3)
    after = {**BEFORE, "utility": 0.9}
    assert check_gates(gates, BEFORE, after, {"relearn": 0.1, "forms": 0.2}).passed
    assert check_gates(gates, BEFORE, after, {"relearn": 0.1, "forms": 0.5}).failed() == ["forms recovery <= 0.3"]
    assert check_gates(gates, BEFORE, after, {"relearn": 0.1, "forms": None}).failed() == ["forms recovery <= 0.3"]
    assert check_gates(gates, BEFORE, after, {"relearn": float("nan")}).failed() == \
        ["relearn recovery <= 0.3", "forms recovery <= 0.3"]


def test_unknown_gate_metric_or_attack_is_refused():
    with pytest.raises(ConfigError, match="did you mean 'forget_rouge'"):
        check_config(GatesConfig(forget_max={"forget_rogue": 0.4}))
    with pytest.raises(ConfigError, match="relearm"):
        check_config(GatesConfig(attacks=["relearm"]))


def test_the_html_page_escapes_everything_and_loads_nothing(tmp_path):
    hostile = "<script>alert(1)</script>"
    evidence = {"request_id": "abc", "state": "needs_review", "request": {"requester": hostile, "legal_basis": "x"},
                "items": [{"kind": "qa", "sha256": "f" * 64, "question": hostile, "answer": "a & b"}],
                "gates": {"passed": False, "checks": [{"gate": hostile, "before": 1.0, "after": 0.5, "value": 0.5,
                                                       "limit": 0.4, "passed": False}]},
                "metrics": {"before": {hostile: 1.0}, "after": {}}, "method": {"name": "npo", "config": {"k": hostile}},
                "hashes": {"adapter": "a" * 64}, "error": hostile}
    json_path, html_path = write_evidence(tmp_path, "abc", evidence)
    page = html_path.read_text()
    assert page == render_html(evidence) and json.loads(json_path.read_text()) == evidence
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page
    assert "src=" not in page and "href=" not in page and "http" not in page
    assert 'class="fail"' in page and "f" * 64 in page


def test_hashes_change_with_the_content(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"\x00\x01")
    first = sha256_dir(tmp_path / "adapter")
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"\x00\x02")
    assert sha256_dir(tmp_path / "adapter") != first and len(first) == 64
    assert sha256_items([{"text": "a"}]) != sha256_items([{"text": "b"}])
    layer = torch.nn.Linear(2, 2)
    digest = sha256_state_dict(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1
    assert sha256_state_dict(layer) != digest
