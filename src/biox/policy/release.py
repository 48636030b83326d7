"""Each participant's own rules: what it releases (§7, §9), what query data it enrols and
keeps (§21), and when it asks for more (§10).

Read from ``deploy/policy.toml`` beside the registry: the registry says what two
participants agreed, this file says what one of them decided under its own law. A
participant's workers read only its own section.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from biox.config import read_toml
from biox.registry import Purpose
from biox.wire.errors import Reason
from biox.wire.messages import (
    Biographic,
    Element,
    EncounterRecord,
    ReleasedRecord,
)

ANY = "*"


class ReleaseRule(BaseModel):
    """Release ``elements`` to ``to`` for ``purposes``, with ``conditions`` of use attached.

    Rules are read top to bottom and the first that names the requester and purpose wins,
    like a firewall: put the narrow rules first. An empty ``elements`` is a decline.
    """

    to: list[str] = Field(default_factory=lambda: [ANY])
    purposes: list[str] = Field(default_factory=lambda: [ANY])
    elements: list[Element] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)
    biographic: list[str] | None = Field(
        default=None,
        description="the biographic fields released (§19(i)); unset: every field",
    )
    max_records: int = Field(
        default=1, ge=1, le=10, description="records one match may release (§7, §19(i))"
    )

    @field_validator("biographic")
    @classmethod
    def _known_fields(cls, fields: list[str] | None) -> list[str] | None:
        return _biographic_fields(fields) if fields is not None else None

    def covers(self, requester: str, purpose: Purpose) -> bool:
        return (ANY in self.to or requester in self.to) and (
            ANY in self.purposes or purpose.value in self.purposes
        )


BIOGRAPHIC_FIELDS = tuple(Biographic.model_fields)


def _biographic_fields(fields: list[str]) -> list[str]:
    unknown = sorted(set(fields) - set(BIOGRAPHIC_FIELDS))
    if unknown:
        raise ValueError(f"not biographic fields: {unknown}; known: {BIOGRAPHIC_FIELDS}")
    return fields


class SendRule(BaseModel):
    """Which biographic fields of one's own data go to ``to`` for ``purposes`` (§19(i):
    only what is relevant): in a query, and in a retrieval response. First rule naming
    the partner and purpose wins; no rule: none (the minimum, not everything)."""

    to: list[str] = Field(default_factory=lambda: [ANY])
    purposes: list[str] = Field(default_factory=lambda: [ANY])
    biographic: list[str] = Field(default_factory=list)

    @field_validator("biographic")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        return _biographic_fields(fields)

    def covers(self, partner: str, purpose: Purpose) -> bool:
        return (ANY in self.to or partner in self.to) and (
            ANY in self.purposes or purpose.value in self.purposes
        )


class RetrievalRule(BaseModel):
    """When to send a retrieval request on one's own after a match (§10)."""

    on: Literal["never", "derogatory", "every_match"] = "never"
    elements: list[Element] = Field(default_factory=list)


class ParticipantPolicy(BaseModel):
    release: list[ReleaseRule] = Field(default_factory=list)
    enrol: dict[str, list[Purpose]] = Field(
        default_factory=dict, description="requester → purposes whose query data is enrolled"
    )
    enrolled_retention_days: int = Field(default=365, ge=1)
    received_retention_days: int = Field(default=365, ge=1)
    encounter_retention_days: int = Field(
        default=365, ge=1, description="own encounter systems' submissions (the retrieval store)"
    )
    discontinued_retention_days: int | None = Field(
        default=None,
        ge=0,
        description="after a partner discontinues (§36), keep what it sent at most this long",
    )
    retrieval: RetrievalRule = Field(default_factory=RetrievalRule)
    send: list[SendRule] = Field(default_factory=list)
    conceal_record_declines: bool = Field(
        default=True,
        description=(
            "a decline because of the record found (§6a, §9, §23) goes as a no-match: "
            "the requester cannot tell that a record exists"
        ),
    )

    def minimised(self, partner: str, purpose: Purpose, biographic: Biographic) -> Biographic:
        """The biographic data of one's own that goes to ``partner`` for ``purpose``
        (§19(i)): what the first send rule naming them lists; without one, nothing."""
        keep = set(self.sent_fields(partner, purpose))
        return biographic.model_copy(update={f: None for f in BIOGRAPHIC_FIELDS if f not in keep})

    def sent_fields(self, partner: str, purpose: Purpose) -> tuple[str, ...]:
        """The biographic fields the first send rule naming ``partner`` and ``purpose``
        lists; none without one."""
        rule = next((r for r in self.send if r.covers(partner, purpose)), None)
        return tuple(rule.biographic) if rule is not None else ()

    def release_for(self, requester: str, purpose: Purpose) -> Release | Reason:
        for rule in self.release:
            if rule.covers(requester, purpose):
                if not rule.elements:
                    return Reason.release_not_agreed
                elements = [e for e in Element if e in rule.elements]
                withheld = [e for e in Element if e not in rule.elements]
                fields = tuple(
                    rule.biographic if rule.biographic is not None else BIOGRAPHIC_FIELDS
                )
                return Release(elements, list(rule.conditions), withheld, fields, rule.max_records)
        return Reason.release_not_agreed

    def enrols(self, requester: str, purpose: Purpose) -> bool:
        return purpose in self.enrol.get(requester, [])

    def enrolled_until(self, now: datetime) -> datetime:
        return now + timedelta(days=self.enrolled_retention_days)

    def received_until(self, now: datetime) -> datetime:
        return now + timedelta(days=self.received_retention_days)

    def encounter_until(self, now: datetime) -> datetime:
        return now + timedelta(days=self.encounter_retention_days)

    def asks_after(self, derogatory: bool) -> list[Element]:
        """Elements the automatic rule asks for after a match, or none."""
        rule = self.retrieval
        if rule.on == "every_match" or (rule.on == "derogatory" and derogatory):
            return list(rule.elements)
        return []


@dataclass(frozen=True)
class Release:
    elements: list[Element]
    conditions: list[str]
    withheld: list[Element]
    #: the biographic fields released, when ``biographic`` is among the elements
    fields: tuple[str, ...] = BIOGRAPHIC_FIELDS
    #: how many records one match may release
    max_records: int = 1

    def limit(self, asked: list[Element]) -> Release:
        """What of ``asked`` this release allows (a retrieval asks for some elements)."""
        return Release(
            [e for e in self.elements if e in asked],
            self.conditions,
            [e for e in asked if e not in self.elements],
            self.fields,
            self.max_records,
        )

    def narrowed(self, fields: Iterable[str]) -> Release:
        """The same release with only those of its biographic fields also in ``fields``."""
        keep = set(fields)
        return replace(self, fields=tuple(f for f in self.fields if f in keep))


class Policies(BaseModel):
    participants: dict[str, ParticipantPolicy]

    @classmethod
    def load(cls, path: Path) -> Policies:
        raw: dict[str, Any] = read_toml(path, "BIOX_POLICY")
        return cls(participants={code: ParticipantPolicy(**body) for code, body in raw.items()})

    def of(self, code: str) -> ParticipantPolicy:
        """A participant without a section releases nothing and enrols nothing."""
        return self.participants.get(code, ParticipantPolicy())


def released_record(
    identity_ref: str,
    person_centric_id: str | None,
    biographic: dict[str, Any],
    encounters: list[dict[str, Any]],
    derogatory: list[str],
    release: Release,
) -> ReleasedRecord:
    """The elements of a record that ``release`` allows, and nothing else: a provider's
    gallery record in a response, a requester's encounter in a retrieval response."""
    allowed = set(release.elements)
    return ReleasedRecord(
        identity_ref=identity_ref,
        person_centric_id=person_centric_id if Element.reference in allowed else None,
        biographic=(
            Biographic.model_validate({k: v for k, v in biographic.items() if k in release.fields})
            if Element.biographic in allowed and biographic
            else None
        ),
        encounters=(
            [EncounterRecord.model_validate(e) for e in encounters]
            if Element.encounters in allowed
            else []
        ),
        derogatory=list(derogatory) if Element.derogatory in allowed else [],
    )
