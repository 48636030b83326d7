"""Message models: one per message kind, each with a schema version.

These models are the contract. ``schemas/`` is generated from them and an integrator in
another language reads only that. Templates are raw bytes (float32 little-endian vectors,
packed bit strings) and travel as msgpack ``bin``; times are msgpack timestamps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from biox.errors import Reason
from biox.registry import Purpose

Code = Annotated[str, Field(pattern=r"^[a-z]{2}$", description="ISO 3166 alpha-2, lowercase")]
Id = Annotated[str, Field(min_length=1, max_length=128)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False)


class Message(Model):
    """A body that travels on its own: it has a kind and a schema version."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def schema_id(cls) -> str:
        return f"{cls.KIND}/{cls.VERSION}"


# --- biometrics -------------------------------------------------------------------------


class Fingerprint(Model):
    position: int = Field(ge=1, le=10, description="ANSI/NIST finger position 1-10")
    algorithm: str
    template: bytes = Field(description="float32 little-endian feature vector")
    quality: int = Field(default=50, ge=0, le=100)


class Face(Model):
    algorithm: str
    template: bytes = Field(description="float32 little-endian feature vector")
    quality: int = Field(default=50, ge=0, le=100)


class Iris(Model):
    eye: Literal["left", "right"]
    algorithm: str
    code: bytes = Field(description="packed iris code bits, row-major (radial x angular)")
    mask: bytes = Field(description="packed validity mask, same layout as code")


class Biometrics(Model):
    fingerprints: list[Fingerprint] = Field(default_factory=list, max_length=10)
    face: Face | None = None
    irises: list[Iris] = Field(default_factory=list, max_length=2)

    def is_empty(self) -> bool:
        return not self.fingerprints and self.face is None and not self.irises


# --- who, where, when ---------------------------------------------------------------------


class Biographic(Model):
    family_name: str | None = None
    given_names: str | None = None
    date_of_birth: str | None = Field(default=None, description="ISO 8601 date, may be partial")
    sex: Literal["F", "M", "X"] | None = None
    claimed_nationality: str | None = Field(default=None, description="ISO 3166 alpha-2")
    place_of_birth: str | None = None
    document_number: str | None = None


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
    encountered_at: datetime
    country: Code
    location: str | None = None
    type: EncounterType = EncounterType.border


class References(Model):
    transaction_id: Id
    encounter_id: Id
    person_centric_id: str | None = None


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
    person_centric_id: str | None = None
    enroll: bool = Field(default=False, description="also enrol in the local gallery")


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
    created_at: datetime
    sent_at: datetime


class ResponseStatus(StrEnum):
    match = "match"
    no_match = "no_match"
    declined = "declined"
    rejected = "rejected"


class EncounterRecord(Model):
    encountered_at: datetime
    country: Code
    type: EncounterType
    location: str | None = None


class ReleasedRecord(Model):
    """The elements of §7 the provider chose to release for this purpose."""

    identity_ref: Id
    person_centric_id: str | None = None
    biographic: Biographic | None = None
    encounters: list[EncounterRecord] = Field(default_factory=list)
    derogatory: list[str] = Field(default_factory=list)


class Candidate(Model):
    identity_ref: Id
    fused_score: float
    scores: dict[str, float] = Field(description="normalised per-modality scores in [0, 1]")
    record: ReleasedRecord | None = None


class Timings(Model):
    received_at: datetime
    answered_at: datetime
    search_ms: float = 0.0


class Response(Message):
    """Providing → requesting participant (§6-9)."""

    KIND: ClassVar[str] = "response"

    query_id: Id
    requesting: Code
    providing: Code
    status: ResponseStatus
    candidates: list[Candidate] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list, description="conditions of use (§9)")
    reason_code: Reason | None = None
    reason: str | None = None
    timings: Timings


class PartnerOutcome(Model):
    partner: Code
    query_id: Id
    status: ResponseStatus
    candidates: list[Candidate] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)
    reason_code: Reason | None = None
    reason: str | None = None
    sent_at: datetime | None = None
    answered_at: datetime | None = None


class EncounterResultStatus(StrEnum):
    refused = "refused"
    answered = "answered"


class EncounterResult(Message):
    """To the encounter system's ``reply_to``; ``correlation_id`` is its encounter id.

    ``refused``: intake sent no query (eligibility, §2-4) and says why. ``answered``: one
    partner answered; ``outcome`` carries it and ``partners`` lists every partner queried,
    so the encounter system knows how many answers to expect.
    """

    KIND: ClassVar[str] = "encounter.result"

    encounter_id: Id
    requesting: Code
    status: EncounterResultStatus
    partners: list[Code] = Field(default_factory=list)
    outcome: PartnerOutcome | None = None
    reason_code: Reason | None = None
    reason: str | None = None


CATALOGUE: dict[str, type[Message]] = {
    m.KIND: m for m in (EncounterSubmit, Query, Response, EncounterResult)
}
