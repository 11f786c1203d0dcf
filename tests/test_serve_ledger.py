"""The forget-request ledger: requests, transitions, the job queue, publishing, and the hash chain's checks."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from obliviate.errors import ConfigError, NotFound
from obliviate.serve.config import load_config
from obliviate.serve.ledger import STATES, ForgetItem, Job, JobLost, Ledger

ITEMS = [ForgetItem("Where was Ann born?", "Ann was born in Oslo."), ForgetItem(text="Ann's address is 3 Elm Road.")]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state" / "ledger.db"


@pytest.fixture
def ledger(db):
    ledger = Ledger(f"sqlite:///{db}", received_grace=0)
    yield ledger
    ledger.close()


def file(ledger: Ledger, subject: str = "Ann") -> str:
    return ledger.file_request(subject=subject, items=ITEMS, requester="ann@example.org", legal_basis="GDPR Art. 17")


def raw(db, sql: str, *args) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql, args)


def test_transitions_are_recorded_in_order_with_timestamps(ledger):
    rid = file(ledger)
    assert len(rid) == 32 and int(rid, 16) >= 0
    for state, detail in (("enforced", {"seconds": 0.2}), ("unlearning", {"attempt": 1}), ("verifying", {}),
                          ("durable", {"version": 1})):
        ledger.transition(rid, state, **detail)
    record = ledger.get(rid)
    assert record.state == "durable"
    assert [t.state for t in record.transitions] == ["received", "enforced", "unlearning", "verifying", "durable"]
    times = [t.at for t in record.transitions]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert abs(times[0] - datetime.now(UTC)) < timedelta(minutes=1)
    assert record.transitions[1].detail == {"seconds": 0.2}
    assert ledger.items(rid) == ITEMS
    assert (record.subject, record.requester, record.legal_basis) == ("Ann", "ann@example.org", "GDPR Art. 17")


def test_unknown_id_and_bad_input_are_clear_errors(ledger):
    with pytest.raises(NotFound, match="no forget request with id 'nope'"):
        ledger.get("nope")
    with pytest.raises(KeyError):
        ledger.transition("nope", "enforced")
    rid = file(ledger)
    with pytest.raises(ConfigError, match="not one of"):
        ledger.transition(rid, "forgotten")
    with pytest.raises(ConfigError, match=r"items\[0\]: a QA pair needs both"):
        ledger.file_request(subject="x", items=[ForgetItem("q?")], requester="r", legal_basis="b")
    with pytest.raises(ConfigError, match="give at least one"):
        ledger.file_request(subject="x", items=[], requester="r", legal_basis="b")
    assert set(STATES) >= {ledger.get(rid).state}


def test_requests_newest_first_and_enforced_set(ledger):
    first, second = file(ledger, "Ann"), file(ledger, "Bob")
    assert [r.id for r in ledger.requests()] == [second, first]
    ledger.transition(first, "durable")
    assert [rid for rid, _ in ledger.enforced()] == [second]
    assert [rid for rid, _ in ledger.enforced(keep_after_durable=True)] == [first, second]
    assert ledger.enforced()[0][1] == ITEMS
    assert ledger.durable_ids() == [first]


def test_publish_refuses_a_candidate_overtaken_by_another(ledger, tmp_path):
    from obliviate.serve.ledger import Conflict

    first, second = file(ledger, "Ann"), file(ledger, "Bob")
    assert ledger.publish(tmp_path / "a1", "a" * 64, [first], expect_version=None) == 1
    with pytest.raises(Conflict, match="version 1 was published since"):  # trained from the base, like a1
        ledger.publish(tmp_path / "a2", "b" * 64, [second], expect_version=None)
    assert ledger.active_model().version == 1
    assert ledger.publish(tmp_path / "a3", "c" * 64, [first, second], expect_version=1) == 2
    assert ledger.verify().ok


def test_publish_and_active_model(ledger, tmp_path):
    assert ledger.active_model() is None
    rid = file(ledger)
    assert ledger.publish(tmp_path / "a1", "a" * 64, [rid]) == 1
    assert ledger.publish(tmp_path / "a2", "b" * 64, [rid]) == 2
    active = ledger.active_model()
    assert (active.version, active.adapter_dir, active.adapter_sha256, active.request_ids) == \
        (2, tmp_path / "a2", "b" * 64, [rid])


def test_jobs_are_claimed_once_and_again_after_a_stale_heartbeat(db):
    ledger = Ledger(f"sqlite:///{db}", stale_after=0.3, received_grace=0)
    rid = file(ledger)
    job = ledger.claim_job("w1")
    assert job == Job(rid, 1)
    assert ledger.claim_job("w2") is None  # running, heartbeat fresh
    ledger.heartbeat(job)
    raw(db, "UPDATE serve_jobs SET heartbeat_at = ?", "2000-01-01 00:00:00")  # w1 died long ago
    again = ledger.claim_job("w2")
    assert again == Job(rid, 2)
    with pytest.raises(JobLost):
        ledger.heartbeat(job)  # the dead worker, come back, may not carry on
    ledger.finish_job(again)
    assert ledger.claim_job("w3") is None
    assert ledger.jobs() == [{"request_id": rid, "state": "done", "attempt": 2, "worker": "w2"}]


def test_a_received_request_waits_for_enforcement_before_its_job_runs(db):
    ledger = Ledger(f"sqlite:///{db}", received_grace=3600)
    rid = file(ledger)
    assert ledger.claim_job("w") is None
    ledger.transition(rid, "enforced", seconds=0.1)
    assert ledger.claim_job("w") == Job(rid, 1)


def test_reopening_keeps_everything(ledger, db):
    rid = file(ledger)
    ledger.transition(rid, "enforced")
    again = Ledger(f"sqlite:///{db}")
    assert again.get(rid).state == "enforced"
    assert again.verify().ok and again.verify().records == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"


def _chain_with_records(ledger, tmp_path) -> str:
    rid = file(ledger)
    ledger.transition(rid, "enforced", seconds=0.1)
    ledger.transition(rid, "unlearning")
    ledger.record_evidence(rid, {"forget_rouge": {"before": 0.9, "after": 0.1}})
    ledger.publish(tmp_path / "adapter", "c" * 64, [rid])
    ledger.transition(rid, "durable", version=1)
    report = ledger.verify()
    assert report.ok and report.records == 7 and report.line() == "ok: 7 records"
    return rid


@pytest.mark.parametrize("sql, bad, why", [
    ("UPDATE serve_records SET payload = replace(payload, 'unlearning', 'verifying') WHERE seq = 4", 4,
     "payload does not match"),
    ("UPDATE serve_records SET hash = '" + "0" * 64 + "' WHERE seq = 3", 3, "hash is wrong"),
    ("DELETE FROM serve_records WHERE seq = 5", 5, "record 5 is missing"),
    ("DELETE FROM serve_records WHERE seq = 7", 7, "record 7 is missing"),
    ("UPDATE serve_requests SET state = 'needs_review'", 7, "'needs_review' in the table"),
    ("UPDATE serve_items SET answer = 'Ann was born in Rome.' WHERE position = 0", 1, "items were changed"),
    ("UPDATE serve_requests SET evidence = '{\"forget_rouge\": 0}'", 5, "evidence does not match"),
    ("UPDATE serve_models SET adapter_sha256 = '" + "d" * 64 + "'", 6, "version 1 was changed"),
])
def test_verify_finds_the_first_edited_or_deleted_record(ledger, db, tmp_path, sql, bad, why):
    _chain_with_records(ledger, tmp_path)
    raw(db, sql)
    report = ledger.verify()
    assert not report.ok
    assert report.first_bad == bad, report
    assert why in report.reason and report.line() == report.reason


def test_evidence_is_returned_with_the_request(ledger, tmp_path):
    rid = _chain_with_records(ledger, tmp_path)
    assert ledger.get(rid).evidence == {"forget_rouge": {"before": 0.9, "after": 0.1}}


def test_bad_database_url_is_one_line():
    with pytest.raises(ConfigError, match="not a database URL"):
        Ledger("no-such-scheme")
    with pytest.raises(ConfigError, match="only sqlite"):
        Ledger("mysql://u@h/db")


def test_load_config_resolves_paths_and_names_bad_fields(tmp_path):
    path = tmp_path / "deploy" / "serve.yaml"
    path.parent.mkdir()
    (path.parent / "retain.jsonl").write_text('{"question": "q?", "answer": "a."}\n')
    path.write_text("model: world:tiny\nguard: {method: eco}\ndurable: {retain: retain.jsonl}\n"
                    "api_keys: keys.yaml\nworkdir: state\n")
    config = load_config(path)
    assert config.workdir == path.parent / "state" and config.api_keys == path.parent / "keys.yaml"
    assert config.durable.retain == str(path.parent / "retain.jsonl")
    assert config.model == "world:tiny" and config.guard.method == "eco"
    assert config.durable.lora == {"r": 8, "alpha": 16} and config.durable.method == "npo"
    assert config.database_url == f"sqlite:///{path.parent / 'state'}/ledger.db"
    path.write_text("model: world:tiny\nguard: {method: erase}\ndurable: {retain: r}\napi_keys: k\nworkdir: w\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml: field 'guard\.method'"):
        load_config(path)
    path.write_text("model: world:tiny\ndurable: {retain: r}\napi_keys: k\n")
    with pytest.raises(ConfigError, match="field 'workdir': Field required"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml:2: cannot parse"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
