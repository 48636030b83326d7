from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from biox.database import every_participant, session_for
from biox.store import AuditEntry
from biox.trust import audit


def entries(n: int) -> list[dict[str, Any]]:
    """Rows as the audit worker builds them (``AuditHandler._entry``)."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        {
            "seq": 0,
            "received_at": t0 + timedelta(seconds=i),
            "direction": "out" if i % 2 else "in",
            "kind": "query",
            "sender_user": None,
            "sender": "us",
            "recipient": "mx",
            "message_id": f"m{i}",
            "correlation_id": f"q{i // 2}",
            "schema_id": None,
            "body_sha256": "ab" * 32,
            "provenance": "us",
            "actor": None,
            "reason": None,
            "command": None,
            "prev_hash": "",
            "entry_hash": "",
        }
        for i in range(n)
    ]


def chained(rows: list[dict[str, Any]], seq: int, prev: str) -> list[AuditEntry]:
    return [AuditEntry(**r) for r in audit.chain(rows, seq, prev)]


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with session_for(url) as s:
        s.add_all(chained(entries(10), 0, audit.GENESIS))
        s.commit()
    return url


def test_intact_chain_verifies(db):
    with session_for(db) as s:
        assert audit.verify(s) == (10, None)
        assert audit.head(s)[0] == 10


def test_chain_continues_from_the_head(db):
    with session_for(db) as s:
        seq, prev = audit.head(s)
        s.add_all(chained(entries(3), seq, prev))
        s.commit()
        assert audit.verify(s) == (13, None)


def test_an_altered_entry_is_named(db):
    with session_for(db) as s:
        e = s.get(AuditEntry, 5)
        e.recipient = "sv"
        s.commit()
        assert str(audit.verify(s)[1]) == "entry 5: altered"


def test_an_altered_and_rehashed_entry_is_named(db):
    with session_for(db) as s:
        e = s.get(AuditEntry, 5)
        e.recipient = "sv"
        e.entry_hash = audit.entry_hash(e)
        s.commit()
        assert audit.verify(s)[1] == audit.Break(5, "altered (and its hash recomputed)")


def test_a_removed_entry_is_named(db):
    with session_for(db) as s:
        s.delete(s.get(AuditEntry, 5))
        s.commit()
        assert audit.verify(s)[1] == audit.Break(5, "removed")


def test_a_removed_entry_is_named_even_after_renumbering(db):
    with session_for(db) as s:
        s.delete(s.get(AuditEntry, 5))
        s.commit()
        for seq in range(6, 11):
            s.get(AuditEntry, seq).seq = seq - 1
            s.commit()
        assert audit.verify(s)[1] == audit.Break(5, "removed")


def test_an_inserted_entry_is_named(db):
    with session_for(db) as s:
        for seq in range(10, 5, -1):  # make room after entry 5
            s.get(AuditEntry, seq).seq = seq + 1
            s.commit()
        forged = entries(1)[0]
        forged["message_id"] = "forged"
        s.add(chained([forged], 5, s.get(AuditEntry, 5).entry_hash)[0])
        s.commit()
        assert [e.seq for e in s.exec(select(AuditEntry).order_by(AuditEntry.seq))][:7] == list(
            range(1, 8)
        )
        assert audit.verify(s)[1] == audit.Break(6, "inserted")


@pytest.mark.parametrize(
    "field",
    [
        "received_at",
        "direction",
        "kind",
        "sender_user",
        "sender",
        "recipient",
        "message_id",
        "correlation_id",
        "schema_id",
        "body_sha256",
        "provenance",
        "actor",
    ],
)
def test_every_field_of_an_entry_is_covered_by_its_hash(db, field):
    """Changing any recorded fact of an entry (who acted, who sent, what body) is caught."""
    with session_for(db) as s:
        e = s.get(AuditEntry, 4)
        value = getattr(e, field)
        if isinstance(value, datetime):
            setattr(e, field, value + timedelta(microseconds=1))
        else:
            setattr(e, field, (value or "") + "x")
        s.commit()
        assert audit.verify(s)[1] == audit.Break(4, "altered")


def test_the_last_entry_is_checked_too(db):
    with session_for(db) as s:
        s.get(AuditEntry, 10).actor = "someone else"
        s.commit()
        assert audit.verify(s)[1] == audit.Break(10, "altered")


def test_the_first_entry_must_follow_the_genesis_hash(db):
    with session_for(db) as s:
        first = s.get(AuditEntry, 1)
        first.prev_hash = "f" * 64
        first.entry_hash = audit.entry_hash(first)
        s.commit()
        assert audit.verify(s)[1] == audit.Break(1, "altered (and its hash recomputed)")


def test_a_trail_holds_the_entries_of_the_ids_asked_for_in_order(db):
    with session_for(db) as s:
        got = audit.trail(s, ["q1", "q3"])
    assert [e.message_id for e in got] == ["m2", "m3", "m6", "m7"]


def test_an_empty_trail_starts_at_the_genesis(tmp_path):
    with session_for(f"sqlite:///{tmp_path / 'empty.db'}") as s:
        assert audit.head(s) == (0, audit.GENESIS)
        assert audit.verify(s) == (0, None)


def test_the_hash_of_an_entry_is_stable_across_versions():
    """Chains written by an older biox must verify with a newer one: the canonical form
    (sorted keys, compact separators, microsecond UTC times) is part of the format."""
    [e] = chained(entries(1), 0, audit.GENESIS)
    assert e.entry_hash == "4e395daa1ddeccd797468e04b6f4a1b7eedd9764494b4e9d7dc0b8a7488f1253"


def test_an_entry_inserted_right_after_the_first_is_named(db):
    with session_for(db) as s:
        for seq in range(10, 1, -1):
            s.get(AuditEntry, seq).seq = seq + 1
            s.commit()
        forged = entries(1)[0]
        forged["message_id"] = "forged"
        s.add(chained([forged], 1, s.get(AuditEntry, 1).entry_hash)[0])
        s.commit()
        assert audit.verify(s)[1] == audit.Break(2, "inserted")


def test_a_trail_across_participants_follows_the_query_and_its_encounter(tmp_path):
    from biox.settings import Settings
    from biox.store import Transaction

    settings = Settings(data_dir=tmp_path)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def entry(code: str, seconds: int, corr: str, mid: str) -> dict[str, Any]:
        e = entries(1)[0]
        e.update(received_at=t0 + timedelta(seconds=seconds), correlation_id=corr, message_id=mid)
        return e

    with session_for(settings.database_for("us")) as s:
        s.add(
            Transaction(
                query_id="q-9",
                role="requester",
                encounter_id="E-9",
                requesting="us",
                providing="mx",
                purpose="enforce",
            )
        )
        s.add_all(
            chained(
                [
                    entry("us", 0, "E-9", "submit"),
                    entry("us", 1, "q-9", "query"),
                    entry("us", 9, "q-other", "other"),
                ],
                0,
                audit.GENESIS,
            )
        )
        s.commit()
    with session_for(settings.database_for("mx")) as s:
        s.add_all(chained([entry("mx", 2, "q-9", "at-mx")], 0, audit.GENESIS))
        s.commit()
    with every_participant(settings) as sessions:
        rows = audit.trail_across(sessions, "q-9")
    assert [(code, e.message_id) for code, e in rows] == [
        ("us", "submit"),
        ("us", "query"),
        ("mx", "at-mx"),
    ]


def older_trail(path: Path, *statements: str) -> str:
    """A trail of three entries as an older biox left it: written, then ``statements``
    run on it with the engine closed, so that the next session upgrades it."""
    import sqlite3

    from biox.database import engine_for

    url = f"sqlite:///{path}"
    with session_for(url) as s:
        for e in chained(entries(3), 0, audit.GENESIS):
            s.add(e)
        s.commit()
    engine_for(url).dispose()
    engine_for.cache_clear()
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    return url


def test_a_database_from_before_the_reason_column_gets_it_and_keeps_its_chain(tmp_path):
    url = older_trail(tmp_path / "old.db", "ALTER TABLE audit_entries DROP COLUMN reason")
    with session_for(url) as s:
        assert audit.verify(s) == (3, None)
        assert s.get(AuditEntry, 1).reason is None


def test_a_database_from_before_hops_gets_the_column_and_its_unique_index(tmp_path):
    """The audit's idempotency is its entries' hops: an upgraded database must refuse a
    hop twice as a new one does, and keep its older entries (no hop) as they were."""
    from sqlalchemy.exc import IntegrityError

    url = older_trail(
        tmp_path / "old.db",
        "DROP INDEX ix_audit_entries_hop",
        "ALTER TABLE audit_entries DROP COLUMN hop",
    )
    with session_for(url) as s:
        assert audit.verify(s) == (3, None)
        assert audit.recorded(s, ["u|m|x|k|0"]) == set()
        seq, prev = audit.head(s)
        [row] = entries(1)
        [first] = audit.chain([{**row, "hop": "u|m|x|k|0"}], seq, prev)
        audit.append(s, [first])
        s.commit()
        assert audit.recorded(s, ["u|m|x|k|0", "u|m|x|k|1"]) == {"u|m|x|k|0"}
        [second] = audit.chain([{**row, "hop": "u|m|x|k|0"}], *audit.head(s))
        with pytest.raises(IntegrityError):
            audit.append(s, [second])
            s.commit()


def test_a_database_error_does_not_carry_the_values_it_was_given(tmp_path):
    """Names and document numbers reach the database as parameters; an error about the
    statement must not put them into a log line or a dead letter's headers."""
    from sqlalchemy.exc import IntegrityError

    from biox.store import Record

    url = f"sqlite:///{tmp_path / 'p.db'}"
    with session_for(url) as s:
        s.add(
            Record(id=1, identity_ref="MX-1", source="mx", biographic={"family_name": "Secretname"})
        )
        s.commit()
    with session_for(url) as s, pytest.raises(IntegrityError) as info:
        s.add(
            Record(id=1, identity_ref="MX-2", source="mx", biographic={"family_name": "Secretname"})
        )
        s.commit()
    assert "Secretname" not in str(info.value)
    assert "hidden" in str(info.value)
