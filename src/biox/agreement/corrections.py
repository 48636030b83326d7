"""Deletion, correction and blocking of data a partner sent (§22-24), found through the
provenance every kept row carries (§20): ``source`` names the participant the data came
from, ``source_query_id`` / ``source_message_id`` / ``query_id`` the exchange it came in.

Each function changes rows in the caller's session (not committed) and says what it did,
counted by table, and which encounters' results must be sent again. Deleted gallery
records leave a tombstone that every matcher applies (docs/workflows.md, "Notices").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, delete, select

from biox.agreement.ledgers import Tombstone
from biox.store import EnrolledTemplates, Record, RetrievalRow, ReviewCaseRow, Transaction
from biox.wire.messages import utcnow
from biox.wire.notices import About


@dataclass
class Done:
    """What a notice changed: counts by what, and the encounters to tell again."""

    counts: dict[str, int] = field(default_factory=dict)
    encounters: set[str] = field(default_factory=set)

    def add(self, what: str, n: int) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n


def _found(
    session: Session, table: Any, about: About, columns: tuple[Any, Any, Any], **equal: str
) -> list[Any]:
    """Rows of ``table`` whose provenance columns (query, message, record; None: the table
    has none) name what ``about`` names, and whose ``equal`` columns hold those values."""
    named = zip(columns, (about.query_ids, about.message_ids, about.identity_refs), strict=True)
    clauses = [col(column).in_(ids) for column, ids in named if column is not None and ids]
    if not clauses:
        return []
    fixed = [getattr(table, name) == value for name, value in equal.items()]
    return list(session.exec(select(table).where(*fixed, or_(*clauses))))


def _records(session: Session, source: str, about: About) -> list[Record]:
    columns = (Record.source_query_id, Record.source_message_id, Record.identity_ref)
    return _found(session, Record, about, columns, source=source)


def _answers(session: Session, source: str, about: About) -> list[Transaction]:
    """The answers ``source`` gave to our queries (the requester's side)."""
    columns = (Transaction.query_id, Transaction.source_message_id, None)
    return _found(session, Transaction, about, columns, role="requester", providing=source)


def _retrieved(session: Session, source: str, about: About) -> list[RetrievalRow]:
    """What ``source`` released to us after our retrieval requests (the asker's side)."""
    columns = (RetrievalRow.query_id, RetrievalRow.source_message_id, None)
    return _found(session, RetrievalRow, about, columns, role="asker", source=source)


def _cases(session: Session, source: str, about: About) -> list[ReviewCaseRow]:
    columns = (ReviewCaseRow.query_id, ReviewCaseRow.source_message_id, None)
    return _found(session, ReviewCaseRow, about, columns, source=source)


def forget_records(session: Session, ids: list[int], cause: str) -> int:
    """Gallery records gone for good: their rows, their enrolled templates, and a tombstone
    so that no matcher's FAISS index keeps them, now or after a restart."""
    if not ids:
        return 0
    session.exec(delete(EnrolledTemplates).where(col(EnrolledTemplates.record_id).in_(ids)))
    session.exec(delete(Record).where(col(Record.id).in_(ids)))
    for rid in ids:
        session.add(Tombstone(record_id=rid, cause=cause))
    return len(ids)


def delete_from(session: Session, source: str, about: About, cause: str) -> Done:
    """§22: every copy of what ``source`` sent about ``about`` is deleted. The answers it
    gave become ``withdrawn`` (the query itself is ours and stays, without its answer)."""
    done = Done()
    records = _records(session, source, about)
    done.add("records", forget_records(session, [r.id for r in records], cause))
    for tx in _answers(session, source, about):
        tx.answer, tx.conditions, tx.top_score = None, [], None
        tx.status, tx.reason_code = "withdrawn", None
        session.add(tx)
        done.add("answers", 1)
        done.encounters.add(tx.encounter_id)
    for r in _retrieved(session, source, about):
        r.data, r.conditions, r.status = None, [], "withdrawn"
        session.add(r)
        done.add("retrievals", 1)
    for case in _cases(session, source, about):
        session.delete(case)
        done.add("review_cases", 1)
    return done


def block_from(session: Session, source: str, about: About, blocked: bool) -> Done:
    """§23: blocked data is kept but neither matched nor released nor shown as current;
    ``blocked=False`` lifts it."""
    done = Done()
    at = utcnow() if blocked else None
    for rows, what in (
        (_records(session, source, about), "records"),
        (_answers(session, source, about), "answers"),
        (_retrieved(session, source, about), "retrievals"),
    ):
        for row in rows:
            if (row.blocked_at is not None) == blocked:
                continue
            row.blocked_at = at
            session.add(row)
            done.add(what, 1)
            if isinstance(row, Transaction):
                done.encounters.add(row.encounter_id)
    return done


def correct_from(
    session: Session, source: str, about: About, corrections: dict[str, str | None]
) -> Done:
    """§23-24: the corrected biographic values replace the wrong ones in every copy; a
    value of None removes the field."""
    done = Done()
    now = utcnow()

    def fixed(biographic: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(biographic or {})
        for key, value in corrections.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    for record in _records(session, source, about):
        record.biographic, record.corrected_at = fixed(record.biographic), now
        session.add(record)
        done.add("records", 1)
    for tx in _answers(session, source, about):
        if not tx.answer:
            continue
        answer = dict(tx.answer)
        answer["candidates"] = [
            {**c, "record": {**c["record"], "biographic": fixed(c["record"].get("biographic"))}}
            if c.get("record")
            else c
            for c in answer.get("candidates", [])
        ]
        tx.answer, tx.corrected_at = answer, now
        session.add(tx)
        done.add("answers", 1)
        done.encounters.add(tx.encounter_id)
    for r in _retrieved(session, source, about):
        if r.data:
            r.data = {**r.data, "biographic": fixed(r.data.get("biographic"))}
            r.corrected_at = now
            session.add(r)
            done.add("retrievals", 1)
    for case in _cases(session, source, about):
        case.probe_biographic = fixed(case.probe_biographic)
        session.add(case)
        done.add("review_cases", 1)
    return done
