"""The hash-chained audit trail: building entries, verifying the chain, reading a trail.

Each entry's hash covers its fields and the previous entry's hash, so editing, removing or
inserting an entry breaks the chain at that point and ``verify`` names it. Without an
external anchor, someone able to rewrite the whole table from the tampered entry onward
could recompute the chain; publishing the head hash (e.g. in the annual review, §27)
closes that gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from biox.store import AuditEntry, Transaction

GENESIS = "0" * 64
_FIELDS = (
    "seq",
    "received_at",
    "direction",
    "kind",
    "sender_user",
    "sender",
    "recipient",
    "message_id",
    "correlation_id",
    "schema_id",
    "body_sha256",
    "provenance",
    "actor",
    "prev_hash",
)
#: fields added after the first chains were written: hashed only when set, so an entry
#: without them hashes as it always did and older chains still verify
_ADDED = ("reason", "command")
_ALL = (*_FIELDS, *_ADDED)


def entry_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    """The hash of an entry as stored, or of a row about to be (``chain``): the same."""
    row = entry if isinstance(entry, Mapping) else {f: getattr(entry, f) for f in _ALL}
    values = {f: row[f] for f in _FIELDS}
    values.update({f: row[f] for f in _ADDED if row.get(f) is not None})
    values["received_at"] = _iso(row["received_at"])
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _iso(when: datetime) -> str:
    return when.replace(tzinfo=None).isoformat(timespec="microseconds")


#: the audit worker's statements on every batch, built once and run on the session's
#: connection, as the consume loop's own (``database.processed``)
_TRAIL = AuditEntry.__table__  # type: ignore[attr-defined]
_HEAD = core_select(_TRAIL.c.seq, _TRAIL.c.entry_hash).order_by(_TRAIL.c.seq.desc()).limit(1)
_HOPS_HELD = core_select(_TRAIL.c.hop).where(_TRAIL.c.hop.in_(bindparam("hops", expanding=True)))
_APPEND = insert(_TRAIL)


def head(session: Session) -> tuple[int, str]:
    """Sequence number and hash of the last entry (0 and the genesis hash when empty)."""
    last = session.connection().execute(_HEAD).first()
    return (last[0], last[1]) if last else (0, GENESIS)


def recorded(session: Session, hops: Sequence[str]) -> set[str]:
    """Which of these hops (``wire.inbound.hop_key``) the trail already holds: the audit
    queue's idempotency, kept on its own entries under a unique index instead of a marker
    row per message beside them (the markers' insert and lookup were 15 % of an audit
    worker, docs/performance.md)."""
    if not hops:
        return set()
    found = session.connection().execute(_HOPS_HELD, {"hops": list(hops)}).scalars()
    return {h for h in found if h is not None}


def chain(rows: Iterable[dict[str, Any]], seq: int, prev: str) -> list[dict[str, Any]]:
    """Number and hash new entries after (seq, prev), in order: rows of ``audit_entries``,
    which the audit worker inserts in one statement (``append``); a row is not built as an
    ``AuditEntry`` object first, which cost the worker a third of its CPU (ORM construction
    and flush, docs/performance.md, "The work around the search")."""
    out = []
    for row in rows:
        seq += 1
        row["seq"] = seq
        row["prev_hash"] = prev
        row["entry_hash"] = prev = entry_hash(row)
        out.append(row)
    return out


def append(session: Session, rows: list[dict[str, Any]]) -> None:
    """Chained rows into the trail, in the session's transaction (one multi-row insert)."""
    if rows:
        session.connection().execute(_APPEND, rows)


@dataclass
class Break:
    seq: int
    problem: str  # altered | removed | inserted | reordered

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.problem}"


def verify(session: Session) -> tuple[int, Break | None]:
    """Walk the chain; the number of entries and the first break, if any."""
    entries = list(session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))))
    return len(entries), first_break(entries)


def first_break(entries: list[AuditEntry]) -> Break | None:
    prev_hash, prev_seq = GENESIS, 0
    for i, e in enumerate(entries):
        own_ok = entry_hash(e) == e.entry_hash
        link_ok = e.prev_hash == prev_hash
        seq_ok = e.seq == prev_seq + 1
        if own_ok and link_ok and seq_ok:
            prev_hash, prev_seq = e.entry_hash, e.seq
            continue
        if not link_ok and i >= 2 and e.prev_hash == entries[i - 2].entry_hash:
            return Break(entries[i - 1].seq, "inserted")  # the entry before skips the chain
        if e.seq > prev_seq + 1 or (not link_ok and not own_ok):
            return Break(prev_seq + 1, "removed")
        if not link_ok:  # the entry before was rewritten; the first has genesis before it
            return Break(entries[i - 1].seq if i else e.seq, "altered (and its hash recomputed)")
        return Break(e.seq, "altered")
    return None


def trail(session: Session, correlation_ids: Iterable[str]) -> list[AuditEntry]:
    ids = list(correlation_ids)
    return list(
        session.exec(
            select(AuditEntry)
            .where(col(AuditEntry.correlation_id).in_(ids))
            .order_by(col(AuditEntry.seq))
        )
    )


def trail_across(sessions: Mapping[str, Session], query_id: str) -> list[tuple[str, AuditEntry]]:
    """Entries about one query (and its encounter) in every trail of ``sessions`` (one per
    participant, ``database.every_participant``), by time."""
    rows: list[tuple[str, AuditEntry]] = []
    for code, session in sessions.items():
        ids = {query_id}
        for tx in session.exec(select(Transaction).where(Transaction.query_id == query_id)):
            ids.add(tx.encounter_id)
        rows.extend((code, e) for e in trail(session, ids))
    return sorted(rows, key=lambda r: r[1].received_at)
