"""The examiners' side of human review (§8): the work list, taking a case, deciding it.

A case is taken with a lease (``in_review`` with the examiner and the time) by a
conditional update, so two examiners never get the same case and a case whose examiner
walked away returns to the pool when the lease runs out. The decision is a message to
the participant's review worker, which sends the answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, or_, update
from sqlmodel import Session, col, select

from biox.store import Record, ReviewCaseRow
from biox.wire import codec
from biox.wire.messages import ReviewDecision, ReviewVerdict, utcnow

OPEN = ("pending", "in_review")


def age_s(case: ReviewCaseRow, now: datetime | None = None) -> float:
    return ((now or utcnow()) - case.opened_at).total_seconds()


def open_cases(session: Session) -> list[ReviewCaseRow]:
    rows = session.exec(
        select(ReviewCaseRow)
        .where(col(ReviewCaseRow.status).in_(OPEN))
        .order_by(col(ReviewCaseRow.opened_at))
    )
    return list(rows)


def overdue(cases: list[ReviewCaseRow], max_age_s: float) -> list[ReviewCaseRow]:
    now = utcnow()
    return [c for c in cases if c.status in OPEN and age_s(c, now) > max_age_s]


def take_next(session: Session, examiner: str, lease_s: float) -> ReviewCaseRow | None:
    """The oldest case nobody holds (or whose lease ran out), now held by ``examiner``."""
    now = utcnow()
    free = or_(
        col(ReviewCaseRow.status) == "pending",
        and_(
            col(ReviewCaseRow.status) == "in_review",
            col(ReviewCaseRow.taken_at) < now - timedelta(seconds=lease_s),
        ),
    )
    oldest_first = select(ReviewCaseRow).where(free).order_by(col(ReviewCaseRow.opened_at))
    for case in session.exec(oldest_first):
        taken = session.execute(
            update(ReviewCaseRow)
            .where(col(ReviewCaseRow.case_id) == case.case_id, free)
            .values(status="in_review", examiner=examiner, taken_at=now)
        )
        session.commit()
        assert isinstance(taken, CursorResult)  # an UPDATE's result counts its rows
        if taken.rowcount == 1:
            session.refresh(case)
            return case
    return None


@dataclass
class Side:
    """One candidate beside the probe: the scores and the gallery record."""

    identity_ref: str
    fused_score: float
    scores: dict[str, float]
    record: Record | None
    evidence: dict[str, Any] | None = None  # wire Evidence, when the matcher was calibrated


def sides(session: Session, case: ReviewCaseRow) -> list[Side]:
    refs = [c["identity_ref"] for c in case.candidates]
    records = {
        r.identity_ref: r
        for r in session.exec(select(Record).where(col(Record.identity_ref).in_(refs)))
    }
    return [
        Side(
            c["identity_ref"],
            c["fused_score"],
            c["scores"],
            records.get(c["identity_ref"]),
            c.get("evidence"),
        )
        for c in case.candidates
    ]


def decision_message(
    participant: str,
    case: ReviewCaseRow,
    verdict: ReviewVerdict,
    identity_ref: str | None,
    examiner: str,
    note: str | None = None,
) -> codec.Outgoing:
    decision = ReviewDecision(
        case_id=case.case_id,
        verdict=verdict,
        identity_ref=identity_ref if verdict is ReviewVerdict.match else None,
        examiner=examiner,
        note=note,
        decided_at=utcnow(),
    )
    out = codec.to_own_inbox(
        decision,
        participant=participant,
        message_id=str(uuid.uuid4()),
        correlation_id=case.query_id,
    )
    return codec.with_actor(out, examiner)
