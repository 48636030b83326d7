"""Message models: one per message kind, each with a schema version.

These models are the contract. ``schemas/`` is generated from them and an integrator in
another language reads only that. Templates are raw bytes (float32 little-endian vectors,
packed bit strings) and travel as msgpack ``bin``; times are msgpack timestamps
(``wire/fields.py``: decoding from the wire accepts nothing else).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from biox.registry import Purpose
from biox.wire.biometrics import Biometrics, Evidence, Face, Fingerprint, Iris
from biox.wire.errors import Reason
from biox.wire.fields import Code, Id, Model, Name, PartialDate, Short, Text, Timestamp, utcnow

# the contract's building blocks, importable from here as from their modules
__all__ = [
    "Biometrics",
    "Code",
    "Evidence",
    "Face",
    "Fingerprint",
    "Id",
    "Iris",
    "Model",
    "Name",
    "Short",
    "Text",
    "Timestamp",
    "utcnow",
]


class Message(Model):
    """A body that travels on its own: it has a kind and a schema version."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def schema_id(cls) -> str:
        return f"{cls.KIND}/{cls.VERSION}"


# --- who, where, when ---------------------------------------------------------------------


class Biographic(Model):
    family_name: Name | None = None
    given_names: Name | None = None
    date_of_birth: PartialDate | None = None
    sex: Literal["F", "M", "X"] | None = None
    claimed_nationality: Short | None = Field(default=None, description="ISO 3166 alpha-2")
    place_of_birth: Name | None = None
    document_number: Name | None = None


class SubjectStatus(Model):
    """What the requester knows of the subject's citizenship and residence (§4)."""

    citizenships: list[Code] = Field(default_factory=list, description="including nationals")
    permanent_residences: list[Code] = Field(default_factory=list)


class EncounterType(StrEnum):
    border = "border"
    interior = "interior"
    application = "application"
    detention = "detention"


class Encounter(Model):
    encountered_at: Timestamp
    country: Code
    location: Name | None = None
    type: EncounterType = EncounterType.border


class References(Model):
    transaction_id: Id
    encounter_id: Id
    person_centric_id: Name | None = None


# --- messages -----------------------------------------------------------------------------


class EncounterSubmit(Message):
    """From a participant's own encounter system to its intake (§5)."""

    KIND: ClassVar[str] = "encounter.submit"

    encounter_id: Id
    purpose: Purpose
    subject_status: SubjectStatus
    biometrics: Biometrics
    biographic: Biographic = Field(default_factory=Biographic)
    encounter: Encounter
    person_centric_id: Name | None = None
    enroll: bool = Field(
        default=False,
        description=(
            "also enrol the encounter in this participant's own gallery, kept for its "
            "enrolment retention period (only encounters that pass intake)"
        ),
    )


class Query(Message):
    """Requesting → providing participant (§5)."""

    KIND: ClassVar[str] = "query"

    query_id: Id
    requesting: Code
    providing: Code
    purpose: Purpose
    references: References
    subject_status: SubjectStatus
    biometrics: Biometrics
    biographic: Biographic = Field(default_factory=Biographic)
    encounter: Encounter
    created_at: Timestamp
    sent_at: Timestamp


class ResponseStatus(StrEnum):
    match = "match"
    no_match = "no_match"
    declined = "declined"  # a decision of the provider's release policy (§9), with a reason
    rejected = "rejected"  # the query itself could not be processed, with a reason
    pending_review = "pending_review"  # interim: a human examiner decides (§8); final follows

    @property
    def final(self) -> bool:
        return self is not ResponseStatus.pending_review


class Element(StrEnum):
    """The data elements of §7 (a-d) that a release policy or a retrieval names."""

    reference = "reference"  # person-centric / transaction reference numbers (§7a)
    biographic = "biographic"  # §7b
    encounters = "encounters"  # §7c
    derogatory = "derogatory"  # §7d


class DecidedBy(StrEnum):
    """Who reached the answer (§8: a manual or an automated process)."""

    automatic = "automatic"
    examiner = "examiner"


class EncounterRecord(Model):
    encountered_at: Timestamp
    country: Code
    type: EncounterType
    location: Name | None = None


class ReleasedRecord(Model):
    """The elements of §7 the provider chose to release for this purpose."""

    identity_ref: Id
    person_centric_id: Name | None = None
    biographic: Biographic | None = None
    encounters: list[EncounterRecord] = Field(default_factory=list)
    derogatory: list[Text] = Field(default_factory=list, max_length=100)


class Candidate(Model):
    identity_ref: Id
    fused_score: float = Field(description="with a calibration the log-LR sum, else in [0, 1]")
    scores: dict[str, float] = Field(description="normalised per-modality scores in [0, 1]")
    evidence: Evidence | None = None
    record: ReleasedRecord | None = None


class Timings(Model):
    received_at: Timestamp
    answered_at: Timestamp
    search_ms: float = 0.0


class Response(Message):
    """Providing → requesting participant (§6-9)."""

    KIND: ClassVar[str] = "response"

    query_id: Id
    requesting: Code
    providing: Code
    status: ResponseStatus
    candidates: list[Candidate] = Field(default_factory=list)
    conditions: list[Text] = Field(
        default_factory=list, max_length=50, description="conditions of use (§9)"
    )
    withheld: list[Element] = Field(
        default_factory=list, description="elements the release policy withheld (§9 partial)"
    )
    decided_by: DecidedBy = DecidedBy.automatic
    reason_code: Reason | None = None
    reason: Text | None = None
    timings: Timings


class ReviewCandidate(Model):
    identity_ref: Id
    fused_score: float
    scores: dict[str, float]
    evidence: Evidence | None = None  # the per-modality evidence the examiner weighs


class ReviewCase(Message):
    """Matcher → its own examiners: a fused score between the thresholds (§8).

    Carries scores and references, never templates: the examiner's tool reads the
    gallery record and the probe's biographic data from the participant's own store.
    """

    KIND: ClassVar[str] = "review.case"

    case_id: Id
    query_id: Id
    requesting: Code
    purpose: Purpose
    probe_biographic: Biographic = Field(default_factory=Biographic)
    probe_modalities: list[Short] = Field(default_factory=list, max_length=8)
    encounter: Encounter
    candidates: list[ReviewCandidate]
    opened_at: Timestamp


class ReviewVerdict(StrEnum):
    match = "match"
    no_match = "no_match"


class ReviewDecision(Message):
    """An examiner's decision on a case (``biox review next``), to the review worker."""

    KIND: ClassVar[str] = "review.decision"

    case_id: Id
    verdict: ReviewVerdict
    identity_ref: Id | None = Field(default=None, description="the chosen candidate on a match")
    examiner: Id
    note: str | None = Field(default=None, max_length=2000)
    decided_at: Timestamp


class RetrievalAsk(Message):
    """An operator (or the automatic rule) asks its own retrieval worker to send a
    ``retrieval.request`` about a query this participant answered with a match."""

    KIND: ClassVar[str] = "retrieval.ask"

    query_id: Id
    elements: list[Element] = Field(min_length=1)
    asked_by: Id = Field(description="operator id, or 'rule:<name>' for the automatic rule")
    justification: str | None = Field(default=None, max_length=2000)


class RetrievalRequest(Message):
    """Providing → requesting participant, after a match: more data elements (§10)."""

    KIND: ClassVar[str] = "retrieval.request"

    retrieval_id: Id
    query_id: Id
    asker: Code = Field(description="the participant that answered the query (its provider)")
    holder: Code = Field(description="the participant that sent the query (its requester)")
    identity_ref: Id = Field(description="the asker's matched identity")
    elements: list[Element] = Field(min_length=1)
    justification: Text | None = None
    sent_at: Timestamp


class RetrievalStatus(StrEnum):
    released = "released"
    declined = "declined"
    rejected = "rejected"


class RetrievalResponse(Message):
    """Requesting → providing participant: the elements its release policy allows."""

    KIND: ClassVar[str] = "retrieval.response"

    retrieval_id: Id
    query_id: Id
    asker: Code
    holder: Code
    status: RetrievalStatus
    released: list[Element] = Field(default_factory=list)
    withheld: list[Element] = Field(default_factory=list)
    data: ReleasedRecord | None = Field(
        default=None, description="identity_ref is the holder's encounter id"
    )
    conditions: list[Text] = Field(
        default_factory=list, max_length=50, description="conditions of use (§9)"
    )
    reason_code: Reason | None = None
    reason: Text | None = None
    answered_at: Timestamp


class OutcomeStatus(StrEnum):
    """One partner's part of an encounter: no answer yet, or its latest answer."""

    pending = "pending"
    pending_review = "pending_review"
    match = "match"
    no_match = "no_match"
    declined = "declined"
    rejected = "rejected"
    withdrawn = "withdrawn"  # the provider had its answer deleted (§22)
    blocked = "blocked"  # the provider had its answer blocked (§23): not to be relied on
    skipped = "skipped"  # never asked: reason_code says why (§1-4, §34-36)
    timed_out = "timed_out"  # no answer by the deadline; a later answer revises it


class RetrievalNote(Model):
    """A partner's retrieval request about this encounter and what was released."""

    retrieval_id: Id
    elements: list[Element]
    status: RetrievalStatus | None = Field(default=None, description="None until answered")
    released: list[Element] = Field(default_factory=list)
    reason_code: Reason | None = None
    answered_at: Timestamp | None = None


class PartnerOutcome(Model):
    partner: Code
    query_id: Id | None = Field(default=None, description="absent when skipped")
    status: OutcomeStatus
    candidates: list[Candidate] = Field(default_factory=list)
    conditions: list[Text] = Field(
        default_factory=list, max_length=50, description="conditions of use (§9)"
    )
    withheld: list[Element] = Field(default_factory=list)
    decided_by: DecidedBy | None = Field(
        default=None,
        description="who reached a match, no_match or declined answer (§8); absent while "
        "nothing was decided (pending, pending_review, skipped, timed_out) and on rejected",
    )
    reason_code: Reason | None = None
    reason: Text | None = None
    sent_at: Timestamp | None = Field(default=None, description="absent when skipped")
    answer_due: Timestamp | None = Field(
        default=None, description="when the outcome becomes timed_out without an answer"
    )
    answered_at: Timestamp | None = Field(
        default=None,
        description="when the partner sent this answer (a pending_review too: the final "
        "answer brings its own); absent while pending, skipped or timed_out",
    )
    corrected_at: Timestamp | None = Field(
        default=None, description="the provider corrected its answer (§23-24)"
    )
    retrievals: list[RetrievalNote] = Field(default_factory=list)


class EncounterResultStatus(StrEnum):
    refused = "refused"  # intake sent no query (§2-4); reason_code says why
    pending = "pending"  # some partner has not given a final answer yet
    complete = "complete"  # every partner gave a final answer


class EncounterResult(Message):
    """To the encounter system's ``reply_to``; ``correlation_id`` is its encounter id.

    One consolidated view per encounter, re-sent whole whenever a partner answers, a
    review is decided or a retrieval is answered: ``outcomes`` has every partner queried,
    ``revision`` grows with each update, so a reader keeps the highest and may ignore
    the others (they can arrive out of order after a retry).
    """

    KIND: ClassVar[str] = "encounter.result"

    encounter_id: Id
    requesting: Code
    status: EncounterResultStatus
    submission_id: Id | None = Field(
        default=None,
        description="message_id of the encounter.submit this answers: on a refusal, the "
        "refused message's own (a duplicate's refusal names the resubmission)",
    )
    revision: int = Field(default=0, ge=0)
    outcomes: list[PartnerOutcome] = Field(default_factory=list)
    reason_code: Reason | None = None
    reason: Text | None = None
    updated_at: Timestamp = Field(default_factory=utcnow)


# --- between the participants' audit workers (trust/checkpoints.py signs and checks) ----


class AuditCheckpoint(Message):
    """A participant's audit chain head, signed by it, for its partners to keep."""

    KIND: ClassVar[str] = "audit.checkpoint"

    participant: Code
    seq: int = Field(ge=0, description="the last entry's sequence number")
    entry_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="the last entry's hash")
    at: datetime
    key_id: Short
    signature: str = Field(max_length=128, description="Ed25519, base64, over the above")
