"""How a provider words an answer (queries/answers.py), called directly: the paths the matcher
never reaches because it declines first, but the review worker does, when an examiner
decides a case after the release policy changed (§8-10)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from biox.policy.release import Policies
from biox.queries.answers import Answers, Asked, Found
from biox.registry import Purpose
from biox.store import Record
from biox.wire import codec
from biox.wire.errors import Reason
from biox.wire.messages import DecidedBy, ResponseStatus, RetrievalAsk

POLICIES = Policies.load(Path("deploy/policy.toml"))
AT = datetime(2026, 11, 20, tzinfo=UTC)


def asked(requesting: str, purpose: str = "enforce") -> Asked:
    return Asked("q-7", requesting, Purpose(purpose), AT, "m-7")


def record(derogatory: list[str] | None = None, source: str = "us") -> Record:
    return Record(
        id=7,
        identity_ref="REF-7",
        person_centric_id="PC-7",
        biographic={"family_name": "ROE"},
        derogatory=derogatory or [],
        source=source,
    )


def test_a_match_with_no_release_rule_is_declined_for_that_reason_by_the_decider():
    """mx releases only to us: a match for sv, decided by an examiner, is a decline that
    names the missing rule and the examiner, not a crash and not a release."""
    answers = Answers("mx", POLICIES.of("mx"))
    found = [Found(record(source="mx"), 0.9, {"finger": 0.9})]
    response = answers.matched(asked("sv"), found, decided_by=DecidedBy.examiner)
    assert response.status is ResponseStatus.declined
    assert response.reason_code is Reason.release_not_agreed
    assert response.decided_by is DecidedBy.examiner
    assert response.query_id == "q-7"
    assert response.candidates == []


def test_the_retrieval_rule_fires_only_after_a_match():
    """us asks for more after a match on a derogatory record (retrieval.on = derogatory);
    a decline about the same record asks nothing."""
    answers = Answers("us", POLICIES.of("us"))
    best = record(derogatory=["removal order"])
    found = [Found(best, 0.9, {"finger": 0.9})]
    match = answers.matched(asked("mx"), found, decided_by=DecidedBy.automatic)
    assert match.status is ResponseStatus.match

    [ask] = answers.follow_up(asked("mx"), match, best)
    assert ask.envelope.correlation_id == "q-7"
    assert ask.envelope.message_id == codec.derived_id("m-7", "retrieval.ask")
    body = codec.decode_body(RetrievalAsk, RetrievalAsk.schema_id(), ask.body)
    assert body.query_id == "q-7"
    # what the examiner and the audit trail read as the reason for asking
    assert body.justification == "automatic rule of the release policy"

    declined = answers.declined(asked("mx"), Reason.record_not_releasable)
    assert answers.follow_up(asked("mx"), declined, best) == []
    assert answers.follow_up(asked("mx"), match, None) == []


def test_a_match_on_a_record_of_a_national_of_either_party_is_declined():
    """§6a: a match is answered only when it is believed to be a third country national;
    a record that says its subject is Mexican or American is not, for a us-mx pair."""
    answers = Answers("mx", POLICIES.of("mx"))
    for nationality, declined in (("mx", True), ("us", True), ("gt", False), (None, False)):
        rec = record(source="mx")
        rec.biographic = {"family_name": "ROE", "claimed_nationality": nationality}
        response = answers.matched(
            asked("us"), [Found(rec, 0.9, {"finger": 0.9})], decided_by=DecidedBy.automatic
        )
        assert (response.status is ResponseStatus.declined) is declined, nationality
        if declined:
            assert response.reason_code is Reason.excluded_citizen
            assert f"national of {nationality}" in (response.reason or "")


def test_a_decline_says_no_search_was_made():
    answers = Answers("mx", POLICIES.of("mx"))
    declined = answers.declined(asked("us"), Reason.purpose_not_agreed)
    assert declined.timings.search_ms == 0.0 and declined.decided_by is DecidedBy.automatic


def test_an_examiners_match_on_a_national_is_declined_in_the_examiners_name():
    """§6a: the record is a Mexican's, mx asked: declined, and the decline says an examiner
    reached it, as the match would have."""
    answers = Answers("us", POLICIES.of("us"))
    national = record()
    national.biographic = {"family_name": "ROE", "claimed_nationality": "mx"}
    found = [Found(national, 0.9, {"finger": 0.9})]
    decline = answers.matched(asked("mx"), found, decided_by=DecidedBy.examiner)
    assert (decline.status, decline.reason_code) == (
        ResponseStatus.declined,
        Reason.excluded_citizen,
    )
    assert decline.decided_by is DecidedBy.examiner


def test_section_6a_holds_for_every_candidate_and_every_spelling_of_a_country():
    """A best candidate marked "MEX" or " Usa " is a national as much as "mx" or "us";
    a second candidate who is a US national is never released beside a Guatemalan."""
    answers = Answers("mx", POLICIES.of("mx"))
    for spelled in ("MX", "MEX", " mex ", "Usa", "US"):
        rec = record(source="mx")
        rec.biographic = {"family_name": "ROE", "claimed_nationality": spelled}
        response = answers.matched(
            asked("us"), [Found(rec, 0.9, {"finger": 0.9})], decided_by=DecidedBy.automatic
        )
        assert response.reason_code is Reason.excluded_citizen, spelled
    third = record(source="mx")
    third.biographic = {"family_name": "ROE", "claimed_nationality": "GTM"}
    national = Record(
        id=8,
        identity_ref="REF-8",
        biographic={"family_name": "DOE", "claimed_nationality": "us"},
        source="mx",
    )
    response = answers.matched(
        asked("us"),
        [Found(third, 0.95, {"finger": 0.95}), Found(national, 0.9, {"finger": 0.9})],
        decided_by=DecidedBy.automatic,
    )
    assert response.status is ResponseStatus.match
    assert [c.identity_ref for c in response.candidates] == ["REF-7"]


def test_a_country_is_compared_by_its_code_whatever_its_case_or_length():
    from biox.policy.eligibility import country_code, national_of

    assert [country_code(v) for v in ("MX", " mex ", "slv", "USA", "gt", None)] == [
        "mx",
        "mx",
        "sv",
        "us",
        "gt",
        "",
    ]
    assert national_of("MEX", "us", "mx") == "mx" and national_of("GTM", "us", "mx") is None
    assert national_of("", "us", "mx") is None
