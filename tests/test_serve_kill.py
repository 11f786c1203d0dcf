"""`kill -9` of the server or the worker, with real processes, on the tiny world.

- the worker killed mid-job under `obliviate serve`: the server starts another, which claims the job again;
- then the server killed (its worker with it) while forget requests are being filed: after a restart
  every request the ledger holds is enforced before the first generation is served, every id a client
  was given is in the ledger, and the job is claimed again and becomes durable;
- the server's log never holds the forgotten texts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.test_serve_acceptance import ROOT, subject_items, world_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`obliviate serve` as a real process on a free port, its output in `log`."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.log = open(log, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "obliviate", "serve", "--config", str(config),
                                      "--port", str(self.port), *extra], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 300) -> None:
        """Until the port accepts a connection (uvicorn listens only once the app's start-up is done)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("the server did not come up")

    def children(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        pids.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return pids

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ask(base: str, key: str, question: str) -> str:
    r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": "world:tiny", "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def state(base: str, key: str, rid: str) -> dict:
    return httpx.get(f"{base}/v1/forget/{rid}", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()


def wait_state(base: str, key: str, rid: str, wanted: set[str], timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = state(base, key, rid)
        if record["state"] in wanted:
            return record
        time.sleep(0.5)
    raise AssertionError(f"request {rid} stayed {record['state']}")


def keys(config: Path) -> tuple[str, str]:
    from obliviate.serve.auth import add_key
    from obliviate.serve.config import load_config

    cfg = load_config(config)
    return add_key(cfg.api_keys, "admin"), add_key(cfg.api_keys, "client")


def forget_body(name: str, items) -> dict:
    return {"subject": name, "items": [{"question": it.question, "answer": it.answer} for it in items],
            "requester": "dpo@example.org", "legal_basis": "GDPR Art. 17"}


def assert_no_texts(log: Path, name: str, items) -> None:
    text = log.read_text()
    assert "POST /v1/forget" in text  # the log is the server's access log, and it was written
    for secret in [name, *(it.answer for it in items if len(it.answer) > 4)]:
        assert secret not in text, secret


def filed_ids_while_killing(server: Server, admin: str, name: str, items) -> list[str]:
    """kill -9 the server while a client files requests; the ids the client was given."""
    answered: list[str] = []

    def file_more() -> None:
        for i in range(20):
            try:
                r = httpx.post(f"{server.base}/v1/forget", headers={"Authorization": f"Bearer {admin}"},
                               json={**forget_body(name, items[:1]), "requester": f"r{i}"}, timeout=10)
                answered.append(r.json()["id"])
            except httpx.HTTPError:
                return

    thread = threading.Thread(target=file_more)
    thread.start()
    time.sleep(0.3)
    server.kill9()
    thread.join(30)
    return answered


@pytest.mark.slow
def test_kill9_of_the_worker_then_the_server_loses_nothing(world_home, tmp_path):
    """One job, killed twice: its worker by SIGKILL (the server starts another, which claims the job again),
    then the server by SIGKILL while requests are being filed (its worker dies with it). After the restart
    the guard is rebuilt before the first request is served, no request is lost, and the job finishes."""
    config = world_config(tmp_path, stale_after=4.0)
    admin, client = keys(config)
    name, items = subject_items()
    log = tmp_path / "serve.log"
    server = Server(config, log)
    try:
        server.wait_listening()
        assert items[0].answer in ask(server.base, client, items[0].question)
        filed = httpx.post(f"{server.base}/v1/forget", headers={"Authorization": f"Bearer {admin}"},
                           json=forget_body(name, items), timeout=60).json()
        rid = filed["id"]
        wait_state(server.base, admin, rid, {"unlearning"}, timeout=120)

        # 1. the worker killed mid-job: the server starts a new one, which claims the job again
        (worker,) = server.children()
        time.sleep(1)
        os.kill(worker, signal.SIGKILL)
        deadline = time.time() + 180
        while [t["state"] for t in state(server.base, admin, rid)["transitions"]].count("unlearning") < 2:
            assert time.time() < deadline, "the job was not claimed again"
            time.sleep(0.5)
        (second,) = server.children()
        assert second != worker and not alive(worker)

        # 2. the server killed while requests are being filed: its worker dies with it
        answered = filed_ids_while_killing(server, admin, name, items)
        deadline = time.time() + 10
        while alive(second) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(second)  # no orphaned worker goes on with the job

        server = Server(config, log)
        server.wait_listening()
        # the very first request served after the restart is already guarded
        assert items[0].answer.lower() not in ask(server.base, client, items[0].question).lower()
        from obliviate.serve.config import load_config
        from obliviate.serve.ledger import Ledger

        ledger = Ledger(load_config(config).database_url)
        held = {r.id: r.state for r in ledger.requests()}
        assert set(answered) | {rid} <= set(held)  # no request a client was given an id for is lost
        assert all(s != "received" for s in held.values())  # every one is recorded as enforced

        # 3. the job is claimed a third time once the killed worker's heartbeat is stale, and finishes
        record = wait_state(server.base, admin, rid, {"durable", "needs_review"})
        assert record["state"] == "durable", record["evidence"]
        assert {j["request_id"]: j for j in ledger.jobs()}[rid]["attempt"] >= 3
        assert record["evidence"]["attempt"] >= 3
        assert ledger.verify().ok
        deadline = time.time() + 60  # the server swaps the adapter in; the facts stay forgotten
        while "adapter-v" not in httpx.post(
                f"{server.base}/v1/completions", headers={"Authorization": f"Bearer {client}"}, timeout=60,
                json={"model": "world:tiny", "prompt": "Question: x\nAnswer:", "max_tokens": 1}).text.replace(
                "adapter-v0", ""):
            assert time.time() < deadline
            time.sleep(0.5)
        assert sum(it.answer.lower() in ask(server.base, client, it.question).lower() for it in items) <= 1
    finally:
        server.stop()
    assert_no_texts(log, name, items)
