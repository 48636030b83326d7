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

from sqlalchemy import String, cast, or_
from sqlmodel import Session, col, delete, select

from biox.agreement import erasures
from biox.agreement.ledgers import Tombstone
from biox.store import (
    EnrolledTemplates,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    Transaction,
    marker_key,
)
from biox.wire.messages import utcnow
from biox.wire.notices import About


@dataclass
class Done:
    """What a notice changed: counts by place, and the encounters to tell again.
    ``held``: whether any of the named data was found at all ("nothing held" is an
    answer of its own, not a success with empty counts)."""

    counts: dict[str, int] = field(default_factory=dict)
    encounters: set[str] = field(default_factory=set)
    held: bool = False

    def add(self, what: str, n: int) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n
            self.held = True


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
    """The answers ``source`` gave to our queries (the requester's side), named by query or
    message, and those that released a record ``about`` names by its reference."""
    columns = (Transaction.query_id, Transaction.source_message_id, None)
    rows = _found(session, Transaction, about, columns, role="requester", providing=source)
    seen = {tx.query_id for tx in rows}
    released = answers_releasing(session, about.identity_refs, Transaction.providing == source)
    return rows + [tx for tx in released if tx.query_id not in seen]


def answers_releasing(session: Session, refs: list[str], *where: Any) -> list[Transaction]:
    """The answers to our queries that released a record named in ``refs`` (narrowed by
    ``where``): searched as text first, then checked candidate by candidate."""
    if not refs:
        return []
    text = cast(Transaction.answer, String)
    found = session.exec(
        select(Transaction).where(
            Transaction.role == "requester", *where, or_(*(text.contains(r) for r in refs))
        )
    )
    wanted = set(refs)
    return [
        tx
        for tx in found
        if wanted & {c.get("identity_ref") for c in (tx.answer or {}).get("candidates", [])}
    ]


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
    """§22: every copy of what ``source`` sent about ``about`` is deleted, and an erasure
    of each named item keeps it deleted (``agreement.erasures``). An answer named by its
    query or message is withdrawn whole (the query itself is ours and stays, without its
    answer, and ``withdrawn`` is final: no later copy of the answer is stored); an answer
    named by a record it released loses that record, and is withdrawn when none is left.
    The stored outgoing messages a redelivery would republish go with the data."""
    done = Done()
    refs = set(about.identity_refs)
    whole = {*about.query_ids, *about.message_ids}
    carried: set[str] = set(about.message_ids)  # the messages that carried the data
    records = _records(session, source, about)
    carried |= {r.source_message_id for r in records if r.source_message_id}
    done.add("records", forget_records(session, [r.id for r in records], cause))
    for tx in _answers(session, source, about):
        if tx.status == "withdrawn":
            continue
        kept = [
            c for c in (tx.answer or {}).get("candidates", []) if c.get("identity_ref") not in refs
        ]
        if tx.query_id in whole or tx.source_message_id in whole or not kept or not tx.answer:
            if tx.answer is not None:
                done.add("answers", 1)
            tx.answer, tx.conditions, tx.top_score = None, [], None
            tx.withdrawn_from = tx.status  # what was answered stays countable (§27)
            tx.status, tx.reason_code = "withdrawn", None
        else:
            done.add("answer_records", len(tx.answer.get("candidates", [])) - len(kept))
            tx.answer = {**tx.answer, "candidates": kept}
            tx.top_score = kept[0].get("fused_score")
        if tx.source_message_id:
            carried.add(tx.source_message_id)
        session.add(tx)
        done.encounters.add(tx.encounter_id)
    for r in _retrieved(session, source, about):
        if r.data is not None:
            done.add("retrievals", 1)
        r.data, r.conditions, r.status = None, [], "withdrawn"
        if r.source_message_id:
            carried.add(r.source_message_id)
        session.add(r)
    for case in _cases(session, source, about):
        session.delete(case)
        done.add("review_cases", 1)
        if case.source_message_id:
            carried.add(case.source_message_id)
    done.add("stored_messages", forget_outputs(session, source, carried))
    erased = erasures.erase(session, source, erasures.named(about), cause)
    if erased:  # not data found: what keeps it from coming back
        done.counts["erasures"] = erased
    return done


def forget_outputs(session: Session, source: str, message_ids: set[str]) -> int:
    """The outgoing messages kept for a redelivery of these messages of ``source``
    (``ProcessedMessage.outputs``) are emptied and marked published: a redelivery of
    the input republishes nothing, so what the data caused is not sent again."""
    if not message_ids:
        return 0
    keys = [marker_key(source, m) for m in message_ids]
    markers = session.exec(
        select(ProcessedMessage).where(col(ProcessedMessage.message_id).in_(keys))
    ).all()
    n = 0
    for marker in markers:
        if marker.outputs:
            n += 1
        marker.outputs, marker.published = b"", True
        session.add(marker)
    return n


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
    session: Session,
    source: str,
    about: About,
    corrections: dict[str, str | None],
    additions_only: bool = False,
) -> Done:
    """§23-24: the corrected biographic values replace the wrong ones in every copy; a
    value of None removes the field. ``additions_only`` (§19(ii), an ``addition``
    notice): only fields a copy does not hold yet are filled, nothing is replaced."""
    done = Done()
    now = utcnow()

    def fixed(biographic: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(biographic or {})
        for key, value in corrections.items():
            if additions_only and out.get(key) is not None:
                continue
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
