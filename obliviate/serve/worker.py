"""The durable-unlearning worker: claim a job, unlearn, check the gates, write the evidence, publish or not.

For each job (`Worker.process`), the request moves `unlearning` -> `verifying` -> `durable` | `needs_review`:
1. A fresh adapter is trained on the base model (the deployment's `durable` method, LoRA by default). Its
   forget set is the items of every request the served adapter already forgets, plus this request's; its
   retain set is the deployment's `durable.retain`. The run directory is named by the request and the
   forget set's hash, so a job claimed again after its worker died resumes the same run
   (`unlearn(resume=True)`, from its last checkpoint) or, when the run finished, reuses it.
2. The gates (`obliviate.serve.gates`) compare the candidate with the live model (the base, or the served
   adapter) on the request's items and a retain sample, and run the configured attacks.
3. The evidence (`obliviate.serve.evidence`) is written; a candidate that passes is published (only if no
   other adapter was published since it was trained from the served one; else it is trained again on the
   new forget set) and the request becomes `durable`; one that fails leaves the request `needs_review` and
   publishes nothing.

While a job runs, a thread sends the ledger a heartbeat every `stale_after / 4` seconds. A worker that was
presumed dead (its job claimed again by another) learns it at the next heartbeat and never publishes. A
worker that is stopped (Ctrl-C, SIGTERM) puts its job back in the queue at once; one that is killed leaves it
to be claimed again once its heartbeat is `stale_after` seconds old. Either way the next attempt resumes the
run from its last checkpoint when the method checkpoints (`durable.overrides: {save_every: N}`), else
trains it again from the start.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError, ObliviateError
from obliviate.serve import gates as gate_checks
from obliviate.serve.chain import canonical, sha256_text
from obliviate.serve.config import ServeConfig
from obliviate.serve.evidence import sha256_dir, sha256_items, sha256_state_dict, write_evidence
from obliviate.serve.ledger import ActiveModel, Conflict, ForgetItem, Job, JobLost, Ledger, open_ledger

MAX_RETRAINS = 3  # a candidate overtaken by another publication is trained again at most this often


class Heartbeat:
    """A thread that heartbeats `job` every `every` seconds while the block runs; `check()` raises JobLost
    once the ledger says another worker owns the job."""

    def __init__(self, ledger: Ledger, job: Job, every: float) -> None:
        self.ledger, self.job, self.every = ledger, job, every
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.request_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.ledger.heartbeat(self.job)
            except JobLost:
                self.lost.set()
                return
            except Exception:  # noqa: BLE001  (a busy database: try again at the next beat)
                continue

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(f"job for request {self.job.request_id} was claimed by another worker")
        self.ledger.heartbeat(self.job)


def _row(item: ForgetItem, as_text: bool) -> dict[str, str]:
    if item.text is not None:
        return {"text": item.text}
    if as_text:
        return {"text": f"{item.question} {item.answer}"}
    return {"question": item.question or "", "answer": item.answer or ""}


def forget_rows(items: list[ForgetItem]) -> list[dict[str, str]]:
    """The training file's rows: QA pairs, texts, or (when a request mixes the two) all as texts."""
    mixed = any(it.text is not None for it in items) and any(it.text is None for it in items)
    return [_row(it, mixed) for it in items]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    from obliviate.io import write_jsonl

    write_jsonl(path, rows)
    return path


class Worker:
    """Processes the deployment's durable-unlearning jobs (one model loaded per worker process)."""

    def __init__(self, config: ServeConfig, ledger: Ledger | None = None, name: str | None = None,
                 progress: bool = False) -> None:
        gate_checks.check_config(config.gates)
        check_durable(config)
        self.config = config
        self.ledger = ledger or open_ledger(config)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.progress = progress
        self._base = None
        self._retain: tuple[Path, list, str] | None = None

    # --- the job -------------------------------------------------------------------------------------------
    def process(self, job: Job) -> str:
        """Run one job to `durable` or `needs_review` and finish it; returns the state. JobLost propagates."""
        rid = job.request_id
        started = time.perf_counter()
        with Heartbeat(self.ledger, job, max(self.config.stale_after / 4, 0.05)) as beat:
            try:
                state = self._process(job, beat, started)
            except (JobLost, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001  (any failure leaves the request for a person to review)
                if not isinstance(exc, ObliviateError):
                    traceback.print_exc(file=sys.stderr)
                beat.check()
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                evidence = self._base_evidence(job)
                evidence.update(state="needs_review", error=line)
                self._record(rid, evidence)
                self.ledger.transition(rid, "needs_review", error=line)
                state = "needs_review"
            self.ledger.finish_job(job)
        return state

    def _process(self, job: Job, beat: Heartbeat, started: float) -> str:
        rid = job.request_id
        config = self.config
        for _ in range(MAX_RETRAINS + 1):
            live = self.ledger.active_model()
            already = [r for r in (live.request_ids if live else []) if r != rid]
            items = [it for other in already for it in self.ledger.items(other)] + self.ledger.items(rid)
            rows = forget_rows(items)
            forget_sha = sha256_items(rows)
            self.ledger.transition(rid, "unlearning", attempt=job.attempt, worker=self.name,
                                   forget_sha256=forget_sha, forget_items=len(rows))
            t0 = time.perf_counter()
            run = self._train(rid, rows, forget_sha)
            train_seconds = time.perf_counter() - t0
            beat.check()
            self.ledger.transition(rid, "verifying", train_seconds=round(train_seconds, 3))
            own = self.ledger.items(rid)
            base_model, tokenizer = self._base_model()
            _, retain_items, retain_sha = self._retain_data()
            sample = retain_items[: config.gates.retain_items]
            forget_eval = _eval_items(own)
            before = gate_checks.score_model(self._with_adapter(live), tokenizer, forget_eval, sample)
            adapter_dir = Path(run.path) / run.artifact.get("path", "adapter")
            candidate = self._with_adapter(adapter_dir)
            after = gate_checks.score_model(candidate, tokenizer, forget_eval, sample)
            del candidate
            recovery = self._attacks(run, rid, own)
            report = gate_checks.check_gates(config.gates, before, after, recovery)
            adapter_sha = sha256_dir(adapter_dir)
            evidence = self._base_evidence(job)
            evidence.update({
                "state": "durable" if report.passed else "needs_review",
                "metrics": {"before": before, "after": after}, "gates": report.as_dict(), "attacks": recovery,
                "method": {"name": run.method, "config": run.config.get("method_config", {}),
                           "lora": run.config.get("lora"), "overrides": config.durable.overrides},
                "trained_with": already,
                "hashes": {**evidence["hashes"], "forget_set": forget_sha, "retain_set": retain_sha,
                           "adapter": adapter_sha},
                "adapter_dir": str(adapter_dir),
                "seconds": {"train": round(train_seconds, 3), "total": round(time.perf_counter() - started, 3)},
            })
            beat.check()
            if not report.passed:
                self._record(rid, evidence)
                self.ledger.transition(rid, "needs_review", failed=report.failed())
                shutil.rmtree(self._job_dir(rid), ignore_errors=True)
                return "needs_review"
            try:
                version = self.ledger.publish(adapter_dir, adapter_sha, [*already, rid],
                                              expect_version=live.version if live else None)
            except Conflict:
                continue  # another request's adapter went live meanwhile: train on the new forget set
            evidence["published_version"] = version
            self._record(rid, evidence)
            self.ledger.transition(rid, "durable", version=version, adapter_sha256=adapter_sha)
            shutil.rmtree(self._job_dir(rid), ignore_errors=True)  # the training copy of the texts
            return "durable"
        raise ObliviateError(f"request {rid}: other adapters were published {MAX_RETRAINS + 1} times while it "
                             "trained; it is left for review")

    def _record(self, rid: str, evidence: dict[str, Any]) -> None:
        write_evidence(self.config.workdir, rid, evidence)
        self.ledger.record_evidence(rid, evidence)

    # --- pieces --------------------------------------------------------------------------------------------
    def _job_dir(self, rid: str) -> Path:
        return Path(self.config.workdir) / "jobs" / rid

    def _train(self, rid: str, rows: list[dict[str, str]], forget_sha: str):
        """The candidate's run: trained now, resumed from its checkpoint, or the finished run reused."""
        from obliviate.api import LoRA, Run, unlearn
        from obliviate.runs import is_run_dir

        durable = self.config.durable
        out = Path(self.config.workdir) / "runs" / f"{rid}-{forget_sha[:12]}"
        if is_run_dir(out):
            return Run.load(out)
        forget_file = _write_rows(self._job_dir(rid) / f"forget-{forget_sha[:12]}.jsonl", rows)
        retain_file, _, _ = self._retain_data()
        lora = None if durable.lora is None else LoRA(**durable.lora)
        return unlearn(durable.method, self.config.model, out=out, forget=forget_file, retain=retain_file,
                       lora=lora, overrides=durable.overrides, resume=out.exists(), prompt=self.config.prompt,
                       progress=self.progress)

    def _base_model(self):
        """(base model, tokenizer), loaded once per worker, with the deployment's prompt format."""
        if self._base is None:
            from obliviate.models.prompts import make_format
            from obliviate.workflow import load_model_spec

            fmt = make_format(self.config.prompt) if self.config.prompt else None
            model, tokenizer, _ = load_model_spec(self.config.model, progress=self.progress, fmt=fmt)
            self._base = (model.eval(), tokenizer, sha256_state_dict(model))
        return self._base[0], self._base[1]

    def _with_adapter(self, adapter: ActiveModel | Path | None):
        """The base model, or a copy of it with the adapter at `adapter` (a path, or the served one)."""
        base, _ = self._base_model()
        if adapter is None:
            return base
        from peft import PeftModel

        path = adapter.adapter_dir if isinstance(adapter, ActiveModel) else adapter
        return PeftModel.from_pretrained(copy.deepcopy(base), str(path)).eval()

    def _retain_data(self) -> tuple[Path, list, str]:
        """(the retain file the method trains on, its items, their sha256), built once from `durable.retain`."""
        if self._retain is None:
            items = load_retain(self.config.durable.retain, self.config.model)
            rows = [_retain_row(it) for it in items]
            digest = sha256_items(rows)
            path = _write_rows(Path(self.config.workdir) / "data" / f"retain-{digest[:12]}.jsonl", rows)
            self._retain = (path, items, digest)
        return self._retain

    def _attacks(self, run, rid: str, own: list[ForgetItem]) -> dict[str, float | None]:
        gates = self.config.gates
        qa = [it for it in own if it.text is None]
        if not gates.attacks or not qa:
            return {}
        from obliviate.api import attack

        facts = _write_rows(self._job_dir(rid) / "facts.jsonl",
                            [_row(it, False) for it in qa])
        retain_file, _, _ = self._retain_data()
        report = attack(run, list(gates.attacks), forget=facts, retain=retain_file, overrides=gates.attack_overrides,
                        progress=self.progress)
        return {name: report.recovery(name) for name in gates.attacks}

    def _base_evidence(self, job: Job) -> dict[str, Any]:
        record = self.ledger.get(job.request_id)
        own = self.ledger.items(job.request_id)
        items = []
        for item in own:
            entry: dict[str, Any] = {"kind": "text" if item.text is not None else "qa", "sha256": item.sha256()}
            if self.config.store_texts:
                entry.update({k: v for k, v in (("question", item.question), ("answer", item.answer),
                                                ("text", item.text)) if v is not None})
            items.append(entry)
        base_sha = self._base[2] if self._base is not None else None
        return {
            "request_id": job.request_id, "attempt": job.attempt, "worker": self.name,
            "request": {"subject_sha256": sha256_text(record.subject), "requester": record.requester,
                        "legal_basis": record.legal_basis, "filed_at": record.transitions[0].at.isoformat(),
                        "deadline": None if record.deadline is None else record.deadline.isoformat()},
            "items": items,
            "hashes": {"request_items": sha256_text(canonical({"items": [it["sha256"] for it in items]})),
                       "base_model": base_sha},
            "base_model": self.config.model,
            "published_version": None,
        }


def check_durable(config: ServeConfig) -> None:
    """Refuse, before any work, a durable method that makes no adapter the server can swap in."""
    from obliviate.methods import get_method

    cls = get_method(config.durable.method)
    if getattr(cls, "produces", "weights") == "intervention":
        raise ConfigError(f"durable.method {config.durable.method!r}: an inference-time method, it changes no "
                          "weights; give a weight method such as npo")
    if config.durable.lora is None:
        raise ConfigError("durable.lora: the server swaps in adapters, not full weights; give LoRA settings, "
                          "e.g. {r: 8, alpha: 16}")
    from obliviate.api import LoRA

    try:
        LoRA(**config.durable.lora)
    except TypeError as exc:
        raise ConfigError(f"durable.lora: {exc}") from None


def _retain_row(item) -> dict[str, str]:
    from obliviate.data.schema import QAItem

    if isinstance(item, QAItem):
        return {"question": item.question, "answer": item.answer}
    return {"text": item.text}


def _eval_items(items: list[ForgetItem]) -> list:
    """The request's items as the scoring code takes them: QAItem or TextPassage."""
    from obliviate.data.schema import QAItem, TextPassage

    return [TextPassage(it.text) if it.text is not None else QAItem(it.question or "", it.answer or "")
            for it in items]


def load_retain(retain: str, model: str) -> list:
    """The retain items `durable.retain` names: a QA or text file, or a data spec's retain side
    (`world:SPLIT` with a `world:` model: the world's retain training items for that split)."""
    if Path(retain).exists():
        from obliviate.data.readers import load_items

        return list(load_items(retain, "auto"))
    from obliviate.workflow import parse_world_spec
    from obliviate.workflow.data import parse_data_spec, train_sets

    spec = parse_data_spec(retain)
    if spec.benchmark == "world":
        ref = parse_world_spec(model, spec.name)
        if ref is None:
            raise ConfigError(f"durable.retain {retain!r}: names the world's sets, but model {model!r} is not "
                              "world:PRESET")
        from obliviate.workflow import world_models

        return list(world_models(ref, which=("target",), progress=False).world.retain_train(spec.name))
    _, items = train_sets(spec)
    if not items:
        raise ConfigError(f"durable.retain {retain!r}: has no retain set")
    return items


def serve_jobs(ledger: Ledger, process: Callable[[Job], Any], *, worker: str, once: bool = False,
               stop: threading.Event | None = None, poll: float = 1.0, log: Callable[[str], None] | None = None) -> int:
    """Claim and process jobs until `stop` is set (or, with `once`, at most one); returns how many ran."""
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set():
        job = ledger.claim_job(worker)
        if job is not None:
            if log:
                log(f"claimed request {job.request_id} (attempt {job.attempt})")
            try:
                state = process(job)
            except JobLost as exc:
                state = f"abandoned ({exc})"
            except KeyboardInterrupt:  # stopped (Ctrl-C, or SIGTERM from `obliviate worker`): requeue it now
                try:
                    ledger.release_job(job)
                except JobLost:
                    pass
                raise
            done += 1
            if log:
                log(f"request {job.request_id}: {state}")
        if once:
            break
        if job is None:
            stop.wait(poll)
    return done


def run_worker(config: ServeConfig, *, once: bool = False, stop: threading.Event | None = None,
               log: Callable[[str], None] | None = None, progress: bool = False) -> int:
    """The worker loop of a deployment: claims its jobs until `stop` (or one job with `once`); returns how many."""
    ledger = open_ledger(config)
    worker = Worker(config, ledger, progress=progress)
    try:
        return serve_jobs(ledger, worker.process, worker=worker.name, once=once, stop=stop,
                          poll=config.poll_seconds, log=log)
    finally:
        ledger.close()
