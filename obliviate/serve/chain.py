"""The hash chain behind the ledger: every record holds its payload's sha256 and the previous record's hash.

Record n (counted from 1) stores `payload` (canonical JSON: sorted keys, no spaces), `payload_sha256 =
sha256(payload)`, `prev = hash(n-1)` (64 zeros for the first) and

    hash(n) = sha256(f"{n}:{prev}:{payload_sha256}")

so editing a payload changes its sha256, editing a stored hash breaks the link to the next record, and
deleting a record leaves a gap in the numbering and a `prev` that matches nothing. The ledger also keeps the
head (the last number and hash) in a row of its own, so deleting the last records is seen too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(payload: dict[str, Any]) -> str:
    """The one JSON text of `payload` whose sha256 the chain stores."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link(seq: int, prev: str, payload_sha256: str) -> str:
    """hash(n) from the record's number, the previous hash and the payload's sha256."""
    return sha256_text(f"{seq}:{prev}:{payload_sha256}")


@dataclass(frozen=True)
class StoredRecord:
    """One record as the database holds it."""

    seq: int
    kind: str
    payload: str
    payload_sha256: str
    prev: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """The result of checking the chain: `ok`, how many `records`, the first bad record's number and why."""

    ok: bool
    records: int
    first_bad: int | None = None
    reason: str = ""

    def line(self) -> str:
        """`ok: N records`, or the reason naming the first bad record."""
        return f"ok: {self.records} records" if self.ok else self.reason


def check(records: Iterable[StoredRecord], head: tuple[int, str] | None) -> ChainReport:
    """Recompute the chain over `records` (in seq order) and compare its end with the stored `head`."""
    prev, expected, count = GENESIS, 1, 0
    for record in records:
        count += 1
        if record.seq != expected:
            return ChainReport(False, count, expected, f"record {expected} is missing (the next is {record.seq})")
        if sha256_text(record.payload) != record.payload_sha256:
            return ChainReport(False, count, record.seq,
                               f"record {record.seq} ({record.kind}): its payload does not match its sha256")
        if record.prev != prev:
            return ChainReport(False, count, record.seq,
                               f"record {record.seq} ({record.kind}): its previous hash does not match record "
                               f"{record.seq - 1}")
        if link(record.seq, record.prev, record.payload_sha256) != record.hash:
            return ChainReport(False, count, record.seq, f"record {record.seq} ({record.kind}): its hash is wrong")
        prev, expected = record.hash, expected + 1
    last = expected - 1
    if head is not None and head != (last, prev):
        if head[0] > last:
            return ChainReport(False, count, last + 1, f"record {last + 1} is missing (the head is at {head[0]})")
        return ChainReport(False, count, last, f"record {last}: the chain's head does not match it")
    if head is None and last:
        return ChainReport(False, count, 1, "the chain's head is missing")
    return ChainReport(True, count)
