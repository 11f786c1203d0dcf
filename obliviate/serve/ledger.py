"""The ledger of forget requests: SQLite (WAL mode) by default, PostgreSQL by URL when workers share a queue.

Every change (a request filed, each transition, the evidence, a published adapter) is also a record of
the hash chain (`obliviate.serve.chain`), in the same transaction as the change, so `verify()` sees any
later edit of the database. The chain's payloads hold hashes of the subject and the items, never their texts;
the texts live in `serve_items` only (enforcement and training need them).

Writers take the chain's head row with `SELECT ... FOR UPDATE` (PostgreSQL) or an immediate transaction
(SQLite: `BEGIN IMMEDIATE`, one writer at a time), so two processes never append the same record number.
Workers claim jobs with `SELECT ... FOR UPDATE SKIP LOCKED`; a running job whose heartbeat is older than
`stale_after` seconds belongs to a dead worker and is claimed again, with its attempt counted up.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, event, or_, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from obliviate.errors import ConfigError, NotFound, ObliviateError
from obliviate.serve import chain
from obliviate.serve.chain import ChainReport, StoredRecord
from obliviate.serve.schema import HeadRow, ItemRow, JobRow, ModelRow, RecordRow, RequestRow, now

STATES = ("received", "enforced", "unlearning", "verifying", "durable", "needs_review")
MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = ["STATES", "ActiveModel", "ChainReport", "Conflict", "ForgetItem", "Job", "JobLost", "Ledger", "NotFound",
           "RequestRecord", "Transition", "open_ledger"]


class Conflict(ObliviateError):
    """Another adapter was published since this candidate was trained from the served one."""


class JobLost(ObliviateError):
    """The job was claimed again by another worker (this one's heartbeat went stale); stop working on it."""


@dataclass(frozen=True)
class ForgetItem:
    """A QA pair (question and answer) or a text to forget."""

    question: str | None = None
    answer: str | None = None
    text: str | None = None

    def sha256(self) -> str:
        return chain.sha256_text(chain.canonical(asdict(self)))


@dataclass(frozen=True)
class Transition:
    state: str
    at: datetime
    detail: dict


@dataclass(frozen=True)
class RequestRecord:
    id: str
    subject: str
    requester: str
    legal_basis: str
    deadline: datetime | None
    state: str
    transitions: list[Transition]
    evidence: dict | None


@dataclass(frozen=True)
class ActiveModel:
    version: int
    adapter_dir: Path
    adapter_sha256: str
    request_ids: list[str]


@dataclass(frozen=True)
class Job:
    request_id: str
    attempt: int


def _check_item(item: ForgetItem, index: int) -> None:
    qa = item.question is not None or item.answer is not None
    if qa and (not item.question or not item.answer):
        raise ConfigError(f"items[{index}]: a QA pair needs both a question and an answer")
    if qa and item.text is not None:
        raise ConfigError(f"items[{index}]: give a question and answer, or a text, not both")
    if not qa and not item.text:
        raise ConfigError(f"items[{index}]: give a question and answer, or a text")


class Ledger:
    """The forget requests, their jobs and the published adapters, in the database at `url`."""

    def __init__(self, url: str, *, stale_after: float = 60.0, received_grace: float = 30.0) -> None:
        """Open (creating it if needed) the database at `url` and bring its schema to the newest migration.

        `stale_after`: seconds without a heartbeat after which a running job is claimed again.
        `received_grace`: a job whose request is still `received` (the server has not yet confirmed enforcement)
        is left alone for this many seconds, so a request is enforced before it is unlearned.
        """
        self.url = url
        self.stale_after = stale_after
        self.received_grace = received_grace
        self.engine = _engine(url)
        try:
            self._upgrade()
        except OperationalError as exc:
            raise ConfigError(f"database {_safe_url(url)}: cannot open it ({_first_line(exc)})") from None

    # --- opening -----------------------------------------------------------------------------------------
    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if self.is_postgres:  # one migrating process at a time; the others wait, then see it done
                connection.execute(text("SELECT pg_advisory_xact_lock(7171716)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- the chain -----------------------------------------------------------------------------------------
    def _append(self, session: Session, kind: str, request_id: str | None, payload: dict[str, Any]) -> None:
        head = session.execute(select(HeadRow).where(HeadRow.id == 1).with_for_update()).scalar_one()
        body = chain.canonical({"kind": kind, **payload})
        digest = chain.sha256_text(body)
        seq = head.seq + 1
        record_hash = chain.link(seq, head.hash, digest)
        session.add(RecordRow(seq=seq, kind=kind, request_id=request_id, at=now(), payload=body,
                              payload_sha256=digest, prev=head.hash, hash=record_hash))
        head.seq, head.hash = seq, record_hash

    # --- requests ------------------------------------------------------------------------------------------
    def file_request(self, *, subject: str, items: list[ForgetItem], requester: str, legal_basis: str,
                     deadline: datetime | None = None) -> str:
        """File a request (state `received`) with a queued durable-unlearning job; returns its new id."""
        if not items:
            raise ConfigError("items: give at least one QA pair or text to forget")
        for index, item in enumerate(items):
            _check_item(item, index)
        if deadline is not None and deadline.tzinfo is None:
            raise ConfigError("deadline: give a timezone, e.g. 2026-01-31T00:00:00Z")
        request_id = uuid.uuid4().hex
        at = now()
        with self._session() as session:
            session.add(RequestRow(id=request_id, subject=subject, requester=requester, legal_basis=legal_basis,
                                   deadline=deadline, state="received", created_at=at))
            session.flush()
            session.add_all([ItemRow(request_id=request_id, position=i, question=item.question, answer=item.answer,
                                     text=item.text) for i, item in enumerate(items)])
            session.add(JobRow(request_id=request_id, state="queued", attempt=0, queued_at=at))
            self._append(session, "filed", request_id, {
                "request_id": request_id, "at": at.isoformat(), "subject_sha256": chain.sha256_text(subject),
                "requester": requester, "legal_basis": legal_basis,
                "deadline": None if deadline is None else deadline.isoformat(),
                "items_sha256": [item.sha256() for item in items]})
            self._append(session, "transition", request_id,
                         {"request_id": request_id, "state": "received", "at": at.isoformat(), "detail": {}})
        return request_id

    def transition(self, request_id: str, state: str, **detail: Any) -> None:
        """Move the request to `state`, recording the time and `detail` (hashes and numbers, never texts)."""
        if state not in STATES:
            raise ConfigError(f"state {state!r}: not one of {', '.join(STATES)}")
        at = now()
        with self._session() as session:
            row = session.get(RequestRow, request_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no forget request with id {request_id!r}")
            row.state = state
            self._append(session, "transition", request_id,
                         {"request_id": request_id, "state": state, "at": at.isoformat(), "detail": detail})

    def record_evidence(self, request_id: str, evidence: dict[str, Any]) -> None:
        """Store the request's evidence (hashes and metrics), chained by its sha256."""
        body = chain.canonical(evidence)
        with self._session() as session:
            row = session.get(RequestRow, request_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no forget request with id {request_id!r}")
            row.evidence = body
            self._append(session, "evidence", request_id, {"request_id": request_id, "at": now().isoformat(),
                                                           "evidence_sha256": chain.sha256_text(body)})

    def get(self, request_id: str) -> RequestRecord:
        """The request with its transitions (oldest first) and evidence; NotFound for an unknown id."""
        with self._session() as session:
            row = session.get(RequestRow, request_id)
            if row is None:
                raise NotFound(f"no forget request with id {request_id!r}")
            records = session.execute(select(RecordRow).where(RecordRow.request_id == request_id,
                                                              RecordRow.kind == "transition")
                                      .order_by(RecordRow.seq)).scalars().all()
            return _record(row, records)

    def requests(self) -> list[RequestRecord]:
        """Every request, newest first."""
        with self._session() as session:
            rows = session.execute(select(RequestRow).order_by(RequestRow.created_at.desc(),
                                                               RequestRow.id)).scalars().all()
            records = session.execute(select(RecordRow).where(RecordRow.kind == "transition")
                                      .order_by(RecordRow.seq)).scalars().all()
        by_request: dict[str, list[RecordRow]] = {}
        for record in records:
            by_request.setdefault(record.request_id or "", []).append(record)
        return [_record(row, by_request.get(row.id, [])) for row in rows]

    def items(self, request_id: str) -> list[ForgetItem]:
        """The request's QA pairs or texts, in the order they were filed."""
        with self._session() as session:
            if session.get(RequestRow, request_id) is None:
                raise NotFound(f"no forget request with id {request_id!r}")
            return _items(session, [request_id])[request_id]

    def enforced(self, keep_after_durable: bool = False) -> list[tuple[str, list[ForgetItem]]]:
        """(id, items) of every request the guard must hold now, oldest first: all that are not durable, and
        the durable ones too with `keep_after_durable`."""
        with self._session() as session:
            query = select(RequestRow.id).order_by(RequestRow.created_at, RequestRow.id)
            if not keep_after_durable:
                query = query.where(RequestRow.state != "durable")
            ids = list(session.execute(query).scalars())
            items = _items(session, ids)
        return [(request_id, items[request_id]) for request_id in ids]

    def durable_ids(self) -> list[str]:
        """The ids of the durable requests, oldest first (what the next adapter must also forget)."""
        with self._session() as session:
            return list(session.execute(select(RequestRow.id).where(RequestRow.state == "durable")
                                        .order_by(RequestRow.created_at, RequestRow.id)).scalars())

    # --- published adapters --------------------------------------------------------------------------------
    def active_model(self) -> ActiveModel | None:
        """The newest published adapter (what the server serves); None: the base model."""
        with self._session() as session:
            row = session.execute(select(ModelRow).order_by(ModelRow.version.desc()).limit(1)).scalar_one_or_none()
        if row is None:
            return None
        return ActiveModel(row.version, Path(row.adapter_dir), row.adapter_sha256, json.loads(row.request_ids))

    def publish(self, adapter_dir: Path, adapter_sha256: str, request_ids: list[str], *,
                expect_version: int | None = -1) -> int:
        """Make the adapter at `adapter_dir` the served one (after its gates passed); returns its version.

        `expect_version`: the version the candidate was trained to replace (None: the base model); when
        another was published since, `Conflict` is raised and nothing is published. -1 skips the check.
        """
        at = now()
        with self._session() as session:
            head = session.execute(select(HeadRow).where(HeadRow.id == 1).with_for_update()).scalar_one()
            del head  # locked: versions are numbered under the same lock as the chain
            last = session.execute(select(ModelRow.version).order_by(ModelRow.version.desc()).limit(1)).scalar()
            if expect_version != -1 and last != expect_version:
                raise Conflict(f"model version {last} was published since the candidate was trained from "
                               f"{'the base model' if expect_version is None else f'version {expect_version}'}")
            version = (last or 0) + 1
            session.add(ModelRow(version=version, adapter_dir=str(adapter_dir), adapter_sha256=adapter_sha256,
                                 request_ids=json.dumps(list(request_ids)), published_at=at))
            self._append(session, "publish", None, {
                "version": version, "adapter_dir": str(adapter_dir), "adapter_sha256": adapter_sha256,
                "request_ids": list(request_ids), "at": at.isoformat()})
        return version

    # --- the job queue -------------------------------------------------------------------------------------
    def claim_job(self, worker: str) -> Job | None:
        """Claim the oldest queued job, or one whose worker's heartbeat went stale; None when there is none."""
        at = now()
        stale = at - timedelta(seconds=self.stale_after)
        young = at - timedelta(seconds=self.received_grace)
        with self._session() as session:
            query = (select(JobRow).join(RequestRow, RequestRow.id == JobRow.request_id)
                     .where(or_(JobRow.state == "queued", and_(JobRow.state == "running", JobRow.heartbeat_at < stale)))
                     .where(or_(RequestRow.state != "received", JobRow.queued_at < young))
                     .order_by(JobRow.id).limit(1).with_for_update(skip_locked=True, of=JobRow))
            row = session.execute(query).scalar_one_or_none()
            if row is None:
                return None
            row.state, row.worker, row.heartbeat_at = "running", worker, at
            row.attempt += 1
            return Job(row.request_id, row.attempt)

    def heartbeat(self, job: Job) -> None:
        """Say the job's worker is alive; JobLost when another worker has claimed the job since."""
        self._touch(job, heartbeat_at=now())

    def finish_job(self, job: Job) -> None:
        """Mark the job done (its request is durable or needs review); JobLost when it was claimed again."""
        at = now()
        self._touch(job, state="done", heartbeat_at=at, finished_at=at)

    def release_job(self, job: Job) -> None:
        """Put a job its worker is stopping back in the queue (claimable at once; its next attempt resumes)."""
        self._touch(job, state="queued", worker=None, heartbeat_at=None)

    def _touch(self, job: Job, **values: Any) -> None:
        with self._session() as session:
            result = session.execute(update(JobRow).where(JobRow.request_id == job.request_id,
                                                          JobRow.attempt == job.attempt, JobRow.state == "running")
                                     .values(**values))
            if result.rowcount != 1:
                raise JobLost(f"job for request {job.request_id} (attempt {job.attempt}) was claimed by another "
                              "worker")

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's request id, state, attempt and worker, oldest first (for status pages and tests)."""
        with self._session() as session:
            rows = session.execute(select(JobRow).order_by(JobRow.id)).scalars().all()
            return [{"request_id": r.request_id, "state": r.state, "attempt": r.attempt, "worker": r.worker}
                    for r in rows]

    # --- verification --------------------------------------------------------------------------------------
    def verify(self) -> ChainReport:
        """Recompute the hash chain and check the tables against it; the first bad record and why."""
        with self._session() as session:
            rows = session.execute(select(RecordRow).order_by(RecordRow.seq)).scalars().all()
            head = session.get(HeadRow, 1)
            records = [StoredRecord(r.seq, r.kind, r.payload, r.payload_sha256, r.prev, r.hash) for r in rows]
            report = chain.check(records, None if head is None else (head.seq, head.hash))
            if not report.ok:
                return report
            problem = _cross_check(session, rows)
        if problem is not None:
            seq, reason = problem
            return ChainReport(False, len(records), seq, reason)
        return report


def open_ledger(config) -> Ledger:
    """The ledger a deployment config (`ServeConfig`) names, its work directory created."""
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    return Ledger(config.database_url, stale_after=config.stale_after)


def _cross_check(session: Session, records: list[RecordRow]) -> tuple[int | None, str] | None:
    """The first disagreement between the tables and the (intact) chain: (record number, reason)."""
    filed: dict[str, RecordRow] = {}
    last_state: dict[str, tuple[int, str]] = {}
    last_evidence: dict[str, tuple[int, str]] = {}
    published: dict[int, tuple[int, dict]] = {}
    for record in records:
        payload = json.loads(record.payload)
        rid = payload.get("request_id")
        if record.kind == "filed":
            filed[rid] = record
        elif record.kind == "transition":
            last_state[rid] = (record.seq, payload["state"])
        elif record.kind == "evidence":
            last_evidence[rid] = (record.seq, payload["evidence_sha256"])
        elif record.kind == "publish":
            published[payload["version"]] = (record.seq, payload)
    rows = {row.id: row for row in session.execute(select(RequestRow)).scalars()}
    for rid, record in filed.items():
        if rid not in rows:
            return record.seq, f"record {record.seq} (filed): request {rid} is missing from the requests table"
    items = _items(session, list(rows))
    for rid, row in rows.items():
        record = filed.get(rid)
        if record is None:
            return None, f"request {rid}: in the requests table but never filed in the chain"
        payload = json.loads(record.payload)
        if chain.sha256_text(row.subject) != payload["subject_sha256"] or \
                (row.requester, row.legal_basis) != (payload["requester"], payload["legal_basis"]):
            return record.seq, f"record {record.seq} (filed): request {rid}'s subject, requester or legal basis " \
                               "was changed"
        if [item.sha256() for item in items[rid]] != payload["items_sha256"]:
            return record.seq, f"record {record.seq} (filed): request {rid}'s items were changed"
        seq, state = last_state[rid]
        if row.state != state:
            return seq, f"record {seq} (transition): request {rid} is '{row.state}' in the table, '{state}' in the " \
                        "chain"
        evidence = last_evidence.get(rid)
        if (evidence is None) != (row.evidence is None) or \
                (evidence is not None and chain.sha256_text(row.evidence or "") != evidence[1]):
            where = evidence[0] if evidence else record.seq
            return where, f"record {where}: request {rid}'s evidence does not match the chain"
    models = {row.version: row for row in session.execute(select(ModelRow)).scalars()}
    for version, (seq, payload) in published.items():
        row = models.get(version)
        if row is None or (row.adapter_dir, row.adapter_sha256, json.loads(row.request_ids)) != \
                (payload["adapter_dir"], payload["adapter_sha256"], payload["request_ids"]):
            return seq, f"record {seq} (publish): published model version {version} was changed or removed"
    for version in models:
        if version not in published:
            return None, f"published model version {version}: not in the chain"
    return None


def _items(session: Session, ids: list[str]) -> dict[str, list[ForgetItem]]:
    out: dict[str, list[ForgetItem]] = {rid: [] for rid in ids}
    if not ids:
        return out
    rows = session.execute(select(ItemRow).where(ItemRow.request_id.in_(ids))
                           .order_by(ItemRow.request_id, ItemRow.position)).scalars()
    for row in rows:
        out[row.request_id].append(ForgetItem(row.question, row.answer, row.text))
    return out


def _record(row: RequestRow, records: list[RecordRow]) -> RequestRecord:
    transitions = []
    for record in records:
        payload = json.loads(record.payload)
        transitions.append(Transition(payload["state"], datetime.fromisoformat(payload["at"]), payload["detail"]))
    evidence = json.loads(row.evidence) if row.evidence else None
    return RequestRecord(row.id, row.subject, row.requester, row.legal_basis, row.deadline, row.state, transitions,
                         evidence)


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database {url!r}: not a database URL (sqlite:///FILE or "
                          "postgresql+psycopg://USER@HOST/DB)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise ConfigError(f"database {_safe_url(url)}: only sqlite:/// and postgresql+psycopg:// URLs are supported")


def _sqlite_connect(dbapi_connection, record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event starts the transactions (immediate)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _first_line(exc: Exception) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
