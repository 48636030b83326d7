"""The participant registry: who takes part and which purposes each pair agreed.

Loaded from a TOML file (``deploy/participants.toml``) so that a change of agreement
is a reviewed configuration change, not a code change.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from biox.config import read_toml


class Purpose(StrEnum):
    """The three purposes of §2 (a-c); nothing else may be queried for."""

    enforce = "enforce"
    investigate = "investigate"
    adjudicate = "adjudicate"


class Status(StrEnum):
    pending = "pending"
    active = "active"
    suspended = "suspended"
    discontinued = "discontinued"


Modality = Literal["fingerprints", "face", "iris"]


class Agreement(BaseModel):
    send: list[Purpose] = Field(default_factory=list)
    answer: list[Purpose] = Field(default_factory=list)
    #: §5a: what every query from this partner must carry (fingerprints, in the statement)
    query_requires: list[Modality] = Field(default_factory=list)


class Participant(BaseModel):
    code: str
    agency: str
    status: Status = Status.pending
    contacts: dict[str, str] = Field(default_factory=dict)
    agreements: dict[str, Agreement] = Field(default_factory=dict)
    #: its encounter systems, one broker identity and one set of reply queues each
    encounter_systems: list[str] = Field(default_factory=list)


class Registry(BaseModel):
    participants: dict[str, Participant]

    @classmethod
    def load(cls, path: Path) -> Registry:
        raw = read_toml(path, "BIOX_REGISTRY")
        parts = {
            code: Participant(code=code, **body)
            for code, body in raw.get("participants", {}).items()
        }
        return cls(participants=parts)

    @property
    def codes(self) -> list[str]:
        return sorted(self.participants)

    def get(self, code: str) -> Participant | None:
        return self.participants.get(code)

    def linked(self, code: str) -> list[str]:
        """The participants ``code`` exchanges anything with: those with an agreement with
        it, in either direction. Only these get a link (a shovel, a link user on each
        other's broker, docs/security.md); two without one have nothing to say."""
        me = self.participants.get(code)
        if me is None:
            return []
        return sorted(
            other
            for other, p in self.participants.items()
            if other != code and (other in me.agreements or code in p.agreements)
        )

    def partners_for(self, requester: str, purpose: Purpose) -> list[str]:
        """Partners a query for ``purpose`` goes to: both sides must have agreed it."""
        me = self.participants[requester]
        out = []
        for partner, agreement in sorted(me.agreements.items()):
            other = self.participants.get(partner)
            if other is None or purpose not in agreement.send:
                continue
            theirs = other.agreements.get(requester)
            if theirs and purpose in theirs.answer:
                out.append(partner)
        return out

    def required(self, provider: str, requester: str) -> list[Modality]:
        """The modalities ``provider`` requires in every query from ``requester`` (§5a)."""
        agreement = self.participants[provider].agreements.get(requester)
        return list(agreement.query_requires) if agreement is not None else []

    def answers(self, provider: str, requester: str, purpose: Purpose) -> bool:
        agreement = self.participants[provider].agreements.get(requester)
        return agreement is not None and purpose in agreement.answer
