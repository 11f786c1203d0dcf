"""`obliviate ledger verify` and `obliviate worker` through the command line."""

from __future__ import annotations

import sqlite3

import pytest
import yaml
from helpers import assert_one_line_error, run_cli

from obliviate.serve.config import load_config
from obliviate.serve.ledger import ForgetItem, open_ledger


def deployment(tmp_path, **extra) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"model": "world:tiny", "durable": {"retain": "world:forget10"},
                                    "api_keys": "keys.yaml", "workdir": "state", **extra}))
    return str(path)


def filed(config_path: str) -> str:
    ledger = open_ledger(load_config(config_path))
    rid = ledger.file_request(subject="Ann", items=[ForgetItem("Where was Ann born?", "In Oslo.")],
                              requester="ann@example.org", legal_basis="GDPR Art. 17")
    ledger.transition(rid, "enforced", seconds=0.01)
    ledger.close()
    return rid


def test_ledger_verify_passes_then_names_the_edited_record(tmp_path, monkeypatch, capsys):
    config = deployment(tmp_path)
    filed(config)
    code, out, err = run_cli(["ledger", "verify", "--config", config], monkeypatch, capsys)
    assert (code, out.strip(), err) == (0, "ok: 3 records", "")
    with sqlite3.connect(tmp_path / "state" / "ledger.db") as conn:
        conn.execute("UPDATE serve_records SET payload = replace(payload, 'enforced', 'durable') WHERE seq = 3")
    code, out, err = run_cli(["ledger", "verify", "--config", config], monkeypatch, capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "record 3" in lines[0] and "Traceback" not in err
    code, out, _ = run_cli(["ledger", "verify", "--config", config, "--json"], monkeypatch, capsys)
    assert code == 1 and '"first_bad": 3' in out


def test_bad_config_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: world:tiny\ndurable: {retain: world:forget10}\napi_keys: k\nworkdir: w\ngates: "
                   "{forget_max: {forget_rogue: 0.4}}\n")
    code, _, err = run_cli(["worker", "--config", str(bad), "--once"], monkeypatch, capsys)
    assert_one_line_error(code, err, "forget_rogue", "did you mean 'forget_rouge'")
    for durable, fragment in (("{method: guard, retain: world:forget10}", "inference-time method"),
                              ("{lora: null, retain: world:forget10}", "durable.lora"),
                              ("{lora: {rank: 8}, retain: world:forget10}", "rank")):
        bad.write_text(f"model: world:tiny\ndurable: {durable}\napi_keys: k\nworkdir: w\n")
        code, _, err = run_cli(["worker", "--config", str(bad), "--once"], monkeypatch, capsys)
        assert_one_line_error(code, err, fragment)
    code, _, err = run_cli(["ledger", "verify", "--config", str(tmp_path / "none.yaml")], monkeypatch, capsys)
    assert_one_line_error(code, err, "none.yaml", "no such config file")
    bad.write_text("model: world:tiny\ndurable: {retain: world:forget10}\napi_keys: k\nworkdir: w\nport: high\n")
    code, _, err = run_cli(["ledger", "verify", "--config", str(bad)], monkeypatch, capsys)
    assert_one_line_error(code, err, "bad.yaml", "field 'port'")


def test_worker_once_with_an_empty_queue_exits_at_once(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["worker", "--config", deployment(tmp_path), "--once"], monkeypatch, capsys)
    assert (code, out.strip()) == (0, "0 jobs processed"), err


@pytest.mark.slow
def test_worker_once_processes_a_job_on_the_tiny_world(tmp_path, monkeypatch, capsys, world_home):
    config = deployment(tmp_path, durable={"retain": "world:forget10", "overrides": {"max_steps": 2}},
                        gates={"forget_max": {"forget_probability": 0.0}})
    rid = filed(config)
    code, out, err = run_cli(["worker", "--config", config, "--once"], monkeypatch, capsys)
    assert code == 0, err
    assert f"request {rid}: needs_review" in out and "1 job processed" in out
    assert "Oslo" not in out + err  # the forgotten content never reaches the logs
    code, out, _ = run_cli(["ledger", "verify", "--config", config], monkeypatch, capsys)
    assert (code, out.strip()) == (0, "ok: 7 records")
