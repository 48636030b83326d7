"""Retention that runs (§21), for every table (``RULES`` names the rule of each; a test
fails when a table has none): rows that hold partner or subject data carry a
``retain_until``; the ledgers are kept ``BIOX_LEDGER_RETENTION_DAYS``; what follows a
row goes with it. The purge removes what is past its rule, from every table and from
every matcher's FAISS indexes (tombstones, ``corrections.forget_records``; the notice
worker rewrites the snapshot on disk, ``gallery.snapshot.refresh``).

Run by the notice worker every ``BIOX_RETENTION_PURGE_S`` and by ``biox retention purge``;
each run is an audit event with counts, never content (``ops.retention.purge``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, delete, select

from biox.agreement import corrections
from biox.agreement.ledgers import (
    DisclosureRow,
    ErasureRow,
    IncidentRow,
    NotationRow,
    NoticeRow,
    RefusalRow,
    Tombstone,
)
from biox.policy.release import ParticipantPolicy
from biox.settings import Settings
from biox.store import (
    EncounterRow,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    ScatterRow,
    Transaction,
)

#: every table biox keeps, and how long its rows are kept (docs/lifecycle.md, "Retention")
RULES: dict[str, str] = {
    "records": "retain_until (enrolled or received retention); own gallery: no date",
    "enrolled_templates": "with their record",
    "transactions": "retain_until: the encounter retention, the received one for an answer",
    "encounters": "retain_until: the policy's encounter retention",
    "review_cases": "retain_until: the received retention from the case's opening",
    "retrievals": "retain_until: the received retention once data is kept",
    "processed_messages": "BIOX_MARKER_RETENTION_DAYS once sent, else the dead-letter one",
    "refusals": "BIOX_REFUSAL_RETENTION_DAYS",
    "notices": "BIOX_LEDGER_RETENTION_DAYS from sent",
    "disclosures": "BIOX_LEDGER_RETENTION_DAYS from the disclosure",
    "incidents": "BIOX_LEDGER_RETENTION_DAYS from awareness",
    "notations": "with the row they are on",
    "erasures": "the longest retention of what they keep out, plus the dead-letter one",
    "tombstones": "BIOX_MARKER_RETENTION_DAYS once the snapshot on disk lacks the id",
    "scatters": "BIOX_DEAD_LETTER_RETENTION_DAYS: a shard's candidates come within it or never",
    "participants": "kept: the agreement's parties and their status (no personal data)",
    "participant_events": "kept: the parties' status history and official contacts (§12)",
    "audit_entries": "kept: the chain of who sent what when, digests only, never content",
    "audit_checkpoints": "kept: partners' signed chain heads, evidence of their chains",
}

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


@dataclass(frozen=True)
class Ages:
    """The retention periods that are settings, not row dates (``purge``)."""

    markers_days: int = 7
    refusals_days: int = 400
    ledger_days: int = 1095
    dead_letter_days: int = 30
    erasure_days: int = 365 * 75
    #: the highest tombstone the gallery snapshot on disk was rewritten without (None: no
    #: snapshot, so tombstones only guard the running matchers' catch-up)
    snapshot_tombstone_seq: int | None = None

    @classmethod
    def of(cls, settings: Settings, policy: ParticipantPolicy, snapshot_seq: int | None) -> Ages:
        longest = max(
            policy.enrolled_retention_days,
            policy.received_retention_days,
            policy.encounter_retention_days,
        )
        return cls(
            markers_days=settings.marker_retention_days,
            refusals_days=settings.refusal_retention_days,
            ledger_days=settings.ledger_retention_days,
            dead_letter_days=settings.dead_letter_retention_days,
            erasure_days=longest + settings.dead_letter_retention_days,
            snapshot_tombstone_seq=snapshot_seq,
        )


def purge(
    session: Session, now: datetime, dry_run: bool = False, ages: Ages | None = None
) -> dict[str, int]:
    """Removes every row past its rule (not committed: the caller commits, then records
    the event). Returns the counts by table; ``dry_run`` counts without removing."""
    ages = ages or Ages()
    counts = expired(session, now)
    aged = _aged(now, ages)
    for name, (table, clause) in aged.items():
        n = session.exec(select(func.count()).select_from(table).where(clause)).one()
        if n:
            counts[name] = int(n)
    orphans = _orphaned_notations(session)
    if orphans:
        counts["notations"] = len(orphans)
    if dry_run or not counts:
        return counts
    ids = list(session.exec(select(Record.id).where(col(Record.retain_until) < now)))
    corrections.forget_records(session, ids, "retention")
    for name, table in EXPIRING.items():
        if name != "records":
            session.exec(delete(table).where(col(table.retain_until) < now))
    for table, clause in aged.values():
        session.exec(delete(table).where(clause))
    if orphans:
        session.exec(delete(NotationRow).where(col(NotationRow.id).in_(orphans)))
    return counts


def _aged(now: datetime, ages: Ages) -> dict[str, tuple[Any, Any]]:
    """The rows a setting's period has run out for, as (table, where clause)."""

    def before(days: int) -> datetime:
        return now - timedelta(days=days)

    published = col(ProcessedMessage.published)
    markers = or_(
        and_(published.is_(True), col(ProcessedMessage.processed_at) < before(ages.markers_days)),
        # never confirmed: a redelivery would have come within the dead-letter retention
        and_(
            published.is_(False),
            col(ProcessedMessage.processed_at) < before(ages.dead_letter_days),
        ),
    )
    out: dict[str, tuple[Any, Any]] = {
        "processed_messages": (ProcessedMessage, markers),
        "refusals": (RefusalRow, col(RefusalRow.at) < before(ages.refusals_days)),
        "notices": (NoticeRow, col(NoticeRow.sent_at) < before(ages.ledger_days)),
        "disclosures": (DisclosureRow, col(DisclosureRow.at) < before(ages.ledger_days)),
        "incidents": (IncidentRow, col(IncidentRow.aware_at) < before(ages.ledger_days)),
        "erasures": (ErasureRow, col(ErasureRow.at) < before(ages.erasure_days)),
        # a query a shard never answered (its search dead-lettered): ids and scores only
        "scatters": (ScatterRow, col(ScatterRow.scattered_at) < before(ages.dead_letter_days)),
    }
    old_tombstone = col(Tombstone.at) < before(ages.markers_days)
    if ages.snapshot_tombstone_seq is not None:
        old_tombstone = and_(old_tombstone, col(Tombstone.seq) <= ages.snapshot_tombstone_seq)
    out["tombstones"] = (Tombstone, old_tombstone)
    return out


#: the tables a notation may be on, and the column its ``key`` names
NOTED: dict[str, Any] = {
    "records": Record.identity_ref,
    "encounters": EncounterRow.encounter_id,
    "transactions": Transaction.query_id,
    "retrievals": RetrievalRow.retrieval_id,
    "review_cases": ReviewCaseRow.case_id,
}


def _orphaned_notations(session: Session) -> list[int]:
    """Notations whose row is gone (deleted or purged): they go with it."""
    gone: list[int] = []
    for name, column in NOTED.items():
        notes = session.exec(select(NotationRow).where(NotationRow.table == name)).all()
        if not notes:
            continue
        keys = {n.key for n in notes}
        present = set(session.exec(select(column).where(column.in_(keys))))
        gone += [n.id for n in notes if n.key not in present and n.id is not None]
    return gone


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
