"""One column type for every time biox keeps (``store.UTCDateTime``): stored as naive
UTC, read back aware in UTC, compared in UTC whatever zone the other side is in."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlmodel import col, select

from biox.agreement.ledgers import IncidentRow
from biox.database import session_for
from biox.store import EncounterRow, ReviewCaseRow, Transaction, UTCDateTime, fresh
from biox.wire.fields import as_utc, utcnow

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MEXICO = timezone(timedelta(hours=-6))


def case(case_id: str, opened_at: datetime) -> ReviewCaseRow:
    return ReviewCaseRow(
        case_id=case_id,
        query_id=case_id,
        requesting="mx",
        purpose="enforce",
        source="mx",
        opened_at=opened_at,
    )


def test_a_time_is_read_back_aware_in_utc_whatever_zone_it_was_written_in(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(case("utc", AT))
        s.add(case("mexico", AT.astimezone(MEXICO)))  # 06:00 in Mexico City: the same instant
        s.add(case("naive", datetime(2026, 11, 22, 12, 0)))  # no zone: UTC, as biox writes
        s.commit()
    with session_for(url) as s:
        back = {c.case_id: c.opened_at for c in s.exec(select(ReviewCaseRow))}
    assert back == {"utc": AT, "mexico": AT, "naive": AT}
    assert {t.tzinfo for t in back.values()} == {UTC}
    assert {t.hour for t in back.values()} == {12}  # stored in UTC, not in the writer's zone


def test_a_query_compares_in_utc_whatever_zone_its_bound_is_in(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(case("c-1", AT))
        s.commit()
        for bound in (AT, AT.astimezone(MEXICO)):
            before = col(ReviewCaseRow.opened_at) < bound + timedelta(seconds=1)
            after = col(ReviewCaseRow.opened_at) < bound - timedelta(seconds=1)
            assert [c.case_id for c in s.exec(select(ReviewCaseRow).where(before))] == ["c-1"]
            assert list(s.exec(select(ReviewCaseRow).where(after))) == []


def test_the_agreements_tables_keep_times_the_same_way(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(
            IncidentRow(
                incident_id="i-1",
                summary="x",
                partners=["mx"],
                aware_at=AT.astimezone(MEXICO),
                opened_by="officer",
            )
        )
        s.commit()
    with session_for(url) as s:
        row = s.get(IncidentRow, "i-1")
    assert row is not None and row.aware_at == AT and row.aware_at.tzinfo is UTC


def test_a_time_from_outside_is_taken_as_utc_or_converted_to_it():
    assert as_utc(datetime(2026, 11, 22, 12, 0)) == AT
    assert as_utc(datetime(2026, 11, 22, 12, 0)).tzinfo is UTC
    converted = as_utc(AT.astimezone(MEXICO))
    assert converted == AT and converted.tzinfo is UTC and converted.hour == 12


def test_no_table_builds_its_defaults_from_a_builtin_factory():
    """sqlmodel asks pydantic for each default on every row it builds, and pydantic parses
    a builtin's signature from its text each time (``store.no_items``): a tenth of a worker's
    CPU on the hot path. Each row still gets a list of its own."""
    from sqlmodel import SQLModel

    import biox.database  # noqa: F401  (every table registered)

    builtin = [
        f"{model.__name__}.{name}"
        for mapper in SQLModel._sa_registry.mappers
        for model in [mapper.class_]
        for name, field in model.model_fields.items()
        if getattr(field.default_factory, "__text_signature__", None)
    ]
    assert builtin == []
    a, b = IncidentRow(incident_id="a"), IncidentRow(incident_id="b")
    a.partners.append("mx")
    assert b.partners == []


def test_a_fresh_row_is_the_row_its_constructor_makes_in_memory_and_in_the_database(tmp_path):
    """``store.fresh`` fills a new row's dictionary directly (the hot path's rows): the
    same fields and defaults as the constructor, the same row once committed, a list of
    its own, and a change after the INSERT written by the next flush as an UPDATE."""
    given = {
        "query_id": "q-1",
        "role": "provider",
        "encounter_id": "e-1",
        "requesting": "mx",
        "providing": "us",
        "purpose": "enforce",
        "created_at": AT,
        "retain_until": AT + timedelta(days=90),
    }
    built, made = Transaction(**given), fresh(Transaction, **given)
    assert made.model_dump() == built.model_dump()
    assert made.model_fields_set == built.model_fields_set == set(given)
    assert made.conditions == [] and made.conditions is not built.conditions
    before = utcnow()
    default = fresh(Transaction, **{k: v for k, v in given.items() if k != "created_at"})
    assert before <= default.created_at <= utcnow()  # its factory's, called for this row
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(made)
        s.add(fresh(EncounterRow, encounter_id="e-1", purpose="enforce", partners=["mx"]))
        s.commit()
        made.status = "match"  # persistent now: instrumented as any loaded row
        made.conditions = ["no onward disclosure"]
        s.commit()
    with session_for(url) as s:
        row = s.get(Transaction, ("q-1", "provider"))
        encounter = s.get(EncounterRow, "e-1")
    assert row is not None and encounter is not None
    assert row.model_dump() == {
        **built.model_dump(),
        "status": "match",
        "conditions": ["no onward disclosure"],
    }
    assert (encounter.partners, encounter.status, encounter.revision) == (["mx"], "pending", 0)


def test_a_fresh_row_refuses_what_the_constructor_would_drop_silently():
    with pytest.raises(TypeError, match=r"Transaction has no field \['queryid'\]"):
        fresh(Transaction, queryid="q", role="provider")
    with pytest.raises(TypeError, match=r"Transaction needs \['encounter_id'"):
        fresh(Transaction, query_id="q", role="provider")


def test_a_time_is_stored_in_utc_on_a_machine_whose_local_zone_is_not_utc(monkeypatch):
    """A server set to Mexico City's time still stores UTC: the column converts to UTC
    itself, not to whatever zone the machine runs in."""
    monkeypatch.setenv("TZ", "America/Mexico_City")
    time.tzset()
    try:
        stored = UTCDateTime().process_bind_param(AT.astimezone(MEXICO), sqlite.dialect())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert stored == datetime(2026, 11, 22, 12, 0)
