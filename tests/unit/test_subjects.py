"""Subject requests (§25): a search across every table, with provenance and notations."""

from __future__ import annotations

from datetime import UTC, datetime

from biox.agreement import subjects
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
