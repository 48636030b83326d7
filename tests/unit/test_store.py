"""One column type for every time biox keeps (``store.UTCDateTime``): stored as naive
UTC, read back aware in UTC, compared in UTC whatever zone the other side is in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlmodel import col, select

from biox.agreement.ledgers import IncidentRow
from biox.database import session_for
from biox.store import ReviewCaseRow
from biox.wire.fields import as_utc

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
