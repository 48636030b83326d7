"""The agreement's ledgers (docs/lifecycle.md): each change of a participant's status,
the notices sent and received, incidents, disclosures outside the exchange, notations on
kept rows, refusals counted for the annual review, and the tombstones every matcher
applies. Tables like those of ``store.py``, which creates them with the rest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from biox.store import UTCDateTime, no_items
from biox.wire.messages import utcnow


class ParticipantEvent(SQLModel, table=True):
    """One change of a participant's status or contacts, and what caused it."""

    __tablename__ = "participant_events"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(index=True)
    status: str
    contacts: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    cause: str = Field(description="registry | notice:<id> | operator:<name>")
    note: str | None = None


class NoticeRow(SQLModel, table=True):
    """A notice sent to or received from a partner (``biox.notices``), with what it asks,
    by when, and what came of it. The ledger a privacy officer shows (§12-36)."""

    __tablename__ = "notices"
    notice_id: str = Field(primary_key=True)
    direction: str = Field(description="out | in")
    type: str = Field(index=True)
    partner: str = Field(index=True)
    sent_at: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    respond_by: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: str = Field(index=True, description="sent | received | applied | acknowledged")
    about: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    text: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    in_reply_to: str | None = Field(default=None, index=True)
    done: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    actor: str | None = None


class RefusalRow(SQLModel, table=True):
    """A message refused for good (answered ``rejected``/``refused``, or dead-lettered):
    kept so the annual review can count refusals by reason (§27-28)."""

    __tablename__ = "refusals"
    id: int | None = Field(default=None, primary_key=True)
    queue: str
    kind: str = Field(index=True)
    sender: str | None = Field(default=None, index=True)
    correlation_id: str | None = None
    message_id: str
    reason: str = Field(index=True)
    answered: bool = Field(description="the sender was told; else dead-lettered")
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)


class DisclosureRow(SQLModel, table=True):
    """Data passed to someone outside the exchange (§14-15): to whom, what, on which basis,
    and the notice that allows it (a consent reply) or announces it (compelled)."""

    __tablename__ = "disclosures"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    recipient: str = Field(description="the third party: a court, an agency, a state")
    identity_ref: str = Field(index=True)
    source: str = Field(description="the participant the data came from (§20)")
    basis: str = Field(description="own_data | consent (§15) | compelled (§14)")
    notice_id: str | None = Field(default=None, description="consent request, or our notice")
    purpose: str | None = Field(default=None, description="what the recipient may use it for")
    by: str


class NotationRow(SQLModel, table=True):
    """A note on a kept row (§25): that its subject asked for access or a correction, and
    what was done. Shown wherever the row is shown."""

    __tablename__ = "notations"
    id: int | None = Field(default=None, primary_key=True)
    table: str = Field(description="records | encounters | transactions | retrievals | ...")
    key: str = Field(index=True, description="the row's key in that table")
    text: str
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    by: str


class IncidentRow(SQLModel, table=True):
    """An unauthorized access, use, disclosure, modification or disposal of partner data
    (§17): the partners it affects must have a notice within 48 hours of ``aware_at``."""

    __tablename__ = "incidents"
    incident_id: str = Field(primary_key=True)
    aware_at: datetime = Field(sa_type=UTCDateTime, index=True)
    summary: str
    partners: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    notified: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON), description="partner → notice id"
    )
    notified_at: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    opened_by: str


class Tombstone(SQLModel, table=True):
    """A record id every matcher removes from its FAISS indexes, at start and on catch-up:
    the snapshot on disk still holds it, so the removal must outlive a restart."""

    __tablename__ = "tombstones"
    seq: int | None = Field(default=None, primary_key=True)
    record_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    cause: str


class ErasureRow(SQLModel, table=True):
    """One item a partner had us delete (§22): a query, a message or a record of theirs,
    named as the deletion notice named it. Every later path that could store or send the
    item again consults these first (``agreement.erasures``): an answer retried or replayed
    from a dead letter, a retrieval response, an enrolment, a review case, a ``dlq import``,
    a held result. Kept as long as the data could come back: the longest retention."""

    __tablename__ = "erasures"
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True, description="the participant whose data it was")
    kind: str = Field(description="query | message | record")
    key: str = Field(index=True)
    cause: str = Field(description="notice:<id> | operator:<name>")
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
