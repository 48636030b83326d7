"""Notices between participants: the agreement's written notifications as messages.

One partner kind, ``notice``, signed and sealed like a query, with a ``type`` that says
which paragraph it serves; and one own kind, ``notice.send``, by which an operator asks
the participant's notice worker to send one (docs/workflows.md, "Notices").
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from biox.registry import Status
from biox.wire.messages import Code, Id, Message, Model, Name, Short, Text, Timestamp


class NoticeType(StrEnum):
    deletion = "deletion"  # §22: delete what I sent you
    correction = "correction"  # §23-24: what I sent you was wrong; here is the right value
    addition = "addition"  # §19(ii): what I sent you lacked this; nothing else changes
    correction_request = "correction_request"  # §25: a subject says what you sent is wrong
    block = "block"  # §23: stop using what I sent you (not released, not matched)
    unblock = "unblock"
    consent_request = "consent_request"  # §15: may I pass on what you sent me?
    consent_reply = "consent_reply"
    compelled_disclosure = "compelled_disclosure"  # §14: the law made me disclose it
    incident = "incident"  # §17: unauthorized access, use, disclosure ... within 48 hours
    readiness = "readiness"  # §34: prepared to begin operations
    discontinuation = "discontinuation"  # §36
    contact_change = "contact_change"  # §12
    material_change = "material_change"  # §29
    acknowledgement = "acknowledgement"  # receipt, and what was done


#: notices about data the sender gave the recipient: applied through provenance (§20)
DATA_ACTIONS = frozenset(
    {
        NoticeType.deletion,
        NoticeType.correction,
        NoticeType.addition,
        NoticeType.block,
        NoticeType.unblock,
    }
)
#: notices that ask the recipient to do something by a date
ASKS_ACTION = DATA_ACTIONS | {NoticeType.consent_request, NoticeType.correction_request}
#: notices that allow or announce a disclosure outside the exchange (§14-15)
DISCLOSURES = frozenset({NoticeType.consent_request, NoticeType.compelled_disclosure})
#: the sender's own status, as a notice announces it
STATUS_OF = {NoticeType.readiness: Status.active, NoticeType.discontinuation: Status.discontinued}


class AckOutcome(StrEnum):
    applied = "applied"
    nothing_held = "nothing_held"


class About(Model):
    """The data a notice is about, as the recipient's provenance marks find it: the queries
    it belongs to, the messages that carried it, the records it became."""

    query_ids: list[Id] = Field(default_factory=list, max_length=1000)
    message_ids: list[Id] = Field(default_factory=list, max_length=1000)
    identity_refs: list[Name] = Field(default_factory=list, max_length=1000)

    def is_empty(self) -> bool:
        return not (self.query_ids or self.message_ids or self.identity_refs)


class NoticeContent(Model):
    """What every notice may say; each type uses the fields it needs."""

    type: NoticeType
    about: About = Field(default_factory=About)
    text: Text = Field(default="", description="for the people who read it")
    corrections: dict[Short, Name | None] = Field(
        default_factory=dict, max_length=50, description="correction: biographic field → value"
    )
    contacts: dict[Short, Name] = Field(
        default_factory=dict, max_length=20, description="contact_change: role → contact"
    )
    in_reply_to: Id | None = Field(
        default=None, description="acknowledgement, consent_reply: the notice answered"
    )
    consent: bool | None = Field(default=None, description="consent_reply: granted or not")
    disclose_to: Name | None = Field(
        default=None,
        description="consent_request, compelled_disclosure: the third party the data goes to",
    )
    disclose_purpose: Text | None = Field(
        default=None, description="consent_request: what the third party may use it for"
    )
    respond_by: Timestamp | None = None

    @model_validator(mode="after")
    def _fits_its_type(self) -> NoticeContent:
        t = self.type
        if t in DATA_ACTIONS and self.about.is_empty():
            raise ValueError(f"a {t.value} notice names the data it is about")
        if t is NoticeType.correction_request and self.about.is_empty():
            raise ValueError("a correction_request names the data it is about")
        if t in (NoticeType.correction, NoticeType.addition) and not self.corrections:
            raise ValueError(f"a {t.value} notice carries the values (--correct field=value)")
        if t is NoticeType.contact_change and not self.contacts:
            raise ValueError("a contact_change notice carries the new contacts")
        if t in (NoticeType.acknowledgement, NoticeType.consent_reply) and not self.in_reply_to:
            raise ValueError(f"a {t.value} notice names the notice it answers")
        if t is NoticeType.consent_reply and self.consent is None:
            raise ValueError("a consent_reply says whether consent is given")
        if t in DISCLOSURES and (not self.about.identity_refs or not self.disclose_to):
            # §14-15: consent is given to, and a disclosure announced for, named records
            # going to a named recipient: never to anything, for anyone
            raise ValueError(f"a {t.value} names the records (--ref) and the recipient")
        return self


class Notice(NoticeContent, Message):
    """A notice from one participant to another. ``notice_id`` is its message id."""

    KIND: ClassVar[str] = "notice"

    notice_id: Id
    sender: Code
    recipient: Code
    sent_at: Timestamp
    done: dict[Short, int] = Field(
        default_factory=dict,
        max_length=50,
        description="acknowledgement: what was done, counted by place (records, answers, ...)",
    )
    outcome: AckOutcome | None = Field(
        default=None,
        description=(
            "acknowledgement of a deletion, correction, block or unblock: applied, or "
            "nothing_held when none of the named data was held (an answer of its own)"
        ),
    )


class NoticeSend(NoticeContent, Message):
    """An operator's request that the participant send a notice (``biox notice send``)."""

    KIND: ClassVar[str] = "notice.send"

    to: Code
    actor: Name = Field(description="the person who asked, for the ledger")
