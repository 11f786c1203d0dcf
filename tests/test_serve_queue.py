"""Two worker processes claim jobs from one queue, on SQLite and on a real PostgreSQL server: every job
runs exactly once (PostgreSQL claims with `SELECT ... FOR UPDATE SKIP LOCKED`, SQLite with an immediate
transaction).

The PostgreSQL server is `$OBLIVIATE_TEST_PG_URL` when set, else a throwaway cluster started here in a
temporary directory with Debian's `initdb` and `pg_ctl` (as the `postgres` user when run as root), on a
free port with its socket in that directory, and stopped afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from obliviate.serve.ledger import ForgetItem, Ledger

REPO = Path(__file__).resolve().parents[1]
JOBS = 10


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_url():
    """A PostgreSQL URL: $OBLIVIATE_TEST_PG_URL, else a throwaway cluster's."""
    if os.environ.get("OBLIVIATE_TEST_PG_URL"):
        yield os.environ["OBLIVIATE_TEST_PG_URL"]
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql, or set "
                    "OBLIVIATE_TEST_PG_URL")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="obliviate-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.fail("running as root, and there is no postgres user to run the PostgreSQL server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        result = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()}\n{log}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


# One worker process: open its own ledger, wait for the start signal, then run jobs with a fast stand-in for
# unlearning (the real loop, `serve_jobs`, claims them) until the queue is empty.
WORKER = """
import sys, time
from pathlib import Path
from obliviate.serve.ledger import Ledger
from obliviate.serve.worker import serve_jobs

url, name, go = sys.argv[1:4]
ledger = Ledger(url, received_grace=0)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.01)

def process(job):
    ledger.transition(job.request_id, "unlearning", worker=name)
    time.sleep(0.1)
    ledger.transition(job.request_id, "durable")
    ledger.finish_job(job)
    print("ran", job.request_id, flush=True)

while serve_jobs(ledger, process, worker=name, once=True):
    pass
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


def test_two_workers_run_every_job_exactly_once(url, tmp_path):
    ledger = Ledger(url)
    ids = [ledger.file_request(subject=f"person {i}", items=[ForgetItem(f"Who is person {i}?", f"Person {i}.")],
                               requester="r", legal_basis="GDPR Art. 17") for i in range(JOBS)]
    for rid in ids:
        ledger.transition(rid, "enforced", seconds=0.0)
    script, go = tmp_path / "worker.py", tmp_path / "go"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, str(script), url, f"w{i}", str(go)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    try:
        for proc in workers:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        outputs = [proc.communicate(timeout=120) for proc in workers]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    ran = [[line.split()[1] for line in out.splitlines() if line.startswith("ran ")] for out, _ in outputs]
    assert all(proc.returncode == 0 for proc in workers), [err for _, err in outputs]
    mine = [[rid for rid in r if rid in ids] for r in ran]
    assert sorted(mine[0] + mine[1]) == sorted(ids)  # every job ran, none twice
    assert mine[0] and mine[1], "both workers took jobs from the one queue"
    for rid in ids:
        states = [t.state for t in ledger.get(rid).transitions]
        assert states == ["received", "enforced", "unlearning", "durable"], states
    jobs = {job["request_id"]: job for job in ledger.jobs()}
    assert all(jobs[rid]["state"] == "done" and jobs[rid]["attempt"] == 1 for rid in ids)
    assert ledger.verify().ok
    ledger.close()


def test_postgres_ledger_round_trip(pg_url):
    ledger = Ledger(pg_url, stale_after=0.2, received_grace=0)
    rid = ledger.file_request(subject="Ann", items=[ForgetItem(text="Ann lives at 3 Elm Road.")], requester="r",
                              legal_basis="b")
    assert ledger.get(rid).state == "received" and ledger.items(rid) == [ForgetItem(text="Ann lives at 3 Elm Road.")]
    job = ledger.claim_job("w1")
    assert job is not None and job.request_id == rid
    time.sleep(0.3)
    again = ledger.claim_job("w2")  # w1's heartbeat is stale
    assert again is not None and again.request_id == rid and again.attempt == job.attempt + 1
    ledger.finish_job(again)
    report = ledger.verify()
    assert report.ok, report
