"""The ledger's tables (SQLAlchemy 2 ORM). Alembic's migrations (serve/migrations) create and change them.

- `serve_requests`: one row per forget request, with its current state and, once written, its evidence.
- `serve_items`: the request's QA pairs or texts (the only place texts live; the chain holds hashes).
- `serve_records`: the hash chain (`obliviate.serve.chain`); `serve_head` its last number and hash.
- `serve_jobs`: the durable-unlearning queue, one job per request, claimed by workers.
- `serve_models`: every published adapter, the newest being the one served.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime, stored naive in UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: give a timezone-aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class RequestRow(Base):
    __tablename__ = "serve_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    evidence: Mapped[str | None] = mapped_column(Text, nullable=True)


class ItemRow(Base):
    __tablename__ = "serve_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), ForeignKey("serve_requests.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)


class RecordRow(Base):
    __tablename__ = "serve_records"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    request_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[str] = mapped_column(Text)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class HeadRow(Base):
    __tablename__ = "serve_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class JobRow(Base):
    __tablename__ = "serve_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), ForeignKey("serve_requests.id"), unique=True)
    state: Mapped[str] = mapped_column(String(12), index=True)  # queued, running, done
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(Text, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ModelRow(Base):
    __tablename__ = "serve_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    adapter_dir: Mapped[str] = mapped_column(Text)
    adapter_sha256: Mapped[str] = mapped_column(String(64))
    request_ids: Mapped[str] = mapped_column(Text)  # JSON list
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
