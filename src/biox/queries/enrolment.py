"""Enrolment of encounter and query data into a participant's gallery (§5, §21).

Two paths lead here: the provider's matcher keeps a partner's query data when its policy
says so, and intake keeps its own encounter system's submission when that asks for it
(``enroll``). Both write the same two rows, in the same transaction as the rest of the
handler's effect: the identity record, stamped with where the data came from and until
when it is kept, and the templates, which every matcher of the participant picks up
(``MatcherHandler.catch_up``); the FAISS files on disk stay the bulk snapshot.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgpack

from biox.store import EnrolledTemplates, Record
from biox.wire.messages import Biographic, Biometrics, Encounter


def enrolled_record_id(key: str) -> int:
    """Gallery id of enrolled data: 62 bits of a hash of what it came with (the query
    or encounter id), so a redelivery enrols under the same id, far above the dense ids
    of bulk enrolment."""
    return (uuid.uuid5(uuid.NAMESPACE_URL, f"biox-enrolment/{key}").int >> 66) | (1 << 61)


def enrolment(
    *,
    participant: str,
    key: str,
    biometrics: Biometrics,
    biographic: Biographic,
    encounter: Encounter,
    person_centric_id: str | None,
    source: str,
    source_query_id: str | None,
    source_message_id: str,
    received_at: datetime,
    retain_until: datetime,
) -> tuple[Record, EnrolledTemplates]:
    record_id = enrolled_record_id(key)
    record = Record(
        id=record_id,
        identity_ref=f"{participant.upper()}-ENR-{record_id:016x}",
        person_centric_id=person_centric_id,
        biographic=biographic.model_dump(mode="json", exclude_none=True),
        encounters=[encounter.model_dump(mode="json", exclude_none=True)],
        derogatory=[],
        releasable=True,
        source=source,
        source_query_id=source_query_id,
        source_message_id=source_message_id,
        received_at=received_at,
        retain_until=retain_until,
    )
    templates = EnrolledTemplates(
        record_id=record_id,
        biometrics=msgpack.packb(biometrics.model_dump(mode="python"), use_bin_type=True),
        enrolled_at=received_at,
    )
    return record, templates
