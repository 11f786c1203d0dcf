"""Load test of `obliviate serve` on loopback: N streaming clients, the guard's overhead, the time to enforce.

First the guard's own cost in-process: one request at a time, blocks with and without the guard,
alternating. Then two `obliviate serve --config examples/serve-world.yaml --no-worker` processes
(the tiny world's model), each in a temporary workdir, and phases of N concurrent clients, each
sending R streaming chat completions (questions about the subject to forget and about other people
of the world, in turn):

1. **plain** (the first server, never asked to forget: no guard runs) and **guard** (the second,
   after `POST /v1/forget` of one subject's facts; the time to enforce is the server's
   `enforce_seconds` and the client's round trip), alternating for `--rounds` rounds, no worker
   running, so their ratio is the guard's overhead under load;
2. **guard + job**: the same load on the second server while `obliviate worker` unlearns that
   request (the figures the issue asks for "while a forget job runs"; the worker takes a core).

Prints p50 and p99 of the whole-response latency and of the time to the first token, the error count
and the load average around each phase, then the ratios.

    OMP_NUM_THREADS=1 OBLIVIATE_HOME=... python benchmarks/serve_load.py --clients 8 --requests 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUBJECT = "p001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_questions(n_other: int = 40):
    """(the subject's name, its QA pairs, questions about others) of the tiny world's forget10 split."""
    from obliviate.world import get_world

    world = get_world("tiny", 0)
    forget, retain = world.forget_set("forget10"), world.retain_set("forget10")
    mine = [it for it in forget if it.subject == SUBJECT]
    return mine[0].meta["subject_name"], mine, [it.question for it in retain[:n_other]]


def pctl(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def one_client(client, url: str, key: str, questions: list[str], requests: int, out: dict) -> None:
    for i in range(requests):
        body = {"model": "world:tiny", "stream": True, "max_tokens": 16,
                "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
        start = time.perf_counter()
        first = None
        try:
            async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                if r.status_code != 200:
                    out["errors"] += 1
                    await r.aread()
                    continue
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["errors"] += 1
                        break
                    if first is None and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - start
            if not done:
                out["errors"] += 1
                continue
        except Exception:  # a refused or broken connection counts as an error
            out["errors"] += 1
            continue
        out["latency"].append(time.perf_counter() - start)
        out["ttft"].append(first if first is not None else time.perf_counter() - start)


async def phase(base: str, key: str, questions: list[str], clients: int, requests: int) -> dict:
    import httpx

    out = {"latency": [], "ttft": [], "errors": 0, "load_before": os.getloadavg()}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, "/v1/chat/completions", key, questions[c:] + questions[:c],
                                          requests, out) for c in range(clients)))
        out["seconds"] = time.perf_counter() - start
    out["load_after"] = os.getloadavg()
    return out


def report(name: str, r: dict) -> str:
    ms = lambda v: f"{1000 * v:.0f} ms"  # noqa: E731
    load = " ".join(f"{x:.2f}" for x in r["load_before"]) + " → " + " ".join(f"{x:.2f}" for x in r["load_after"])
    return (f"{name:12s} n={len(r['latency'])} errors={r['errors']} latency p50 {ms(pctl(r['latency'], 50))} "
            f"p99 {ms(pctl(r['latency'], 99))} · first token p50 {ms(pctl(r['ttft'], 50))} "
            f"p99 {ms(pctl(r['ttft'], 99))} · {len(r['latency']) / r['seconds']:.1f} req/s · load {load}")


def inprocess_overhead(config_path: str, name: str, items, questions: list[str], rounds: int = 5,
                       per: int = 24) -> str:
    """The guard's own cost, one request at a time in this process: blocks of `per` greedy answers with and
    without the guard, alternating for `rounds` rounds so that the machine's drift hits both alike."""
    from obliviate.serve.config import load_config
    from obliviate.serve.enforcement import Enforcement, retain_items
    from obliviate.serve.engine import Engine, Sampling

    cfg = load_config(config_path)
    engine = Engine.load(cfg.model, cfg.prompt)
    guard = Enforcement(engine.base, engine.tokenizer, cfg.guard.method, cfg.guard.settings, retain_items(cfg))
    guard.warm()
    guard.add("bench", name, items)
    prompts = [engine.chat_ids([{"role": "user", "content": q}]) for q in questions[:per]]
    seconds = {"plain": [], "guard": []}
    per_token = {"plain": [], "guard": []}
    for _ in range(rounds):
        for mode, intervention in (("plain", None), ("guard", guard.current())):
            for ids in prompts:
                start = time.perf_counter()
                _, outcome = engine.complete(ids, Sampling(16, stop=engine.chat_stops()), intervention)
                seconds[mode].append(time.perf_counter() - start)
                per_token[mode].append(seconds[mode][-1] / (outcome.completion_tokens + 1))
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    tok = {k: float(np.median(v)) for k, v in per_token.items()}
    return (f"in-process, one request at a time ({rounds} alternating rounds × {per} prompts each way): median "
            f"{1000 * med['plain']:.1f} ms plain, {1000 * med['guard']:.1f} ms guarded = "
            f"{med['guard'] / med['plain']:.2f}×; "
            f"per generated token {tok['guard'] / tok['plain']:.2f}×")


def wait_ready(base: str, key: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def start_server(tmp: Path, name: str, config: dict, env: dict) -> tuple[subprocess.Popen, str, Path]:
    """`obliviate serve --no-worker` on a free port with its own workdir; (process, base URL, config path)."""
    folder = tmp / name
    folder.mkdir()
    port = free_port()
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump({**config, "workdir": str(folder / "state"), "api_keys": str(tmp / "keys.yaml"),
                                    "port": port, "database": "sqlite:///{workdir}/ledger.db"}))
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "obliviate", "serve", "--config", str(path), "--no-worker"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", path


def pooled(runs: list[dict]) -> dict:
    return {"latency": [x for r in runs for x in r["latency"]], "ttft": [x for r in runs for x in r["ttft"]],
            "errors": sum(r["errors"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
            "load_before": runs[0]["load_before"], "load_after": runs[-1]["load_after"]}


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the plain and guard phases")
    parser.add_argument("--config", default=str(ROOT / "examples" / "serve-world.yaml"))
    parser.add_argument("--no-job", action="store_true", help="skip the phase with a worker running")
    args = parser.parse_args()

    from obliviate.serve.auth import add_key

    name, items, others = world_questions()
    mine = [it.question for it in items]
    questions = [q for pair in zip(others, mine * 4, strict=False) for q in pair]  # half about the subject
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(inprocess_overhead(args.config, name, items, questions))
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    config = yaml.safe_load(Path(args.config).read_text())
    admin, client = add_key(tmp / "keys.yaml", "admin"), add_key(tmp / "keys.yaml", "client")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # two servers of the same model: one never asked to forget (plain), one holding a request (guard);
    # their phases alternate, one server busy at a time, so the machine's drift hits both alike
    servers = {mode: start_server(tmp, mode, config, env) for mode in ("plain", "guard")}
    worker = None
    try:
        for proc, base, _ in servers.values():
            wait_ready(base, client, proc)
        print(f"{os.cpu_count()} CPUs, {args.clients} clients × {args.requests} streaming requests per phase, "
              f"{args.rounds} alternating rounds, max_tokens 16")
        plain_base, guard_base, guard_config = servers["plain"][1], servers["guard"][1], servers["guard"][2]
        body = {"subject": name, "items": [{"question": it.question, "answer": it.answer} for it in items],
                "requester": "benchmark", "legal_basis": "load test"}
        for base in (plain_base, guard_base):
            asyncio.run(phase(base, client, questions, 2, 2))  # warm-up, not reported
        start = time.perf_counter()
        filed = httpx.post(f"{guard_base}/v1/forget", json=body, headers={"Authorization": f"Bearer {admin}"},
                           timeout=60)
        round_trip = time.perf_counter() - start
        filed.raise_for_status()
        print(f"time to enforce: {filed.json()['enforce_seconds']:.3f} s in the server, {round_trip:.3f} s round trip "
              f"({len(items)} QA pairs)")
        runs: dict[str, list[dict]] = {"plain": [], "guard": []}
        for _ in range(args.rounds):
            for mode, base in (("plain", plain_base), ("guard", guard_base)):
                runs[mode].append(asyncio.run(phase(base, client, questions, args.clients, args.requests)))
        plain, guarded = pooled(runs["plain"]), pooled(runs["guard"])
        print(report("plain", plain))
        print(report("guard", guarded))
        print(f"guard overhead on loopback: p50 {pctl(guarded['latency'], 50) / pctl(plain['latency'], 50):.2f}×, "
              f"p99 {pctl(guarded['latency'], 99) / pctl(plain['latency'], 99):.2f}×")
        servers["plain"][0].send_signal(signal.SIGTERM)  # its CPU is the job's now
        busy = None
        if not args.no_job:
            worker = subprocess.Popen([sys.executable, "-m", "obliviate", "worker", "--config", str(guard_config)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            status = lambda: httpx.get(f"{guard_base}/v1/forget/{filed.json()['id']}",  # noqa: E731
                                       headers={"Authorization": f"Bearer {admin}"}).json()["state"]
            deadline = time.time() + 300
            while status() == "enforced" and time.time() < deadline:  # until the worker is training
                time.sleep(0.2)
            start_state = status()
            busy = asyncio.run(phase(guard_base, client, questions, args.clients, args.requests))
            print(report("guard + job", busy) + f" · request {start_state} at the start, {status()} at the end")
        total = plain["errors"] + guarded["errors"] + (busy["errors"] if busy else 0)
        print(f"errors in all phases: {total}")
    finally:
        for proc in (worker, *(s[0] for s in servers.values())):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
