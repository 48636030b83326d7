"""Messages that record what on-call staff did to a participant's own exchange.

They travel like every other kind (route table, schemas, audit trail) but are never
exchanged between participants: only the participant's own audit queue takes them.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from biox.wire.messages import Id, Message, Short


class OpsEvent(Message):
    """An on-call action on a participant's own exchange, for its audit trail.

    Sent to the participant's own inbox, where only the audit queue takes it; the person
    who acted is in the ``biox-actor`` header. Carries message ids, never message content.
    """

    KIND: ClassVar[str] = "ops"

    ids: list[Id] = Field(default_factory=list, description="the messages acted on")
    detail: str = Field(default="", max_length=2000)


class DeadLettersReplayed(OpsEvent):
    """Dead letters republished to where they came from (``biox dlq replay``)."""

    KIND: ClassVar[str] = "ops.dlq.replay"


class DeadLettersPurged(OpsEvent):
    """Dead letters deleted for good (``biox dlq purge``)."""

    KIND: ClassVar[str] = "ops.dlq.purge"


class DeadLettersExported(OpsEvent):
    """Dead letters written to a file (``biox dlq export``): where their copies went."""

    KIND: ClassVar[str] = "ops.dlq.export"


class DeadLettersImported(OpsEvent):
    """Dead letters put back into dead-letter queues from a file (``biox dlq import``)."""

    KIND: ClassVar[str] = "ops.dlq.import"


class RetentionPurged(OpsEvent):
    """Expired data removed (``biox retention purge``, or the notice worker's schedule).

    ``counts``: rows removed per table; never what they held.
    """

    KIND: ClassVar[str] = "ops.retention.purge"

    counts: dict[Short, int] = Field(default_factory=dict, max_length=50)


class PersonalDataRead(OpsEvent):
    """An operator read personal data (``biox subject search``, ``biox records show``):
    who, which command, a digest of what was asked and how many rows were shown (§28)."""

    KIND: ClassVar[str] = "ops.read"

    command: Short
    terms_sha256: Short = Field(description="digest of the search terms, never the terms")
    shown: int = Field(ge=0)
