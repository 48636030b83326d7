"""Retention that runs (§21): every row that holds partner or subject data carries a
``retain_until``; the purge removes what is past it, from every table and from every
matcher's FAISS indexes (tombstones, ``lifecycle.forget_records``), and the stored
outgoing bodies of the idempotency markers once they are old enough not to be needed.

Run by the notice worker every ``BIOX_RETENTION_PURGE_S`` and by ``biox retention purge``;
each run is an audit event with counts, never content (``ops.retention.purge``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from biox.agreement import corrections
from biox.agreement.ledgers import RefusalRow
from biox.policy.release import ParticipantPolicy
from biox.store import (
    EncounterRow,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    Transaction,
)

#: the tables whose rows carry ``retain_until``, by the name counts are reported under
EXPIRING: dict[str, Any] = {
    "records": Record,
    "transactions": Transaction,
    "encounters": EncounterRow,
    "review_cases": ReviewCaseRow,
    "retrievals": RetrievalRow,
}


def expired(session: Session, now: datetime) -> dict[str, int]:
    """How many rows of each table are past their retention date."""
    out = {}
    for name, table in EXPIRING.items():
        n = session.exec(
            select(func.count()).select_from(table).where(col(table.retain_until) < now)
        ).one()
        if n:
            out[name] = int(n)
    return out


def purge(
    session: Session,
    now: datetime,
    markers_days: int,
    dry_run: bool = False,
    refusals_days: int = 400,
) -> dict[str, int]:
    """Removes every expired row (not committed: the caller commits, then records the
    event). Returns the counts; ``dry_run`` counts without removing. Refusals are kept
    ``refusals_days`` (the annual review, §27, counts a year of them), so that a flood of
    refused messages cannot grow the database without end."""
    counts = expired(session, now)
    old_refusals = col(RefusalRow.at) < now - timedelta(days=refusals_days)
    refusals = session.exec(select(func.count()).select_from(RefusalRow).where(old_refusals)).one()
    if refusals:
        counts["refusals"] = int(refusals)
    old_markers = now - timedelta(days=markers_days)
    marker_filter = (
        col(ProcessedMessage.processed_at) < old_markers,
        col(ProcessedMessage.published).is_(True),
    )
    markers = session.exec(
        select(func.count()).select_from(ProcessedMessage).where(*marker_filter)
    ).one()
    if markers:
        counts["processed_messages"] = int(markers)
    if dry_run or not counts:
        return counts
    ids = list(session.exec(select(Record.id).where(col(Record.retain_until) < now)))
    corrections.forget_records(session, ids, "retention")
    for name, table in EXPIRING.items():
        if name != "records":
            session.exec(delete(table).where(col(table.retain_until) < now))
    session.exec(delete(ProcessedMessage).where(*marker_filter))
    session.exec(delete(RefusalRow).where(old_refusals))
    return counts


def cap_for_discontinued(
    session: Session, partner: str, policy: ParticipantPolicy, now: datetime
) -> dict[str, int]:
    """§36: what a discontinued partner sent is kept no longer than the policy's
    ``discontinued_retention_days`` from now (unset: its own schedule stands)."""
    days = policy.discontinued_retention_days
    if days is None:
        return {}
    until = now + timedelta(days=days)
    counts: dict[str, int] = {}
    for name, table, source in (
        ("records", Record, Record.source),
        ("transactions", Transaction, Transaction.source),
        ("review_cases", ReviewCaseRow, ReviewCaseRow.source),
        ("retrievals", RetrievalRow, RetrievalRow.source),
    ):
        rows = session.exec(
            select(table).where(
                source == partner,
                (col(table.retain_until).is_(None)) | (col(table.retain_until) > until),
            )
        ).all()
        for row in rows:
            row.retain_until = until
            session.add(row)
        if rows:
            counts[name] = len(rows)
    return counts
