"""Subject requests (§25): a search across every table, with provenance and notations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from biox.agreement import subjects
from biox.agreement.ledgers import NotationRow
from biox.database import session_for
from biox.store import EncounterRow, Record, RetrievalRow, ReviewCaseRow, Transaction

ANA = {
    "family_name": "Cruz",
    "given_names": "Ana María",
    "date_of_birth": "1990-05-01",
    "document_number": "G123",
}
OTHER = {"family_name": "Ruiz", "given_names": "Juan", "date_of_birth": "1985-01-02"}


def kept(url: str) -> None:
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="US-1", source="us", biographic=ANA))
        s.add(
            Record(
                id=2,
                identity_ref="US-ENR-2",
                source="mx",
                biographic=ANA,
                blocked_at=datetime.now(UTC),
            )
        )
        s.add(Record(id=3, identity_ref="US-3", source="us", biographic=OTHER))
        s.add(EncounterRow(encounter_id="E-1", purpose="enforce", biographic=ANA))
        s.add(
            ReviewCaseRow(
                case_id="c-1",
                query_id="q-9",
                requesting="mx",
                purpose="enforce",
                opened_at=datetime.now(UTC),
                source="mx",
                probe_biographic=ANA,
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="r-1",
                role="asker",
                query_id="q-8",
                asker="us",
                holder="sv",
                identity_ref="SV-1",
                source="sv",
                data={"identity_ref": "E-sv", "biographic": ANA},
            )
        )
        s.add(
            Transaction(
                query_id="q-7",
                role="requester",
                encounter_id="E-1",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                source="mx",
                answer={"candidates": [{"identity_ref": "MX-5", "record": {"biographic": ANA}}]},
            )
        )
        s.commit()


def test_a_search_by_name_finds_every_copy_with_where_it_came_from(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    kept(url)
    with session_for(url) as s:
        found = subjects.search(s, subjects.Terms(name="maría"))
    assert sorted((f.table, f.key, f.source) for f in found) == [
        ("encounters", "E-1", None),
        ("records", "US-1", "us"),
        ("records", "US-ENR-2", "mx"),
        ("retrievals", "r-1", "sv"),
        ("review_cases", "c-1", "mx"),
        ("transactions", "q-7/MX-5", "mx"),
    ]
    assert [f.blocked for f in found if f.key == "US-ENR-2"] == [True]


def test_each_term_narrows_the_search(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    kept(url)
    with session_for(url) as s:
        by_dob = subjects.search(s, subjects.Terms(date_of_birth="1985"))
        assert [(f.table, f.key) for f in by_dob] == [("records", "US-3")]
        by_document = subjects.search(s, subjects.Terms(document="G123", name="cruz"))
        assert len(by_document) == 6
        assert subjects.search(s, subjects.Terms(document="G12")) == []  # exact, not a prefix
        by_ref = subjects.search(s, subjects.Terms(ref="US-3"))
        assert [(f.table, f.key) for f in by_ref] == [("records", "US-3")]
        assert subjects.search(s, subjects.Terms()) == []  # nothing asked, nothing shown


def test_a_notation_is_shown_with_the_row_it_is_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    kept(url)
    with session_for(url) as s:
        subjects.note(s, "records", "US-1", "subject asked for access", "officer-7")
        s.commit()
        [row] = [f for f in subjects.search(s, subjects.Terms(ref="US-1"))]
    assert len(row.notes) == 1 and row.notes[0].endswith("officer-7: subject asked for access")


# --- every table, every field of what is shown (the mutation run reads these) ------------

CRUZ = {"family_name": "Cruz", "given_names": "Ana", "date_of_birth": "1990-05-04"}


def _every_table(url: str) -> datetime:

    until = datetime(2030, 1, 1, tzinfo=UTC)
    blocked = datetime(2026, 11, 1, tzinfo=UTC)
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="R-1", source="mx", biographic=CRUZ, retain_until=until))
        s.add(
            EncounterRow(encounter_id="E-1", purpose="enforce", biographic=CRUZ, retain_until=until)
        )
        s.add(
            ReviewCaseRow(
                case_id="C-1",
                query_id="Q-C",
                requesting="mx",
                purpose="enforce",
                opened_at=until,
                source="mx",
                probe_biographic=CRUZ,
                retain_until=until,
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="RT-1",
                role="asker",
                query_id="Q-R",
                asker="us",
                holder="sv",
                identity_ref="US-7",
                source="sv",
                data={"identity_ref": "SV-E-1", "biographic": CRUZ},
                retain_until=until,
                blocked_at=blocked,
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="RT-2",
                role="asker",
                query_id="Q-S",
                asker="us",
                holder="sv",
                identity_ref="US-8",
            )
        )
        s.add(
            Transaction(
                query_id="Q-T",
                role="requester",
                encounter_id="E-9",
                requesting="us",
                providing="mx",
                purpose="enforce",
                source="mx",
                retain_until=until,
                blocked_at=blocked,
                answer={"candidates": [{"identity_ref": "MX-5", "record": {"biographic": CRUZ}}]},
            )
        )
        s.add(NotationRow(table="retrievals", key="RT-1", text="asked", by="po", at=until))
        s.commit()
    return until


def test_a_search_shows_each_table_with_its_source_retention_block_and_notes(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    until = _every_table(url)
    with session_for(url) as s:
        found = subjects.search(s, subjects.Terms(name="cruz"))
    shown = [
        (f.table, f.key, f.source, f.biographic, f.retain_until, f.blocked, f.notes) for f in found
    ]
    assert shown == [
        ("records", "R-1", "mx", CRUZ, until, False, []),
        ("encounters", "E-1", None, CRUZ, until, False, []),
        ("review_cases", "C-1", "mx", CRUZ, until, False, []),
        ("retrievals", "RT-1", "sv", CRUZ, until, True, ["2030-01-01 po: asked"]),
        ("transactions", "Q-T/MX-5", "mx", CRUZ, until, True, []),
    ]


@pytest.mark.parametrize(
    ("ref", "table"),
    [
        ("R-1", "records"),
        ("E-1", "encounters"),
        ("C-1", "review_cases"),
        ("Q-C", "review_cases"),
        ("US-7", "retrievals"),
        ("Q-R", "retrievals"),
        ("SV-E-1", "retrievals"),
        ("MX-5", "transactions"),
        ("Q-T", "transactions"),
        ("E-9", "transactions"),
    ],
)
def test_a_search_by_reference_finds_the_row_by_each_of_its_references(tmp_path, ref, table):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    _every_table(url)
    with session_for(url) as s:
        found = subjects.search(s, subjects.Terms(ref=ref))
    assert [f.table for f in found] == [table]


def test_a_read_event_holds_a_digest_of_the_terms_and_the_count_never_the_terms():
    import hashlib
    import json

    import msgpack

    out = subjects.read_event("us", "subject search", {"name": "cruz"}, 3, "pat")
    body = msgpack.unpackb(out.body, raw=False)
    digest = hashlib.sha256(json.dumps({"name": "cruz"}, sort_keys=True).encode()).hexdigest()
    assert (body["command"], body["terms_sha256"], body["shown"]) == ("subject search", digest, 3)
    assert out.envelope.kind == "ops.read" and out.envelope.sender == "us"
    assert out.envelope.message_id == out.envelope.correlation_id
    assert out.envelope.headers["biox-actor"] == "pat"
