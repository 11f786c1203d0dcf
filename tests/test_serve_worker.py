"""The durable-unlearning worker on the tiny world: a request reaches `durable` with an adapter that forgets
its facts and keeps the retain set, and evidence that holds hashes, not texts; an impossible gate leaves
the request `needs_review` with nothing published."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from obliviate.serve.config import load_config
from obliviate.serve.ledger import ForgetItem, Ledger, open_ledger
from obliviate.serve.worker import run_worker

pytestmark = pytest.mark.slow

GATES = {"forget_max": {"forget_rouge": 0.4, "forget_probability": 0.5}, "utility_drop_max": 0.1}


@pytest.fixture(scope="module")
def world_facts(world_home):
    from obliviate.world import build_world_models

    world = build_world_models("tiny", 0, "forget10", which=("target",), progress=False).world
    return world.forget_train("forget10")[:4], world.retain_train("forget10")


def deployment(tmp_path, gates: dict, **extra):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({
        "model": "world:tiny", "guard": {"method": "guard"},
        "durable": {"method": "npo", "overrides": {"lr": 3e-3, "epochs": 5}, "lora": {"r": 8, "alpha": 16},
                    "retain": "world:forget10"},
        "gates": gates, "api_keys": "keys.yaml", "workdir": "state", **extra}))
    return load_config(path)


def file_request(ledger: Ledger, facts) -> str:
    rid = ledger.file_request(subject="Louine Kronarest", items=[ForgetItem(it.question, it.answer) for it in facts],
                              requester="dpo@example.org", legal_basis="GDPR Art. 17")
    ledger.transition(rid, "enforced", seconds=0.01)
    return rid


def scores(model, tokenizer, items):
    from obliviate.evals.qa import score_set

    s = score_set(model, tokenizer, items, "check", "retain")
    return float(np.mean(s.probability)), float(np.mean(s.rouge))


def test_a_request_becomes_durable_and_the_published_adapter_forgets(tmp_path, world_facts):
    facts, retain = world_facts
    config = deployment(tmp_path, GATES)
    ledger = open_ledger(config)
    rid = file_request(ledger, facts)

    assert run_worker(config, once=True) == 1
    record = ledger.get(rid)
    assert record.state == "durable", record.evidence
    assert [t.state for t in record.transitions] == ["received", "enforced", "unlearning", "verifying", "durable"]
    active = ledger.active_model()
    assert active is not None and active.version == 1 and active.request_ids == [rid]
    assert (active.adapter_dir / "adapter_config.json").is_file()
    assert ledger.jobs()[0]["state"] == "done"

    # the published adapter, loaded on its own on the base: the facts are gone, the retain set is kept
    from peft import PeftModel

    import obliviate as ob

    base, tokenizer = ob.load_model("world:tiny", progress=False)
    before_forget = scores(base, tokenizer, facts)
    before_retain = scores(base, tokenizer, retain[:40])
    adapted = PeftModel.from_pretrained(base, str(active.adapter_dir)).eval()
    after_forget = scores(adapted, tokenizer, facts)
    after_retain = scores(adapted, tokenizer, retain[:40])
    assert before_forget[0] > 0.9 and before_forget[1] > 0.9  # the target knew them
    assert after_forget[0] <= 0.5 and after_forget[1] <= 0.4
    utility = [2 * p * r / (p + r) for p, r in (before_retain, after_retain)]
    assert utility[0] - utility[1] <= 0.1

    evidence = json.loads((config.workdir / "evidence" / f"{rid}.json").read_text())
    page = (config.workdir / "evidence" / f"{rid}.html").read_text()
    assert evidence == record.evidence
    assert evidence["gates"]["passed"] is True and evidence["published_version"] == 1
    assert evidence["metrics"]["after"]["forget_rouge"] == pytest.approx(after_forget[1], abs=1e-6)
    assert evidence["hashes"]["adapter"] == active.adapter_sha256 and len(evidence["hashes"]["base_model"]) == 64
    assert [it["sha256"] for it in evidence["items"]] == [ForgetItem(f.question, f.answer).sha256() for f in facts]
    assert evidence["method"]["name"] == "npo" and evidence["method"]["config"]["lr"] == 3e-3
    for text in ["Louine Kronarest", *[f.answer for f in facts], *[f.question for f in facts]]:
        assert text not in json.dumps(evidence) and text not in page
    assert "<script" not in page and "http" not in page and evidence["items"][0]["sha256"] in page
    assert ledger.verify().ok


def test_an_impossible_gate_leaves_the_request_for_review_and_publishes_nothing(tmp_path, world_facts):
    facts, _ = world_facts
    config = deployment(tmp_path, {"forget_max": {"forget_probability": 0.0}, "utility_drop_max": 0.1},
                        store_texts=True)
    ledger = open_ledger(config)
    rid = file_request(ledger, facts[:2])
    assert run_worker(config, once=True) == 1
    record = ledger.get(rid)
    assert record.state == "needs_review"
    assert record.transitions[-1].detail["failed"] == ["forget_probability <= 0.0"]
    assert ledger.active_model() is None
    evidence = json.loads((config.workdir / "evidence" / f"{rid}.json").read_text())
    assert evidence["gates"]["passed"] is False and evidence["published_version"] is None
    assert evidence["items"][0]["answer"] == facts[0].answer  # store_texts: the texts are kept
    assert ledger.enforced() == [(rid, ledger.items(rid))]  # the guard stays on
    assert ledger.verify().ok


class Died(BaseException):
    """Raised in place of the worker process being killed (not an Exception: nothing catches it)."""


def test_a_job_whose_worker_died_is_claimed_again_and_resumes_its_run(tmp_path, world_facts, monkeypatch):
    import time

    import obliviate.methods as methods
    from obliviate.methods.npo import NPO

    class DiesAtStep3(NPO):
        calls = 0

        def compute_loss(self, model, batch):
            DiesAtStep3.calls += 1
            if DiesAtStep3.calls == 3:
                raise Died
            return super().compute_loss(model, batch)

    facts, _ = world_facts
    config = deployment(tmp_path, GATES, stale_after=0.5)
    config.durable.overrides["save_every"] = 1
    ledger = open_ledger(config)
    rid = file_request(ledger, facts)
    real = methods.get_method
    monkeypatch.setattr(methods, "get_method", lambda name: DiesAtStep3 if name == "npo" else real(name))
    with pytest.raises(Died):
        run_worker(config, once=True)
    monkeypatch.setattr(methods, "get_method", real)
    assert ledger.get(rid).state == "unlearning"
    assert run_worker(config, once=True) == 0  # the dead worker's heartbeat is still fresh
    time.sleep(0.6)
    assert run_worker(config, once=True) == 1
    record = ledger.get(rid)
    assert record.state == "durable"
    attempts = [t.detail["attempt"] for t in record.transitions if t.state == "unlearning"]
    assert attempts == [1, 2] and record.evidence["attempt"] == 2
    run_dirs = list((config.workdir / "runs").iterdir())
    assert len(run_dirs) == 1  # the same run directory, resumed
    summary = json.loads((run_dirs[0] / "config.json").read_text())["unlearn"]
    assert summary["resumed_from"] == 2 and summary["steps"] == 5
    assert ledger.verify().ok


def test_a_stopped_worker_puts_its_job_back_at_once(tmp_path, world_facts, monkeypatch):
    import obliviate.methods as methods
    from obliviate.methods.npo import NPO

    class StoppedAtStep2(NPO):
        calls = 0

        def compute_loss(self, model, batch):
            StoppedAtStep2.calls += 1
            if StoppedAtStep2.calls == 2:
                raise KeyboardInterrupt
            return super().compute_loss(model, batch)

    facts, _ = world_facts
    config = deployment(tmp_path, GATES)  # stale_after 60 s: only the release makes it claimable now
    ledger = open_ledger(config)
    rid = file_request(ledger, facts)
    real = methods.get_method
    monkeypatch.setattr(methods, "get_method", lambda name: StoppedAtStep2 if name == "npo" else real(name))
    with pytest.raises(KeyboardInterrupt):
        run_worker(config, once=True)
    monkeypatch.setattr(methods, "get_method", real)
    assert ledger.jobs()[0]["state"] == "queued"
    assert run_worker(config, once=True) == 1
    assert ledger.get(rid).state == "durable" and ledger.get(rid).evidence["attempt"] == 2
