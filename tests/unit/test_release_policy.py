"""The release policy (§7, §9): first matching rule wins, withheld elements, declines."""

from __future__ import annotations

from pathlib import Path

import pytest

from biox.policy.release import ParticipantPolicy, Policies, ReleaseRule, released_record
from biox.registry import Purpose
from biox.wire.errors import Reason
from biox.wire.messages import Element
from tests.registry import operating

POLICIES = Policies.load(Path("deploy/policy.toml"))
RECORD = {
    "identity_ref": "MX-000000001",
    "person_centric_id": "mx-pcn-1",
    "biographic": {"family_name": "López", "date_of_birth": "1980-01-02"},
    "encounters": [{"encountered_at": "2026-01-01T00:00:00Z", "country": "mx", "type": "border"}],
    "derogatory": ["visa overstay"],
}


def test_first_rule_naming_the_requester_and_purpose_wins():
    policy = ParticipantPolicy(
        release=[
            ReleaseRule(to=["us"], purposes=["adjudicate"], elements=[Element.biographic]),
            ReleaseRule(elements=list(Element), conditions=["c"]),
        ]
    )
    narrow = policy.release_for("us", Purpose.adjudicate)
    assert not isinstance(narrow, Reason)
    assert narrow.elements == [Element.biographic]
    assert narrow.withheld == [Element.reference, Element.encounters, Element.derogatory]
    broad = policy.release_for("us", Purpose.enforce)
    assert not isinstance(broad, Reason) and broad.conditions == ["c"]


def test_empty_elements_or_no_rule_is_a_decline():
    empty = ParticipantPolicy(release=[ReleaseRule(to=["us"], elements=[])])
    assert empty.release_for("us", Purpose.enforce) is Reason.release_not_agreed
    assert empty.release_for("mx", Purpose.enforce) is Reason.release_not_agreed
    assert Policies(participants={}).of("zz").release_for("us", Purpose.enforce) is (
        Reason.release_not_agreed
    )


def test_released_record_carries_only_the_allowed_elements():
    release = POLICIES.of("mx").release_for("us", Purpose.adjudicate)
    assert not isinstance(release, Reason)
    record = released_record(**RECORD, release=release)
    assert record.identity_ref == "MX-000000001"
    assert record.person_centric_id == "mx-pcn-1"
    assert record.biographic is not None and record.biographic.family_name == "López"
    assert record.encounters == [] and record.derogatory == []


def test_a_retrieval_gets_the_intersection_of_asked_and_allowed():
    release = POLICIES.of("sv").release_for("us", Purpose.investigate)
    assert not isinstance(release, Reason)
    limited = release.limit([Element.biographic, Element.encounters])
    assert limited.elements == [Element.encounters]
    assert limited.withheld == [Element.biographic]


def test_the_shipped_policy_covers_every_agreed_pair_and_purpose():
    """Every purpose a pair agreed in the registry has a release rule on the answering side
    (a gap would decline every query of that kind)."""

    registry = operating()
    for provider, p in registry.participants.items():
        for requester, agreement in p.agreements.items():
            for purpose in agreement.answer:
                got = POLICIES.of(provider).release_for(requester, purpose)
                assert not isinstance(got, Reason), (provider, requester, purpose)


def test_enrolment_and_automatic_retrieval_rules():
    us = POLICIES.of("us")
    assert us.enrols("mx", Purpose.enforce) and not us.enrols("mx", Purpose.adjudicate)
    assert us.asks_after(derogatory=True) == [Element.biographic, Element.encounters]
    assert us.asks_after(derogatory=False) == []
    assert POLICIES.of("mx").asks_after(derogatory=True) == []


def test_retention_dates_are_counted_in_days():
    from datetime import UTC, datetime, timedelta

    policy = ParticipantPolicy(
        enrolled_retention_days=3, received_retention_days=5, encounter_retention_days=7
    )
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert policy.enrolled_until(t) == t + timedelta(days=3)
    assert policy.received_until(t) == t + timedelta(days=5)
    assert policy.encounter_until(t) == t + timedelta(days=7)
    shipped = POLICIES.of("sv")
    assert shipped.received_until(t) == datetime(2030, 12, 31, tzinfo=UTC)  # 1825 days


def test_each_withheld_element_stays_out_of_the_released_record():
    for kept in Element:
        release = ParticipantPolicy(release=[ReleaseRule(elements=[kept])]).release_for(
            "us", Purpose.enforce
        )
        assert not isinstance(release, Reason)
        record = released_record(**RECORD, release=release)
        assert (record.person_centric_id is not None) == (kept is Element.reference)
        assert (record.biographic is not None) == (kept is Element.biographic)
        assert bool(record.encounters) == (kept is Element.encounters)
        assert bool(record.derogatory) == (kept is Element.derogatory)
        assert record.identity_ref == "MX-000000001"  # the reference the answer is about


def test_a_rule_names_requesters_and_purposes_or_everyone():
    rule = ReleaseRule(to=["us"], purposes=["enforce"], elements=[Element.reference])
    assert rule.covers("us", Purpose.enforce)
    assert not rule.covers("sv", Purpose.enforce)
    assert not rule.covers("us", Purpose.investigate)
    assert ReleaseRule().covers("sv", Purpose.adjudicate)


def test_the_automatic_rule_asks_on_every_match_when_told_so():
    from biox.policy.release import RetrievalRule

    every = ParticipantPolicy(
        retrieval=RetrievalRule(on="every_match", elements=[Element.encounters])
    )
    assert every.asks_after(derogatory=False) == [Element.encounters]
    never = ParticipantPolicy(retrieval=RetrievalRule(on="never", elements=[Element.encounters]))
    assert never.asks_after(derogatory=True) == []


def test_a_query_carries_only_the_biographic_fields_its_send_rule_names():
    """§19(i): us sends sv names and birth data, never a document number; mx, with no
    rule, gets everything the encounter system gave."""
    from biox.wire.messages import Biographic

    full = Biographic(
        family_name="Cruz",
        given_names="Ana",
        date_of_birth="1990-05-01",
        sex="F",
        claimed_nationality="gt",
        place_of_birth="Quetzaltenango",
        document_number="G123",
    )
    us = POLICIES.of("us")
    to_sv = us.minimised("sv", Purpose.investigate, full)
    assert to_sv.document_number is None and to_sv.place_of_birth is None
    assert (to_sv.family_name, to_sv.date_of_birth, to_sv.claimed_nationality) == (
        "Cruz",
        "1990-05-01",
        "gt",
    )
    assert us.minimised("mx", Purpose.enforce, full) == full
    assert POLICIES.of("sv").minimised("us", Purpose.enforce, full).claimed_nationality is None


def test_a_send_rule_naming_an_unknown_field_is_refused_at_load():
    from biox.policy.release import SendRule

    with pytest.raises(ValueError, match="passport"):
        SendRule(biographic=["family_name", "passport"])


def test_a_send_rule_for_one_purpose_minimises_only_that_purpose():
    from biox.policy.release import SendRule
    from biox.wire.messages import Biographic

    policy = ParticipantPolicy(
        send=[SendRule(to=["sv"], purposes=["adjudicate"], biographic=["family_name"])]
    )
    full = Biographic(family_name="Cruz", document_number="G123")
    assert policy.minimised("sv", Purpose.adjudicate, full) == Biographic(family_name="Cruz")
    # issue 20 (5): without a rule, the minimum: no biographic field at all
    assert policy.minimised("sv", Purpose.enforce, full) == Biographic()  # another purpose
    assert policy.minimised("mx", Purpose.adjudicate, full) == Biographic()  # another partner
