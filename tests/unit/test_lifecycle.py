"""Deletion, correction and blocking through provenance (agreement/corrections.py), table by table:
what each notice finds by query, by message and by record, what it changes, what it
leaves, and what it reports."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import select

from biox.agreement import corrections
from biox.agreement.ledgers import ErasureRow, Tombstone
from biox.database import session_for
from biox.store import (
    EnrolledTemplates,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    Transaction,
)
from biox.wire.notices import About

BIO = {"family_name": "Cruz", "given_names": "Ana", "document_number": "G1"}
AT = datetime(2026, 11, 20, tzinfo=UTC)


def answer(ref: str) -> dict:
    return {
        "status": "match",
        "candidates": [
            {
                "identity_ref": ref,
                "fused_score": 0.9,
                "record": {"identity_ref": ref, "biographic": dict(BIO)},
            },
            {"identity_ref": "NO-RECORD", "fused_score": 0.8},
        ],
    }


@pytest.fixture
def db(tmp_path) -> str:
    """At us: what mx sent (a query's enrolled data, an answer, a retrieval, a review case)
    and the same from sv, which no notice from mx may touch."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        for src, n in (("mx", 1), ("sv", 2)):
            s.add(
                Record(
                    id=n,
                    identity_ref=f"ENR-{n}",
                    source=src,
                    source_query_id=f"q-{n}",
                    source_message_id=f"m-{n}",
                    biographic=dict(BIO),
                )
            )
            s.add(EnrolledTemplates(record_id=n, biometrics=b"t"))
            s.add(
                Transaction(
                    query_id=f"a-{n}",
                    role="requester",
                    encounter_id=f"E-{n}",
                    requesting="us",
                    providing=src,
                    purpose="enforce",
                    status="match",
                    top_score=0.9,
                    conditions=["c"],
                    source=src,
                    source_message_id=f"r-{n}",
                    answer=answer(f"{src.upper()}-{n}"),
                    reason_code="x",
                )
            )
            s.add(
                RetrievalRow(
                    retrieval_id=f"rt-{n}",
                    role="asker",
                    query_id=f"q-{n}",
                    asker="us",
                    holder=src,
                    identity_ref="X",
                    status="released",
                    source=src,
                    source_message_id=f"rr-{n}",
                    conditions=["c"],
                    data={"identity_ref": "E", "biographic": dict(BIO)},
                )
            )
            s.add(
                ReviewCaseRow(
                    case_id=f"c-{n}",
                    query_id=f"q-{n}",
                    requesting=src,
                    purpose="enforce",
                    opened_at=AT,
                    source=src,
                    source_message_id=f"m-{n}",
                    probe_biographic=dict(BIO),
                )
            )
        s.add(
            Transaction(
                query_id="a-3",
                role="requester",
                encounter_id="E-3",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="pending",
            )
        )
        s.commit()
    return url


@pytest.mark.parametrize(
    "about",
    [About(query_ids=["q-1", "a-1"]), About(message_ids=["m-1", "r-1", "rr-1"])],
    ids=["by query", "by message"],
)
def test_a_deletion_reaches_every_copy_the_sender_gave_and_nothing_else(db, about):
    with session_for(db) as s:
        done = corrections.delete_from(s, "mx", about, "notice:n-1")
        s.commit()
        named = len(about.query_ids) + len(about.message_ids)
        assert done.counts == {
            "records": 1,
            "answers": 1,
            "retrievals": 1,
            "review_cases": 1,
            "erasures": named,
        }
        assert done.held
        assert done.encounters == {"E-1"}
        erased = {(e.source, e.kind, e.key, e.cause) for e in s.exec(select(ErasureRow))}
        assert erased == {
            ("mx", "query" if about.query_ids else "message", key, "notice:n-1")
            for key in [*about.query_ids, *about.message_ids]
        }
        assert [r.id for r in s.exec(select(Record))] == [2]
        assert [t.record_id for t in s.exec(select(EnrolledTemplates))] == [2]
        assert [(t.record_id, t.cause) for t in s.exec(select(Tombstone))] == [(1, "notice:n-1")]
        tx = s.get(Transaction, ("a-1", "requester"))
        assert (tx.status, tx.answer, tx.conditions, tx.top_score, tx.reason_code) == (
            "withdrawn",
            None,
            [],
            None,
            None,
        )
        rt = s.get(RetrievalRow, ("rt-1", "asker"))
        assert (rt.status, rt.data, rt.conditions) == ("withdrawn", None, [])
        assert [c.case_id for c in s.exec(select(ReviewCaseRow))] == ["c-2"]
        # sv's copies are untouched
        assert s.get(Transaction, ("a-2", "requester")).answer is not None
        assert s.get(RetrievalRow, ("rt-2", "asker")).data is not None


def test_a_deletion_by_record_reference_reaches_that_record_only(db):
    with session_for(db) as s:
        done = corrections.delete_from(s, "mx", About(identity_refs=["ENR-1"]), "notice:n")
        assert (done.counts, done.held) == ({"records": 1, "erasures": 1}, True)
        other = corrections.delete_from(s, "mx", About(identity_refs=["ENR-2"]), "n")
        assert (other.counts, other.held) == ({"erasures": 1}, False)


def test_a_deletion_by_the_providers_record_reference_reaches_its_answers(db):
    """Issue 20 (2): a notice naming the record an answer released (MX-1) takes that record
    out of the answer; the other candidate stays. Naming the last one withdraws it."""
    with session_for(db) as s:
        done = corrections.delete_from(s, "mx", About(identity_refs=["MX-1"]), "notice:n")
        assert done.counts == {"answer_records": 1, "erasures": 1}
        assert done.encounters == {"E-1"}
        tx = s.get(Transaction, ("a-1", "requester"))
        assert tx.status == "match"
        assert [c["identity_ref"] for c in tx.answer["candidates"]] == ["NO-RECORD"]
        assert tx.top_score == 0.8
        # sv's answer released SV-2: a notice from mx naming it finds nothing
        assert corrections.delete_from(s, "mx", About(identity_refs=["SV-2"]), "n").held is False
        assert s.get(Transaction, ("a-2", "requester")).answer is not None
        done = corrections.delete_from(s, "mx", About(identity_refs=["NO-RECORD"]), "n")
        assert done.counts == {"answers": 1, "erasures": 1}
        assert s.get(Transaction, ("a-1", "requester")).status == "withdrawn"


def test_one_notice_naming_queries_and_records_at_once_reaches_each_copy_by_any_of_them(db):
    about = About(query_ids=["q-1"], identity_refs=["MX-1", "NO-RECORD"])
    with session_for(db) as s:
        done = corrections.delete_from(s, "mx", about, "n")
        assert done.counts == {
            "records": 1,
            "answers": 1,
            "retrievals": 1,
            "review_cases": 1,
            "erasures": 3,
        }


def test_a_deletion_of_an_answer_not_yet_received_is_nothing_held_but_keeps_it_out(db):
    """Issue 20 (1): the pending query's answer was never held, so nothing is counted as
    deleted, but the query is withdrawn (final) and erased, so the answer is not kept when
    it arrives."""
    with session_for(db) as s:
        done = corrections.delete_from(s, "mx", About(query_ids=["a-3"]), "n")
        assert (done.counts, done.held, done.encounters) == ({"erasures": 1}, False, {"E-3"})
        assert s.get(Transaction, ("a-3", "requester")).status == "withdrawn"


def test_a_deletion_empties_the_stored_outgoing_messages_of_what_carried_the_data(db):
    """Issue 20 (1): the response worker's marker of mx's answer keeps the result it sent
    for a redelivery; after the deletion a redelivery republishes nothing."""
    with session_for(db) as s:
        for sender in ("mx", "sv"):
            s.add(
                ProcessedMessage(
                    consumer="us.response", message_id=f"{sender}/r-1", outputs=b"result"
                )
            )
        s.commit()
        done = corrections.delete_from(s, "mx", About(query_ids=["a-1"]), "n")
        s.commit()
        assert done.counts["stored_messages"] == 1
        mx = s.get(ProcessedMessage, ("us.response", "mx/r-1"))
        assert (mx.outputs, mx.published) == (b"", True)
        sv = s.get(ProcessedMessage, ("us.response", "sv/r-1"))
        assert (sv.outputs, sv.published) == (b"result", False)


def test_a_notice_about_nothing_the_sender_gave_changes_nothing(db):
    with session_for(db) as s:
        for about in (About(), About(query_ids=["q-2", "a-2"]), About(message_ids=["zz"])):
            deleted = corrections.delete_from(s, "mx", about, "n")
            assert deleted.held is False
            assert set(deleted.counts) <= {"erasures"}
            assert corrections.block_from(s, "mx", about, True).counts == {}
            assert corrections.correct_from(s, "mx", about, {"family_name": "X"}).counts == {}
        s.commit()
        assert len(s.exec(select(Record)).all()) == 2


def test_a_block_marks_each_copy_once_and_an_unblock_lifts_it(db):
    about = About(query_ids=["q-1", "a-1"])
    with session_for(db) as s:
        done = corrections.block_from(s, "mx", about, True)
        s.commit()
        assert done.counts == {"records": 1, "answers": 1, "retrievals": 1}
        assert done.encounters == {"E-1"}
        assert s.get(Record, 1).blocked_at is not None
        assert s.get(Transaction, ("a-1", "requester")).blocked_at is not None
        assert s.get(RetrievalRow, ("rt-1", "asker")).blocked_at is not None
        assert s.get(Record, 2).blocked_at is None
        assert corrections.block_from(s, "mx", about, True).counts == {}  # already blocked
        lifted = corrections.block_from(s, "mx", about, False)
        s.commit()
        assert lifted.counts == {"records": 1, "answers": 1, "retrievals": 1}
        assert s.get(Record, 1).blocked_at is None
        assert s.get(Transaction, ("a-1", "requester")).blocked_at is None
        assert corrections.block_from(s, "mx", about, False).counts == {}


def test_a_correction_replaces_and_removes_fields_in_every_copy(db):
    fix = {"family_name": "CRUZ", "document_number": None}
    want = {"family_name": "CRUZ", "given_names": "Ana"}
    with session_for(db) as s:
        done = corrections.correct_from(s, "mx", About(query_ids=["q-1", "a-1"]), fix)
        s.commit()
        assert done.counts == {"records": 1, "answers": 1, "retrievals": 1, "review_cases": 1}
        assert done.encounters == {"E-1"}
        rec = s.get(Record, 1)
        assert rec.biographic == want and rec.corrected_at is not None
        tx = s.get(Transaction, ("a-1", "requester"))
        first, second = tx.answer["candidates"]
        assert first["record"]["biographic"] == want and first["identity_ref"] == "MX-1"
        assert second == {"identity_ref": "NO-RECORD", "fused_score": 0.8}  # no record: as is
        assert tx.answer["status"] == "match" and tx.corrected_at is not None
        rt = s.get(RetrievalRow, ("rt-1", "asker"))
        assert rt.data == {"identity_ref": "E", "biographic": want}
        assert rt.corrected_at is not None
        assert s.get(ReviewCaseRow, "c-1").probe_biographic == want
        # sv's copies keep the old values
        assert s.get(Record, 2).biographic == BIO
        assert s.get(ReviewCaseRow, "c-2").probe_biographic == BIO


def test_a_correction_skips_an_answer_or_retrieval_that_holds_no_data(db):
    with session_for(db) as s:
        rt = s.get(RetrievalRow, ("rt-1", "asker"))
        rt.data = None
        s.add(rt)
        s.commit()
        done = corrections.correct_from(s, "mx", About(query_ids=["a-3", "q-1"]), {"sex": "F"})
        assert done.counts == {"records": 1, "review_cases": 1}
        assert s.get(Transaction, ("a-3", "requester")).corrected_at is None


def test_done_counts_only_what_happened():
    done = corrections.Done()
    done.add("records", 0)
    done.add("records", 2)
    done.add("records", 1)
    assert done.counts == {"records": 3}


def test_one_copy_already_in_the_wanted_state_does_not_stop_the_others(db):
    """A block naming a record blocked before and one that is not: the second is blocked;
    a correction naming a withdrawn answer first still corrects the next one."""
    with session_for(db) as s:
        s.add(
            Record(
                id=3, identity_ref="ENR-3", source="mx", source_query_id="q-3", biographic=dict(BIO)
            )
        )
        s.add(
            Transaction(
                query_id="a-0",
                role="requester",
                encounter_id="E-0",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="withdrawn",
                source="mx",
                answer=None,
            )
        )
        s.commit()
        corrections.block_from(s, "mx", About(query_ids=["q-1"]), True)
        s.commit()
        done = corrections.block_from(s, "mx", About(query_ids=["q-1", "q-3"]), True)
        assert done.counts == {"records": 1}
        assert s.get(Record, 3).blocked_at is not None
        fixed = corrections.correct_from(s, "mx", About(query_ids=["a-0", "a-1"]), {"sex": "F"})
        assert fixed.counts == {"answers": 1}
        tx = s.get(Transaction, ("a-1", "requester"))
        assert tx.answer["candidates"][0]["record"]["biographic"]["sex"] == "F"


def test_a_correction_removing_a_field_a_copy_never_had_changes_nothing_else(db):
    with session_for(db) as s:
        done = corrections.correct_from(s, "mx", About(query_ids=["q-1"]), {"place_of_birth": None})
        assert done.counts == {"records": 1, "retrievals": 1, "review_cases": 1}
        assert s.get(Record, 1).biographic == BIO


def test_an_addition_fills_what_a_copy_lacks_and_replaces_nothing(db):
    """§19(ii): mx adds a place of birth and a family name; the family name every copy
    already holds stays as it is."""
    with session_for(db) as s:
        about = About(query_ids=["q-1", "a-1"])
        done = corrections.correct_from(
            s, "mx", about, {"place_of_birth": "Quetzaltenango", "family_name": "X"}, True
        )
        assert done.counts == {"records": 1, "answers": 1, "retrievals": 1, "review_cases": 1}
        record = s.exec(select(Record).where(Record.id == 1)).one()
        assert record.biographic["place_of_birth"] == "Quetzaltenango"
        assert record.biographic["family_name"] == "Cruz"
