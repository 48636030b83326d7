"""Incidents (§17): each Participant notifies the other no later than 48 hours after
becoming aware of unauthorized access, use, disclosure, modification or disposal of
information received from it. An incident is opened with the time of awareness and the
partners whose data it touched; ``biox incident notify`` sends each an ``incident``
notice; ``biox incident overdue`` names every partner still waiting past the deadline.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from biox.agreement.ledgers import IncidentRow
from biox.wire.messages import utcnow

DEADLINE = timedelta(hours=48)


@dataclass(frozen=True)
class Late:
    incident: IncidentRow
    partner: str
    overdue_by: timedelta


def open_incident(
    session: Session, summary: str, partners: list[str], aware_at: datetime, by: str
) -> IncidentRow:
    row = IncidentRow(
        incident_id=f"inc-{uuid.uuid4().hex[:12]}",
        aware_at=aware_at,
        summary=summary,
        partners=sorted(set(partners)),
        opened_by=by,
    )
    session.add(row)
    return row


def deadline(row: IncidentRow) -> datetime:
    return row.aware_at + DEADLINE


def waiting(row: IncidentRow) -> list[str]:
    """The partners not yet sent a notice of this incident."""
    return [p for p in row.partners if p not in row.notified]


def notified(row: IncidentRow, partner: str, notice_id: str, at: datetime | None = None) -> None:
    row.notified = {**row.notified, partner: notice_id}
    row.notified_at = {**row.notified_at, partner: (at or utcnow()).isoformat()}


def overdue(session: Session, now: datetime) -> list[Late]:
    rows = session.exec(select(IncidentRow).order_by(col(IncidentRow.aware_at))).all()
    return [
        Late(row, partner, now - deadline(row))
        for row in rows
        for partner in waiting(row)
        if now > deadline(row)
    ]
