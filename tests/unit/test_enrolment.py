"""Enrolment of query and encounter data (§5, §21): what is kept, under which id, marked
with where it came from, and that every matcher can load it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack

from biox.queries.enrolment import enrolled_record_id, enrolment
from biox.sim import synth
from biox.wire.messages import Biographic, Biometrics, Encounter

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_enrolled_ids_are_stable_62_bit_hashes_above_every_bulk_id():
    """Persisted in the database and in every matcher's FAISS index: the scheme must not
    change between versions, or a redelivered query would enrol a second copy."""
    rid = enrolled_record_id("q-1")
    assert rid == 3937088525166925496
    assert rid == enrolled_record_id("q-1") != enrolled_record_id("q-2")
    assert (1 << 61) <= rid < (1 << 62)
    assert all((1 << 61) <= enrolled_record_id(f"k{i}") < (1 << 62) for i in range(200))


def test_an_enrolment_is_a_record_with_its_provenance_and_templates_that_load_back():
    bio = synth.capture(3, 42, context=1)
    biographic = Biographic(family_name="Cruz", date_of_birth="1980-01-02")
    encounter = Encounter(encountered_at=NOW - timedelta(days=1), country="mx")
    record, templates = enrolment(
        participant="us",
        key="q-7",
        biometrics=bio,
        biographic=biographic,
        encounter=encounter,
        person_centric_id="mx-pcn-7",
        source="mx",
        source_query_id="q-7",
        source_message_id="m-7",
        received_at=NOW,
        retain_until=NOW + timedelta(days=3650),
    )
    assert record.id == templates.record_id == enrolled_record_id("q-7")
    assert record.identity_ref == f"US-ENR-{record.id:016x}"
    assert record.person_centric_id == "mx-pcn-7"
    assert record.biographic == {"family_name": "Cruz", "date_of_birth": "1980-01-02"}
    assert record.encounters == [encounter.model_dump(mode="json", exclude_none=True)]
    assert record.encounters[0]["type"] == "border"
    assert record.derogatory == [] and record.releasable is True
    assert (record.source, record.source_query_id, record.source_message_id) == ("mx", "q-7", "m-7")
    assert record.received_at == NOW and record.retain_until == NOW + timedelta(days=3650)
    assert templates.enrolled_at == NOW
    loaded = Biometrics.model_validate(msgpack.unpackb(templates.biometrics))
    assert loaded == bio  # what a matcher's catch-up reads back, templates as bytes
