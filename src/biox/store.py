"""The SQLModel tables of the exchange and the one column type of every time kept
(docs/architecture.md, "Storage"); ``database.py`` makes the engine that creates them,
with the agreement's tables (``agreement/ledgers.py``).

Every participant has its own database even when one machine runs all three: they share
nothing but messages. SQLite (WAL) by default; PostgreSQL through BIOX_DATABASE_URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from biox.wire.messages import utcnow


def no_items() -> list[Any]:
    """An empty list column's default. Not ``list`` itself: sqlmodel builds each row
    through pydantic's ``get_default``, which inspects the factory's signature every time,
    and a builtin's signature is parsed from text (about 50 µs a field, a tenth of an
    intake worker's CPU in ``bench.run --profile``); a Python function's is read directly."""
    return []


class UTCDateTime(TypeDecorator[datetime]):
    """The one column type of every time biox keeps: stored as naive UTC (SQLite keeps no
    zone, and PostgreSQL's ``timestamp`` column neither), read back aware, in UTC. A time
    with any zone is converted on the way in; a naive one is taken as UTC already."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class ParticipantRow(SQLModel, table=True):
    """A participant's live state (``biox.agreement.participants``): seeded from the registry file,
    then changed only by notices (§12, §34, §36) and operators, each change kept in
    ``participant_events``."""

    __tablename__ = "participants"
    code: str = Field(primary_key=True)
    agency: str
    status: str
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    contacts: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))


class Record(SQLModel, table=True):
    """An identity record of the gallery. ``id`` is also its id in the FAISS indexes.

    ``source`` is the participant the data came from (§20): the owner itself for its own
    enrolments, a partner for data retained from a query or retrieval.
    """

    __tablename__ = "records"
    # 64-bit: enrolled query data has hashed 62-bit ids (PostgreSQL's INTEGER is 32-bit)
    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    identity_ref: str = Field(index=True, unique=True)
    person_centric_id: str | None = None
    biographic: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    encounters: list[dict[str, Any]] = Field(default_factory=no_items, sa_column=Column(JSON))
    derogatory: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    releasable: bool = True
    source: str
    source_query_id: str | None = None
    source_message_id: str | None = None
    received_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    retain_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    conditions: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    blocked_at: datetime | None = Field(
        sa_type=UTCDateTime,
        default=None,
        description="blocked on the source's notice (§23): not matched, not released",
    )
    corrected_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class EnrolledTemplates(SQLModel, table=True):
    """Templates of query data enrolled in the gallery (§21), for every matcher to load.

    The FAISS files on disk are a snapshot; enrolments after it live here, and each
    matcher adds the rows it has not seen (at start, then every few seconds), so
    competing matchers converge on the same gallery. ``seq`` orders the catch-up.
    """

    __tablename__ = "enrolled_templates"
    # a sequence number is never used twice, even after the highest row is deleted: the
    # snapshot's mark (``gallery/snapshot.py``) would otherwise hide the row given it again
    __table_args__ = {"sqlite_autoincrement": True}
    seq: int | None = Field(default=None, primary_key=True)
    record_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    biometrics: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    enrolled_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)


class Transaction(SQLModel, table=True):
    """One query as seen by one side: times and outcome (§27 review reads these)."""

    __tablename__ = "transactions"
    query_id: str = Field(primary_key=True)
    role: str = Field(primary_key=True, description="requester | provider")
    encounter_id: str = Field(index=True)
    requesting: str
    providing: str
    purpose: str
    reply_to: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    received_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: str | None = Field(default=None, index=True)
    reason_code: str | None = None
    top_score: float | None = None
    answer: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON), description="received answer, marked by source"
    )
    source: str | None = Field(default=None, description="who the answer came from (§20)")
    source_message_id: str | None = None
    conditions: list[str] = Field(
        default_factory=no_items, sa_column=Column(JSON), description="conditions of use (§9)"
    )
    retain_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    blocked_at: datetime | None = Field(
        sa_type=UTCDateTime, default=None, description="the answer blocked (§23)"
    )
    corrected_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    withdrawn_from: str | None = Field(
        default=None,
        description="the outcome an answer had before its provider had it deleted (§22): "
        "the annual review still counts it as answered so (agreement.report)",
    )
    answer_due: datetime | None = Field(
        sa_type=UTCDateTime,
        default=None,
        description="requester: timed_out without an answer by then",
    )
    timed_out_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


_encounter_revision = Column("revision", Integer, nullable=False, default=0)


class EncounterRow(SQLModel, table=True):
    """An encounter its own encounter system submitted: what the requester knows of the
    subject (the store retrieval requests are answered from, §10) and the state of the
    consolidated result. ``revision`` doubles as an optimistic lock: two workers updating
    one encounter at once cannot both commit, the loser retries with fresh state.
    """

    __tablename__ = "encounters"
    encounter_id: str = Field(primary_key=True)
    purpose: str
    reply_to: str | None = None
    partners: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    skipped: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSON), description="partner -> why it was not asked"
    )
    person_centric_id: str | None = None
    biographic: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    encounter: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    submitted_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    source_message_id: str | None = None
    status: str = "pending"
    revision: int = Field(default=0, sa_column=_encounter_revision)
    retain_until: datetime | None = Field(default=None, sa_type=UTCDateTime)

    __mapper_args__ = {"version_id_col": _encounter_revision, "version_id_generator": False}


_scatter_version = Column("version", Integer, nullable=False, default=1)


class ScatterRow(SQLModel, table=True):
    """A query scattered to the gallery's shards, until every shard's candidates are in
    (docs/architecture.md, "Shards"). Only record ids and scores: the templates travel
    with the messages. ``version`` is an optimistic lock: two query workers gathering the
    last two shards at once cannot both see the other missing; the loser runs again."""

    __tablename__ = "scatters"
    key: str = Field(primary_key=True, description="requester/message id of the query")
    query_id: str
    shards: int
    arrived: list[int] = Field(default_factory=no_items, sa_column=Column(JSON))
    hits: list[dict[str, Any]] = Field(default_factory=no_items, sa_column=Column(JSON))
    gallery_size: int = 0
    search_ms: float = 0.0
    scattered_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    version: int = Field(default=1, sa_column=_scatter_version)

    __mapper_args__ = {"version_id_col": _scatter_version}


class ReviewCaseRow(SQLModel, table=True):
    """A gray-zone match waiting for an examiner (§8). Survives restarts: it is the
    examiners' work list. ``pending`` → ``in_review`` (taken, with a lease) → ``decided``.
    The probe's biographic data is query data kept from the requester (``source``)."""

    __tablename__ = "review_cases"
    case_id: str = Field(primary_key=True)
    query_id: str = Field(index=True)
    requesting: str
    purpose: str
    opened_at: datetime = Field(sa_type=UTCDateTime)
    status: str = Field(default="pending", index=True)
    candidates: list[dict[str, Any]] = Field(default_factory=no_items, sa_column=Column(JSON))
    probe_biographic: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    probe_modalities: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    encounter: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    source: str = Field(description="participant the probe data came from")
    source_message_id: str | None = None
    retain_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    examiner: str | None = None
    taken_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    verdict: str | None = None
    identity_ref: str | None = None
    note: str | None = None


class RetrievalRow(SQLModel, table=True):
    """One retrieval (§10) as seen by one side: ``asker`` (the provider of the query, who
    wants more) or ``holder`` (the requester, who has the encounter). On the asker's side
    the received data is kept here, marked with its provenance (§20)."""

    __tablename__ = "retrievals"
    retrieval_id: str = Field(primary_key=True)
    role: str = Field(primary_key=True, description="asker | holder")
    query_id: str = Field(index=True)
    asker: str
    holder: str
    identity_ref: str
    elements: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    asked_by: str | None = Field(default=None, description="operator, or rule:<name>")
    justification: str | None = None
    asked_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    status: str = Field(default="pending", index=True)
    released: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    withheld: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    reason_code: str | None = None
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    conditions: list[str] = Field(default_factory=no_items, sa_column=Column(JSON))
    source: str | None = Field(default=None, description="who the data came from (§20)")
    source_message_id: str | None = None
    received_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    retain_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    blocked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    corrected_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def marker_key(sender: str, message_id: str) -> str:
    """A duplicate marker's key (``ProcessedMessage.message_id``): the message id under
    the sender the broker and the signature vouched for, so that one partner cannot
    squat another's ids (docs/security.md, "Duplicates")."""
    return f"{sender}/{message_id}"


class ProcessedMessage(SQLModel, table=True):
    """Idempotency: a message id handled by a consumer, with what it caused.

    ``outputs`` keeps the messages the handler produced so a redelivery republishes the
    same bytes under the same ids instead of computing a second, possibly different answer;
    once the broker has confirmed them (``published``) a redelivery republishes nothing.
    """

    __tablename__ = "processed_messages"
    consumer: str = Field(primary_key=True)
    message_id: str = Field(
        primary_key=True, description="the sender and the message id (marker_key)"
    )
    processed_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    outputs: bytes = Field(default=b"", sa_column=Column(LargeBinary))
    published: bool = Field(default=False, description="outputs confirmed by the broker")


class AuditEntry(SQLModel, table=True):
    """One message seen by a participant, chained to the previous entry by its hash.

    Holds who, to whom, when, what kind and a digest of the body: never the body, so no
    template or personal data reaches the audit trail.
    """

    __tablename__ = "audit_entries"
    seq: int = Field(primary_key=True)
    received_at: datetime = Field(sa_type=UTCDateTime)
    direction: str = Field(description="in | out")
    kind: str
    sender_user: str | None = Field(default=None, description="broker-validated user_id")
    sender: str | None = Field(default=None, description="biox-from")
    recipient: str | None = Field(default=None, description="biox-to")
    message_id: str = Field(index=True)
    correlation_id: str | None = Field(default=None, index=True)
    schema_id: str | None = None
    body_sha256: str
    provenance: str | None = Field(default=None, description="participant the data came from")
    actor: str | None = Field(default=None, description="person behind an ops action")
    reason: str | None = Field(
        default=None, description="why a retry or dead-letter hop was made (its reason code)"
    )
    command: str | None = Field(
        default=None, description="the CLI command of a read of personal data (ops.read)"
    )
    prev_hash: str
    entry_hash: str
    hop: str | None = Field(
        default=None,
        unique=True,
        index=True,
        description="the delivery recorded (wire.inbound.hop_key): a redelivery finds its "
        "entry here and is not chained twice; not hashed, it says nothing of the message",
    )


class CheckpointRow(SQLModel, table=True):
    """A partner's signed audit chain head, kept as evidence of what its chain was
    (``biox.trust.checkpoints``)."""

    __tablename__ = "audit_checkpoints"
    participant: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    entry_hash: str
    at: datetime = Field(sa_type=UTCDateTime)
    key_id: str
    signature: str
    received_at: datetime = Field(sa_type=UTCDateTime)


_Row = TypeVar("_Row", bound=SQLModel)


@cache
def _defaults(model: type[SQLModel]) -> tuple[frozenset[str], frozenset[str], tuple[Any, ...]]:
    """A table model's field names, its required ones, and ``(name, default, factory)``
    of the others, read once per model."""
    fields = model.model_fields
    required = frozenset(name for name, f in fields.items() if f.is_required())
    defaults = tuple(
        (name, None if f.default_factory else f.default, f.default_factory)
        for name, f in fields.items()
        if name not in required
    )
    if shared := [name for name, d, _ in defaults if isinstance(d, list | dict | set)]:
        raise TypeError(f"{model.__name__}: a default_factory for {shared}, not one value")
    return frozenset(fields), required, defaults


def fresh(model: type[_Row], **values: Any) -> _Row:
    """A new row of a table model, as its constructor makes it, for the rows a handler
    adds on every message (docs/performance.md, "Rows made without SQLModel's setattr").

    SQLModel's constructor sends each field through pydantic's and SQLAlchemy's
    ``__setattr__`` and asks pydantic for each default: about 150 us for a Transaction,
    a tenth of an intake worker's CPU. A row that was never flushed has no history to
    record, so its values go straight into the instance's dictionary, where the INSERT
    reads them, as SQLAlchemy itself fills a row it loads (``ClassManager.new_instance``).
    Unlike the constructor, which drops both silently, a name that is no field of the
    model and a required field left out are refused."""
    names, required, defaults = _defaults(model)
    if unknown := values.keys() - names:
        raise TypeError(f"{model.__name__} has no field {sorted(unknown)}")
    if missing := required - values.keys():
        raise TypeError(f"{model.__name__} needs {sorted(missing)}")
    row: _Row = sa_inspect(model).class_manager.new_instance()  # SQLModel.__new__ as well
    fields = row.__dict__
    for name, default, factory in defaults:
        if name not in values:
            fields[name] = factory() if factory is not None else default
    fields.update(values)
    object.__setattr__(row, "__pydantic_fields_set__", set(values))
    return row
