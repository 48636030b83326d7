"""Disclosures outside the exchange (§14-15): partner data only with consent or a notice."""

from __future__ import annotations

import pytest

from biox.agreement import disclosures, quality
from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.database import session_for
from biox.store import Record
from biox.wire.messages import utcnow


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="US-1", source="us"))
        s.add(Record(id=2, identity_ref="MX-2", source="mx", source_query_id="q-2"))
        for nid, partner, status, consent in (
            ("n-yes", "mx", "answered", True),
            ("n-no", "mx", "answered", False),
            ("n-wait", "mx", "sent", None),
            ("n-sv", "sv", "answered", True),
        ):
            s.add(
                NoticeRow(
                    notice_id=nid,
                    direction="out",
                    type="consent_request",
                    partner=partner,
                    sent_at=utcnow(),
                    status=status,
                    details={"consent": consent},
                )
            )
        s.commit()
    return url


def test_own_data_needs_no_consent(db):
    with session_for(db) as s:
        row = disclosures.record(s, "us", "US-1", "US District Court", "consent", "officer")
    assert (row.basis, row.notice_id) == ("own_data", None)


@pytest.mark.parametrize(
    ("notice", "why"),
    [
        (None, "no consent request"),
        ("n-no", "not consented"),
        ("n-wait", "not consented"),
        ("n-sv", "went to sv"),
    ],
)
def test_partner_data_needs_that_partners_yes(db, notice, why):
    with session_for(db) as s, pytest.raises(disclosures.NotAllowed, match=why):
        disclosures.record(s, "us", "MX-2", "INTERPOL", "consent", "officer", notice)


def test_partner_data_goes_with_consent_or_after_a_compelled_notice(db):
    with session_for(db) as s:
        ok = disclosures.record(s, "us", "MX-2", "INTERPOL", "consent", "officer", "n-yes")
        assert (ok.basis, ok.source, ok.notice_id) == ("consent", "mx", "n-yes")
        with pytest.raises(disclosures.NotAllowed, match="announced"):
            disclosures.record(s, "us", "MX-2", "a court", "compelled", "officer")
        with pytest.raises(disclosures.NotAllowed, match="consent or compelled"):
            disclosures.record(s, "us", "MX-2", "a court", "because", "officer")
        s.commit()


def test_qa_names_a_logged_disclosure_of_partner_data_without_consent(db):
    with session_for(db) as s:
        s.add(
            DisclosureRow(
                recipient="a bank", identity_ref="MX-2", source="mx", basis="consent", by="someone"
            )
        )
        s.commit()
        found = quality.run(s, "us", utcnow(), review_overdue_s=86_400)
    assert [f.check for f in found] == ["onward_disclosure"]
