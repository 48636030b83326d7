"""The release policy (§7, §9): first matching rule wins, withheld elements, declines."""

from __future__ import annotations

from pathlib import Path

from biox.errors import Reason
from biox.messages import Element
from biox.policy.release import ParticipantPolicy, Policies, ReleaseRule, released_record
from biox.registry import Purpose

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
    from biox.registry import Registry

    registry = Registry.load(Path("deploy/participants.toml"))
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
