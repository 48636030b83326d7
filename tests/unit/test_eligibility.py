from __future__ import annotations

from datetime import UTC, datetime

import pytest

from biox.policy.eligibility import provider_refusal, refusal
from biox.registry import Purpose, Status
from biox.wire.errors import Reason
from biox.wire.messages import Encounter, SubjectStatus
from tests.registry import operating

REGISTRY = operating()
HERE = {
    code: Encounter(encountered_at=datetime(2026, 11, 1, tzinfo=UTC), country=code)
    for code in ("us", "mx", "sv")
}
TCN = SubjectStatus(citizenships=["gt"])


@pytest.mark.parametrize(
    ("requester", "provider", "status", "reason"),
    [
        ("us", "mx", TCN, None),
        ("us", "mx", SubjectStatus(citizenships=["us"]), Reason.excluded_citizen),  # §4a
        ("us", "mx", SubjectStatus(citizenships=["mx"]), Reason.excluded_citizen),  # §4a
        ("us", "sv", SubjectStatus(citizenships=["mx"]), None),  # TCN for the us-sv pair
        (
            "us",
            "mx",
            SubjectStatus(citizenships=["gt"], permanent_residences=["us"]),
            Reason.excluded_resident,
        ),  # §4c
        (
            "mx",
            "us",
            SubjectStatus(citizenships=["gt"], permanent_residences=["mx"]),
            Reason.excluded_resident,
        ),  # §4b
        (
            "mx",
            "us",
            SubjectStatus(citizenships=["gt"], permanent_residences=["us"]),
            Reason.excluded_resident,
        ),  # the other party's resident: not a third country national either (§1(ii))
        (
            "us",
            "mx",
            SubjectStatus(citizenships=["gt"], permanent_residences=["mx"]),
            Reason.excluded_resident,
        ),  # §1(ii), whichever party asks
        (
            "us",
            "sv",
            SubjectStatus(citizenships=["gt"], permanent_residences=["mx"]),
            None,
        ),  # mx is not a party to the us-sv pair
        (
            "us",
            "mx",
            SubjectStatus(citizenships=["gt", "mx"]),
            Reason.excluded_citizen,
        ),  # dual national
    ],
)
def test_third_country_nationals_only_per_pair(requester, provider, status, reason):
    assert (
        refusal(REGISTRY, requester, provider, Purpose.enforce, status, HERE[requester]) is reason
    )


def test_only_subjects_encountered_in_the_requesters_country():  # §3
    assert (
        refusal(REGISTRY, "us", "mx", Purpose.enforce, TCN, HERE["mx"])
        is Reason.not_encountered_here
    )


def test_purpose_must_be_agreed_by_both_sides():  # §2 and the registry
    assert REGISTRY.partners_for("us", Purpose.adjudicate) == ["mx"]
    assert REGISTRY.partners_for("us", Purpose.enforce) == ["mx", "sv"]
    assert (
        refusal(REGISTRY, "us", "sv", Purpose.adjudicate, TCN, HERE["us"])
        is Reason.purpose_not_agreed
    )
    assert provider_refusal(REGISTRY, "sv", "us", Purpose.adjudicate) is Reason.purpose_not_agreed
    assert provider_refusal(REGISTRY, "sv", "us", Purpose.enforce) is None


def test_inactive_and_unknown_requesters_are_refused():
    reg = REGISTRY.model_copy(deep=True)
    reg.participants["mx"].status = Status.suspended
    assert provider_refusal(reg, "us", "mx", Purpose.enforce) is Reason.inactive_requester
    assert refusal(reg, "mx", "us", Purpose.enforce, TCN, HERE["mx"]) is Reason.inactive_requester
    assert provider_refusal(reg, "us", "zz", Purpose.enforce) is Reason.unknown_participant


def test_an_unknown_provider_is_refused_even_from_a_known_requester():
    here = Encounter(encountered_at=datetime.now(UTC), country="us")
    status = SubjectStatus(citizenships=["gt"])
    assert (
        refusal(REGISTRY, "us", "zz", Purpose.enforce, status, here) is Reason.unknown_participant
    )
    assert (
        refusal(REGISTRY, "zz", "mx", Purpose.enforce, status, here) is Reason.unknown_participant
    )


def test_no_query_goes_to_a_participant_that_is_not_active():
    """§34: not before its readiness notice; §36: not after it discontinued."""
    for status in (Status.pending, Status.suspended, Status.discontinued):
        reg = REGISTRY.model_copy(deep=True)
        reg.participants["mx"].status = status
        assert refusal(reg, "us", "mx", Purpose.enforce, TCN, HERE["us"]) is (
            Reason.inactive_provider
        )
        assert refusal(reg, "us", "sv", Purpose.enforce, TCN, HERE["us"]) is None
        # and mx, if it is itself not active, answers nothing
        assert provider_refusal(reg, "mx", "us", Purpose.enforce) is Reason.inactive_provider


def test_the_provider_checks_the_subject_again_on_what_it_receives():
    """A requester that does not apply §3-4 (or reads them differently) is declined."""
    resident = SubjectStatus(citizenships=["gt"], permanent_residences=["mx"])
    assert provider_refusal(REGISTRY, "mx", "us", Purpose.enforce, resident, HERE["us"]) is (
        Reason.excluded_resident
    )
    assert provider_refusal(REGISTRY, "mx", "us", Purpose.enforce, TCN, HERE["mx"]) is (
        Reason.not_encountered_here
    )
    citizen = SubjectStatus(citizenships=["us"])
    assert provider_refusal(REGISTRY, "mx", "us", Purpose.enforce, citizen, HERE["us"]) is (
        Reason.excluded_citizen
    )
    assert provider_refusal(REGISTRY, "mx", "us", Purpose.enforce, TCN, HERE["us"]) is None
    # without the encounter, only the registry's checks apply (the subject's need both)
    assert provider_refusal(REGISTRY, "mx", "us", Purpose.enforce, citizen) is None
