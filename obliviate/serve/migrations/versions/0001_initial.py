"""The ledger's first schema: requests, items, the hash chain and its head, jobs, published models.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from obliviate.serve.chain import GENESIS
from obliviate.serve.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serve_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("legal_basis", sa.Text, nullable=False),
        sa.Column("deadline", UTCDateTime, nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("evidence", sa.Text, nullable=True),
    )
    op.create_table(
        "serve_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), sa.ForeignKey("serve_requests.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("question", sa.Text, nullable=True),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("text", sa.Text, nullable=True),
    )
    op.create_table(
        "serve_records",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=True, index=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    head = op.create_table(
        "serve_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table(
        "serve_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), sa.ForeignKey("serve_requests.id"), nullable=False, unique=True),
        sa.Column("state", sa.String(12), nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.Text, nullable=True),
        sa.Column("queued_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "serve_models",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("adapter_dir", sa.Text, nullable=False),
        sa.Column("adapter_sha256", sa.String(64), nullable=False),
        sa.Column("request_ids", sa.Text, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("serve_models", "serve_jobs", "serve_head", "serve_records", "serve_items", "serve_requests"):
        op.drop_table(table)
