"""Disclosures outside the exchange (§14-15): partner data only with a consent or a notice
bound to the records, the recipient and the purpose (issue 20 (4))."""

from __future__ import annotations

import pytest

from biox.agreement import disclosures, quality
from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.database import session_for
from biox.store import Record, RetrievalRow, Transaction
from biox.wire.messages import utcnow


def notice(nid: str, type: str, partner: str, status: str, **details: object) -> NoticeRow:
    refs = details.pop("refs", ["MX-2"])
    return NoticeRow(
        notice_id=nid,
        direction="out",
        type=type,
        partner=partner,
        sent_at=utcnow(),
        status=status,
        about={"query_ids": [], "message_ids": [], "identity_refs": refs},
        details={"disclose_to": "INTERPOL", **details},
    )


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="US-1", source="us"))
        s.add(Record(id=2, identity_ref="MX-2", source="mx", source_query_id="q-2"))
        s.add(Record(id=3, identity_ref="MX-3", source="mx", source_query_id="q-3"))
        s.add(notice("n-yes", "consent_request", "mx", "answered", consent=True))
        s.add(notice("n-no", "consent_request", "mx", "answered", consent=False))
        s.add(notice("n-wait", "consent_request", "mx", "sent", consent=None))
        s.add(notice("n-sv", "consent_request", "sv", "answered", consent=True))
        s.add(
            notice(
                "n-purpose",
                "consent_request",
                "mx",
                "answered",
                consent=True,
                disclose_purpose="extradition file 7",
            )
        )
        s.add(notice("n-court", "compelled_disclosure", "mx", "sent", disclose_to="a court"))
        # an answer mx gave to one of our queries, releasing MX-9; and a retrieval's data
        s.add(
            Transaction(
                query_id="a-9",
                role="requester",
                encounter_id="E-9",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                source="mx",
                answer={"status": "match", "candidates": [{"identity_ref": "MX-9"}]},
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="r-1",
                role="asker",
                query_id="q-4",
                asker="us",
                holder="sv",
                identity_ref="US-4",
                source="sv",
                data={"identity_ref": "SV-E-4"},
            )
        )
        s.commit()
    return url


def test_own_data_needs_no_consent(db):
    with session_for(db) as s:
        row = disclosures.record(s, "us", "US-1", "US District Court", "consent", "officer")
    assert (row.basis, row.notice_id) == ("own_data", None)


@pytest.mark.parametrize(
    ("notice_id", "why"),
    [
        (None, "no consent request"),
        ("n-no", "not consented"),
        ("n-wait", "not consented"),
        ("n-sv", "went to sv"),
        ("n-court", "no consent request"),  # a compelled notice is no consent
    ],
)
def test_partner_data_needs_that_partners_yes(db, notice_id, why):
    with session_for(db) as s, pytest.raises(disclosures.NotAllowed, match=why):
        disclosures.record(s, "us", "MX-2", "INTERPOL", "consent", "officer", notice_id)


def test_one_yes_covers_the_records_recipient_and_purpose_it_names_and_nothing_else(db):
    with session_for(db) as s:
        ok = disclosures.record(s, "us", "MX-2", "INTERPOL", "consent", "officer", "n-yes")
        assert (ok.basis, ok.source, ok.notice_id) == ("consent", "mx", "n-yes")
        assert disclosures.record(s, "us", "MX-2", " interpol ", "consent", "o", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="not about MX-3"):
            disclosures.record(s, "us", "MX-3", "INTERPOL", "consent", "officer", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="not 'a bank'"):
            disclosures.record(s, "us", "MX-2", "a bank", "consent", "officer", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="is for 'extradition file 7'"):
            disclosures.record(
                s, "us", "MX-2", "INTERPOL", "consent", "officer", "n-purpose", "a fishing trip"
            )
        bound = disclosures.record(
            s, "us", "MX-2", "INTERPOL", "consent", "o", "n-purpose", "Extradition file 7"
        )
        assert bound.purpose == "Extradition file 7"


def test_a_compelled_disclosure_stands_only_on_a_notice_we_sent_about_it(db):
    with session_for(db) as s:
        ok = disclosures.record(s, "us", "MX-2", "a court", "compelled", "officer", "n-court")
        assert (ok.basis, ok.notice_id) == ("compelled", "n-court")
        with pytest.raises(disclosures.NotAllowed, match="announced"):
            disclosures.record(s, "us", "MX-2", "a court", "compelled", "officer")
        with pytest.raises(disclosures.NotAllowed, match="no compelled_disclosure notice"):
            disclosures.record(s, "us", "MX-2", "a court", "compelled", "officer", "made-up")
        with pytest.raises(disclosures.NotAllowed, match="no compelled_disclosure notice"):
            disclosures.record(s, "us", "MX-2", "a court", "compelled", "officer", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="not about MX-3"):
            disclosures.record(s, "us", "MX-3", "a court", "compelled", "officer", "n-court")
        with pytest.raises(disclosures.NotAllowed, match="consent or compelled"):
            disclosures.record(s, "us", "MX-2", "a court", "because", "officer")


def test_partner_answers_and_retrieved_data_are_kept_data_that_can_be_disclosed(db):
    """An answer mx gave us (kept in transactions) and what sv released to our retrieval
    are partner data like a record: found, and bound to their source's consent."""
    with session_for(db) as s:
        assert disclosures.source_of(s, "MX-9") == "mx"
        assert disclosures.source_of(s, "SV-E-4") == "sv"
        assert disclosures.source_of(s, "nothing") is None
        with pytest.raises(disclosures.NotAllowed, match="not about MX-9"):
            disclosures.record(s, "us", "MX-9", "INTERPOL", "consent", "officer", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="went to mx, not sv"):
            disclosures.record(s, "us", "SV-E-4", "INTERPOL", "consent", "officer", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="keeps nothing"):
            disclosures.record(s, "us", "nothing", "INTERPOL", "consent", "officer", "n-yes")


def test_qa_names_a_logged_disclosure_of_partner_data_the_consent_does_not_cover(db):
    with session_for(db) as s:
        for ref, to, nid in (
            ("MX-2", "a bank", "n-yes"),  # another recipient than the consent's
            ("MX-3", "INTERPOL", "n-yes"),  # another record
            ("MX-2", "INTERPOL", None),  # no consent at all
            ("MX-2", "INTERPOL", "n-yes"),  # this one stands
        ):
            s.add(
                DisclosureRow(
                    recipient=to,
                    identity_ref=ref,
                    source="mx",
                    basis="consent",
                    notice_id=nid,
                    by="x",
                )
            )
        s.add(
            DisclosureRow(
                recipient="any", identity_ref="US-1", source="us", basis="own_data", by="x"
            )
        )
        s.commit()
        found = quality.run(s, "us", utcnow(), review_overdue_s=86_400)
    onward = sorted(f.detail for f in found if f.check == "onward_disclosure")
    assert [w.split(":")[0] for w in onward] == [
        "MX-2 from mx disclosed to INTERPOL",
        "MX-2 from mx disclosed to a bank",
        "MX-3 from mx disclosed to INTERPOL",
    ]


def test_why_a_logged_disclosure_does_not_stand(db):
    def row(ref: str, to: str, basis: str, nid: str | None, source: str = "mx", purpose=None):
        return DisclosureRow(
            recipient=to,
            identity_ref=ref,
            source=source,
            basis=basis,
            notice_id=nid,
            purpose=purpose,
            by="x",
        )

    with session_for(db) as s:
        assert disclosures.why_not(s, "us", row("US-1", "anyone", "own_data", None, "us")) is None
        assert disclosures.why_not(s, "us", row("MX-2", "INTERPOL", "consent", "n-yes")) is None
        assert disclosures.why_not(s, "us", row("MX-2", "a court", "compelled", "n-court")) is None
        assert (
            disclosures.why_not(s, "us", row("MX-2", "a court", "because", None))
            == "basis 'because' for mx's data"
        )
        assert "not about MX-3" in (
            disclosures.why_not(s, "us", row("MX-3", "a court", "compelled", "n-court")) or ""
        )
        assert "is for 'extradition file 7'" in (
            disclosures.why_not(
                s, "us", row("MX-2", "INTERPOL", "consent", "n-purpose", purpose="x")
            )
            or ""
        )
