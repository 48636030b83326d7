"""Who works for a participant and what each may do (§16: access on a need-to-know
basis; docs/security.md, "People and roles").

Each person has an identity of their own: the broker user ``<code>.operators.<person>``,
a certificate per person on the sovereign layout. ``BIOX_STAFF`` (``deploy/staff.toml``)
gives each person one or more duties; three things hold them to it:

* the CLI refuses a command none of the person's duties covers (``NEEDS``), before it
  reads or sends anything;
* the broker's permissions, generated from the same file (``broker.definitions``), refuse
  the messages a duty does not send, so a person who goes around the CLI is stopped there;
* ``biox qa`` names every audited read of personal data by someone whose duties did not
  cover it (``agreement.quality``), from the broker-validated user of the audit event.

The database is the administrators' alone: whoever can open it directly is outside what
the CLI enforces, and its host's access control is the boundary there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from biox.config import ConfigError, read_toml
from biox.wire.messages import RetrievalAsk, ReviewDecision
from biox.wire.notices import NoticeSend
from biox.wire.operations import (
    DeadLettersExported,
    DeadLettersImported,
    DeadLettersPurged,
    DeadLettersReplayed,
    PersonalDataRead,
    RetentionPurged,
)


class Duty(StrEnum):
    examiner = "examiner"
    privacy_officer = "privacy_officer"
    on_call = "on_call"
    administrator = "administrator"


_E, _P, _O, _A = Duty.examiner, Duty.privacy_officer, Duty.on_call, Duty.administrator

#: the CLI commands that read personal or biometric data or act on it, and the duties that
#: may run each (docs/security.md, "People and roles")
NEEDS: dict[str, frozenset[Duty]] = {
    "review next": frozenset({_E}),
    "retrieval request": frozenset({_E}),
    "records show": frozenset({_E, _P}),
    "records block": frozenset({_P}),
    "subject search": frozenset({_P}),
    "subject note": frozenset({_P}),
    "subject correct": frozenset({_P}),
    "notice send": frozenset({_P}),
    "notice list": frozenset({_P}),
    "participants ready": frozenset({_P}),
    "disclosure record": frozenset({_P}),
    "disclosure list": frozenset({_P}),
    "incident open": frozenset({_P, _O}),
    "incident notify": frozenset({_P}),
    "dlq list": frozenset({_O}),
    "dlq show": frozenset({_O}),
    "dlq replay": frozenset({_O}),
    "dlq purge": frozenset({_O}),
    "dlq export": frozenset({_O}),
    "dlq import": frozenset({_O}),
    "encounters show": frozenset({_O}),
    "encounters redeliver": frozenset({_O}),
    "gallery export": frozenset({_A}),
    "gallery remove": frozenset({_A}),
    "retention purge": frozenset({_A}),
}

_DLQ = frozenset(
    k.KIND
    for k in (DeadLettersReplayed, DeadLettersPurged, DeadLettersExported, DeadLettersImported)
)
#: the kinds each duty may publish to its own participant's inbox (every person also
#: publishes the record of their own reads, ``ops.read``): the broker's topic permissions
SENDS: dict[Duty, frozenset[str]] = {
    _E: frozenset({ReviewDecision.KIND, RetrievalAsk.KIND}),
    _P: frozenset({NoticeSend.KIND}),
    _O: _DLQ,
    _A: _DLQ | {RetentionPurged.KIND},
}
EVERYONE_SENDS = frozenset({PersonalDataRead.KIND})
#: duties that read the participant's own queues (dead letters, held results) and send
#: held results on; the others read nothing on the broker
READS_QUEUES = frozenset({_O, _A})

#: what a person's broker user is called: ``us.operators.ana``
OPERATORS = "operators"
_PERSON = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class StaffError(ConfigError):
    """A staff file that cannot be read or does not add up, said in one line."""


def operator_user(code: str, person: str) -> str:
    return f"{code}.{OPERATORS}.{person}"


def person_of(user_id: str | None) -> tuple[str, str] | None:
    """``us.operators.ana`` -> (``us``, ``ana``); None for any other user."""
    parts = (user_id or "").split(".", 2)
    if len(parts) == 3 and parts[1] == OPERATORS and _PERSON.match(parts[2]):
        return parts[0], parts[2]
    return None


@dataclass(frozen=True)
class Staff:
    #: participant -> person -> duties
    people: dict[str, dict[str, frozenset[Duty]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Staff:
        try:
            raw = read_toml(path, "BIOX_STAFF")
        except ConfigError as e:
            raise StaffError(str(e)) from None
        people: dict[str, dict[str, frozenset[Duty]]] = {}
        for code, persons in raw.items():
            if not isinstance(persons, dict):
                raise StaffError(f"{path}: [{code}] must list people = [duties]")
            people[code] = {}
            for person, duties in persons.items():
                if not _PERSON.match(person):
                    raise StaffError(f"{path}: {code}.{person}: a name is [a-z][a-z0-9_-]*")
                try:
                    people[code][person] = frozenset(Duty(d) for d in duties)
                except (ValueError, TypeError):
                    known = ", ".join(Duty)
                    raise StaffError(f"{path}: {code}.{person}: duties are among {known}") from None
        return cls(people)

    def of(self, code: str) -> dict[str, frozenset[Duty]]:
        return self.people.get(code, {})

    def duties(self, code: str, person: str) -> frozenset[Duty]:
        return self.of(code).get(person, frozenset())

    def refusal(self, code: str, person: str, command: str) -> str | None:
        """Why ``person`` of ``code`` may not run ``command``; None when they may."""
        needed = NEEDS.get(command)
        if needed is None:
            return None
        if person not in self.of(code):
            return f"{person} is not on {code}'s staff (BIOX_STAFF)"
        if self.duties(code, person) & needed:
            return None
        held = ", ".join(sorted(self.duties(code, person))) or "none"
        return f"{command} needs {' or '.join(sorted(needed))}; {person} holds {held}"
