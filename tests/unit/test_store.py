"""One column type for every time biox keeps (``store.UTCDateTime``): stored as naive
UTC, read back aware in UTC, compared in UTC whatever zone the other side is in. And how
rows reach the database: ``store.fresh``, a batch's rows as plain inserts
(``database.add_rows``), the tables created by racing workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError
from sqlmodel import col, select

from biox import database
from biox.agreement.ledgers import IncidentRow, ParticipantEvent, RefusalRow
from biox.database import add_rows, engine_for, session_for
from biox.store import (
    EncounterRow,
    ReviewCaseRow,
    ScatterRow,
    Transaction,
    UTCDateTime,
    fresh,
)
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


def batch_of_rows() -> list:
    """A consume loop's batch of new rows: the keys the same, or a None that a default,
    an autoincrement key or JSON's null must fill as the ORM would."""
    tx = {"encounter_id": "e-1", "requesting": "us", "providing": "mx", "purpose": "enforce"}
    refused = {"queue": "us.intake", "kind": "encounter.submit", "reason": "no_reply_to"}
    return [
        fresh(Transaction, query_id="q-1", role="requester", created_at=AT, **tx),
        fresh(Transaction, query_id="q-2", role="requester", created_at=AT, **tx),
        fresh(Transaction, query_id="q-3", role="provider", created_at=AT, status="match", **tx),
        fresh(EncounterRow, encounter_id="e-1", purpose="enforce", submitted_at=AT, revision=2),
        RefusalRow(message_id="m-1", answered=False, at=AT, **refused),
        RefusalRow(message_id="m-2", answered=True, at=AT, sender="mx", **refused),
        ParticipantEvent(code="mx", status="active", at=AT, cause="registry"),
        ScatterRow(key="us/m-1", query_id="q-1", shards=2, scattered_at=AT),
    ]


def test_a_batch_of_new_rows_written_as_plain_inserts_is_what_the_orm_writes(tmp_path):
    """``database.add_rows``: new rows as one INSERT per table and set of keys, the same
    bytes in every column as the ORM's flush writes (a None left out where a default or an
    autoincrement key fills it, JSON's null kept); a table whose version the ORM counts,
    and a row already added, through the session; the same object once."""
    by_orm, plain = (f"sqlite:///{tmp_path / name}" for name in ("orm.db", "plain.db"))
    with session_for(by_orm) as s:
        s.add_all(batch_of_rows())
        s.commit()
    inserts: list[str] = []
    event.listen(
        engine_for(plain),
        "before_cursor_execute",
        lambda _c, _cur, sql, *_: inserts.append(sql.split("(")[0].strip()),
    )
    with session_for(plain) as s:
        rows = batch_of_rows()
        added = fresh(Transaction, **{**rows[0].model_dump(), "query_id": "q-4"})
        s.add(added)  # a handler added it itself: the session writes it, once
        add_rows(s, [rows[0], *rows, added])  # the first twice: written once
        s.commit()
    # the counted table's row went through the session, which versions its later changes;
    # a plain insert leaves its object as it was, so a handler changes a row it loaded
    assert inspect(rows[-1]).has_identity and not inspect(rows[0]).has_identity
    tables = ("transactions", "encounters", "refusals", "participant_events", "scatters")
    with engine_for(by_orm).connect() as a, engine_for(plain).connect() as b:
        for table in tables:
            ordered = f"SELECT * FROM {table} ORDER BY 1, 2"
            want = a.execute(text(ordered)).all()
            got = b.execute(text(ordered)).all()
            if table == "transactions":
                got = [r for r in got if r[0] != "q-4"]
            assert got == want, table
        for c in (a, b):  # JSON's null where the ORM writes it, SQL's NULL elsewhere
            assert c.execute(text("SELECT answer FROM transactions")).first() == ("null",)
            assert c.execute(text("SELECT sender FROM refusals")).first() == (None,)
        assert b.execute(text("SELECT id FROM refusals ORDER BY id")).scalars().all() == [1, 2]
        assert b.execute(text("SELECT version FROM scatters")).scalar() == 1
        assert b.execute(text("SELECT revision FROM encounters")).scalar() == 2
    assert inserts.count("INSERT INTO transactions") == 3  # q-1 and q-2 together, q-3, q-4
    assert inserts.count("INSERT INTO refusals") == 2  # m-2 names its sender, m-1 does not
    assert inserts.count("INSERT INTO encounters") == 1


def test_a_loaded_row_changed_in_a_batch_is_written_as_an_update(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        add_rows(s, batch_of_rows())
        s.commit()
    with session_for(url) as s:
        tx = s.get(Transaction, ("q-1", "requester"))
        encounter = s.get(EncounterRow, "e-1")
        assert tx is not None and encounter is not None
        tx.status, encounter.status, encounter.revision = "match", "answered", 3
        add_rows(s, [tx, encounter, fresh(Transaction, **{**tx.model_dump(), "query_id": "q-9"})])
        s.commit()
    with session_for(url) as s:
        assert s.get(Transaction, ("q-1", "requester")).status == "match"  # type: ignore[union-attr]
        assert s.get(Transaction, ("q-9", "requester")).status == "match"  # type: ignore[union-attr]
        assert s.get(EncounterRow, "e-1").revision == 3  # type: ignore[union-attr]


def test_creating_the_tables_retries_a_lost_race_four_times_waiting_longer_each_time(
    tmp_path, monkeypatch
):
    """The workers of a participant race to create its tables on a first start
    (``database._create_tables``): a loser waits and tries again, four times at most."""
    waited: list[float] = []
    monkeypatch.setattr(database.time, "sleep", waited.append)
    engine = create_engine(f"sqlite:///{tmp_path / 'us.db'}")
    add_columns = database._add_new_columns

    def losing(times: int) -> Callable[[Any], None]:
        lost: list[int] = []

        def add(e: Any) -> None:
            if len(lost) < times:
                lost.append(1)
                raise OperationalError("CREATE TABLE", {}, Exception("database is locked"))
            add_columns(e)

        return add

    monkeypatch.setattr(database, "_add_new_columns", losing(4))
    database._create_tables(engine)
    assert waited == pytest.approx([0.2, 0.4, 0.6, 0.8])
    waited.clear()
    monkeypatch.setattr(database, "_add_new_columns", losing(5))
    with pytest.raises(OperationalError):
        database._create_tables(engine)
    assert waited == pytest.approx([0.2, 0.4, 0.6, 0.8])
