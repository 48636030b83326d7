"""The matcher's decisions on scripted search results: thresholds, what a match releases,
what is declined before any search, and the ids of what it sends.

The gallery is replaced by one that returns chosen hits, so each boundary is tested on
exact scores instead of on whatever the synthetic population happens to produce.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from biox.database import session_for
from biox.gallery.gallery import Hit, Probe
from biox.handlers.base import Effects
from biox.handlers.matcher import MatcherHandler
from biox.policy.release import ParticipantPolicy, Policies, ReleaseRule, RetrievalRule
from biox.registry import Purpose
from biox.routes import ROUTES
from biox.settings import Settings
from biox.store import EnrolledTemplates, Record, Transaction
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import Element, Response, ResponseStatus, RetrievalAsk, ReviewCase
from tests.registry import operating
from tests.unit.test_handlers import query_from, submit

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
HIGH, LOW = 0.55, 0.30


class ScriptedGallery:
    """Answers every probe with the hits it was given; remembers what it was asked."""

    size = 3

    def __init__(self, hits: list[Hit], takes_s: float = 0.0) -> None:
        self.hits = hits
        self.takes_s = takes_s
        self.searched: list[int] = []
        self.asked: list[tuple[int | None, int | None]] = []  # (k, top) of each search

    def search(
        self, probes: Sequence[Probe], k: int | None = None, top: int | None = None
    ) -> list[list[Hit]]:
        self.searched.append(len(probes))
        self.asked.append((k, top))
        top = 3 if top is None else top
        time.sleep(self.takes_s)
        return [list(self.hits[:top]) for _ in probes]

    def enroll(self, ids: Sequence[int], probes: Sequence[Probe]) -> None:
        pass


def record(rid: int, **kw) -> Record:
    values = {
        "id": rid,
        "identity_ref": f"MX-{rid:09d}",
        "person_centric_id": f"mx-pcn-{rid}",
        "biographic": {"family_name": f"Name{rid}", "date_of_birth": "1980-01-02"},
        "encounters": [
            {"encountered_at": "2025-01-01T00:00:00Z", "country": "mx", "type": "border"}
        ],
        "derogatory": ["visa overstay"] if rid == 1 else [],
        "source": "mx",
        **kw,
    }
    return Record(**values)


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add_all([record(1), record(2), record(3), record(4, releasable=False)])
        s.add(record(5, source="sv"))  # query data sv sent earlier (§21)
        s.commit()
    return url


def matcher(hits: list[Hit], policy: ParticipantPolicy | None = None) -> MatcherHandler:
    settings = Settings(threshold_high=HIGH, threshold_low=LOW, gallery_sync_s=3600)
    handler = MatcherHandler(
        "mx",
        REGISTRY,
        ScriptedGallery(hits),
        settings,
        policy or POLICIES.of("mx"),  # type: ignore[arg-type]
    )
    handler.follower.synced_at = float("inf")  # no enrolled rows to catch up with here
    return handler


def ask(handler: MatcherHandler, db: str, purpose: Purpose = Purpose.enforce):
    envelope, query = query_from(submit(7), purpose=purpose)
    with session_for(db) as s:
        [result] = handler.search([Inbound(envelope, query)], s)
    assert isinstance(result, Effects), result
    response = ROUTES.decode("response", "response/1", result.outgoing[0].body)
    assert isinstance(response, Response)
    return envelope, query, result, response


def hit(rid: int, fused: float) -> Hit:
    return Hit(rid, fused, {"face": fused})


def test_a_match_releases_only_candidates_at_or_above_the_match_threshold(db):
    three = POLICIES.of("mx").model_copy(
        update={
            "release": [r.model_copy(update={"max_records": 3}) for r in POLICIES.of("mx").release]
        }
    )
    handler = matcher([hit(1, 0.9), hit(2, HIGH), hit(3, HIGH - 0.01)], three)
    _, _, result, response = ask(handler, db)
    assert response.status is ResponseStatus.match
    assert [c.identity_ref for c in response.candidates] == ["MX-000000001", "MX-000000002"]
    assert response.candidates[0].fused_score == 0.9
    tx = result.rows[0]
    assert isinstance(tx, Transaction) and tx.status == "match" and tx.top_score == 0.9
    # the provider's record of when it got the query: the annual review's timeliness (§27)
    assert tx.received_at is not None and tx.received_at == response.timings.received_at


@pytest.mark.parametrize(
    ("best", "status"),
    [
        (HIGH, ResponseStatus.match),
        (HIGH - 0.0001, ResponseStatus.pending_review),
        (LOW, ResponseStatus.pending_review),
        (LOW - 0.0001, ResponseStatus.no_match),
        (0.0, ResponseStatus.no_match),
    ],
)
def test_the_thresholds_split_match_review_and_no_match_at_their_exact_values(db, best, status):
    _, _, _, response = ask(matcher([hit(2, best)]), db)
    assert response.status is status


def test_no_hit_at_all_is_no_match(db):
    _, _, result, response = ask(matcher([]), db)
    assert response.status is ResponseStatus.no_match and response.candidates == []
    assert result.rows[0].top_score == 0.0


def test_a_gray_zone_query_opens_a_case_with_the_candidates_above_the_low_threshold(db):
    handler = matcher([hit(2, 0.45), hit(3, LOW), hit(1, LOW - 0.01)])
    envelope, query, result, response = ask(handler, db)
    assert response.status is ResponseStatus.pending_review and response.candidates == []
    assert response.decided_by.value == "examiner"
    _, case_out = result.outgoing
    case = ROUTES.decode("review.case", "review.case/1", case_out.body)
    assert isinstance(case, ReviewCase)
    assert [c.identity_ref for c in case.candidates] == ["MX-000000002", "MX-000000003"]
    assert case.case_id == case.query_id == query.query_id
    assert (case_out.exchange, case_out.routing_key) == ("biox.mx", "mx.review.case")
    assert case_out.envelope.message_id == codec.derived_id(envelope.message_id, "review.case")
    assert not case_out.body.count(bytes(query.biometrics.face.template[:16]))  # no template


class PerProbeGallery(ScriptedGallery):
    """Answers the n-th probe of a search with the n-th list of hits."""

    def __init__(self, per_probe: list[list[Hit]]) -> None:
        super().__init__([])
        self.per_probe = per_probe

    def search(self, probes, k=None, top=None):  # type: ignore[no-untyped-def]
        self.searched.append(len(probes))
        return [list(h) for h in self.per_probe[: len(probes)]]


def test_a_case_never_shows_a_candidate_below_the_low_threshold_another_query_matched(db):
    """Records are read once per batch: record 3 is read because the first query matched
    it; in the second query it scored below the low threshold, so its examiners never see
    it."""
    handler = matcher([])
    handler.gallery = PerProbeGallery([[hit(3, 0.9)], [hit(2, 0.45), hit(3, LOW - 0.01)]])
    batch = [Inbound(*query_from(submit(7 + n))) for n in range(2)]
    with session_for(db) as s:
        first, second = handler.search(batch, s)
    assert isinstance(first, Effects) and first.outcome == "match"
    assert isinstance(second, Effects) and second.outcome == "pending_review"
    case = ROUTES.decode("review.case", "review.case/1", second.outgoing[1].body)
    assert [c.identity_ref for c in case.candidates] == ["MX-000000002"]


def test_a_query_without_biometrics_is_rejected_as_such(db):
    envelope, query = query_from(submit(7))
    empty = query.model_copy(
        update={
            "biometrics": query.biometrics.model_copy(
                update={"fingerprints": [], "face": None, "irises": []}
            )
        }
    )
    with session_for(db) as s:
        [result] = matcher([hit(1, 0.9)]).search([Inbound(envelope, empty)], s)
    assert isinstance(result, PermanentError) and result.reason is Reason.no_biometrics


def test_a_match_releases_no_more_records_than_its_release_rule_allows(db):
    """Issue 20 (5): mx's rules leave max_records at its default, 1: two candidates at or
    above the threshold, one record released, the best."""
    _, _, _, response = ask(matcher([hit(1, 0.9), hit(2, HIGH)]), db)
    assert response.status is ResponseStatus.match
    assert [c.identity_ref for c in response.candidates] == ["MX-000000001"]


def test_the_released_biographic_data_holds_only_the_fields_the_rule_names(db):
    """Issue 20 (5): a release rule naming biographic fields releases those alone."""
    narrow = ParticipantPolicy(
        release=[ReleaseRule(to=["us"], elements=["reference", "biographic"], biographic=["sex"])]
    )
    _, _, _, response = ask(matcher([hit(1, 0.9)], narrow), db)
    released = response.candidates[0].record.biographic
    assert released is not None
    assert {k for k, v in released.model_dump().items() if v is not None} <= {"sex"}


def test_a_sealed_best_candidate_is_declined_and_nothing_is_released(db):
    """The provider's row says why; the requester hears a no-match (issue 20 (3)), unless
    the policy says to tell it."""
    _, _, result, response = ask(matcher([hit(4, 0.9), hit(2, 0.8)]), db)
    assert response.status is ResponseStatus.no_match
    assert response.reason_code is None and response.candidates == []
    tx = result.rows[0]
    assert (tx.status, tx.reason_code) == ("declined", "record_not_releasable")
    assert tx.answer["status"] == "no_match"  # what was sent, as sent
    told = POLICIES.of("mx").model_copy(update={"conceal_record_declines": False})
    _, _, _, response = ask(matcher([hit(4, 0.9), hit(2, 0.8)], told), db)
    assert response.status is ResponseStatus.declined
    assert response.reason_code is Reason.record_not_releasable and response.candidates == []


def test_a_concealed_decline_cannot_be_told_from_a_no_match(db):
    """Issue 20 (3): everything the requester receives (status, reason, decider, the
    fields present, the search time's presence) is as a true no-match's."""
    _, _, _, concealed = ask(matcher([hit(4, 0.9)]), db)
    _, _, _, nothing = ask(matcher([hit(1, LOW - 0.01)]), db)

    def seen(r: Response) -> dict:
        out = r.model_dump(mode="json", exclude={"query_id"})
        out["timings"] = sorted(out["timings"])  # which timings, not their values
        return out

    assert seen(concealed) == seen(nothing)
    assert concealed.timings.search_ms > 0  # a search was made, as for the no-match


def test_data_another_partner_sent_is_not_passed_on_even_as_a_second_candidate(db):
    """us asks; record 5 came from sv: onward disclosure without consent (§15)."""
    best = matcher([hit(5, 0.9)])
    assert ask(best, db)[2].rows[0].status == "declined"
    second = matcher([hit(1, 0.9), hit(5, 0.8)])
    response = ask(second, db)[3]
    assert [c.identity_ref for c in response.candidates] == ["MX-000000001"]


def test_a_query_without_a_release_rule_is_declined_before_any_search(db):
    policy = ParticipantPolicy(release=[ReleaseRule(to=["us"], purposes=["adjudicate"])])
    handler = matcher([hit(1, 0.99)], policy)
    _, _, result, response = ask(handler, db, Purpose.enforce)
    assert response.status is ResponseStatus.declined
    assert response.reason_code is Reason.release_not_agreed
    assert handler.gallery.searched == []  # type: ignore[attr-defined]
    assert result.rows[0].top_score is None


def test_the_released_record_holds_only_the_elements_the_rule_allows(db):
    policy = ParticipantPolicy(
        release=[ReleaseRule(elements=[Element.biographic], conditions=["only this"])]
    )
    _, _, _, response = ask(matcher([hit(1, 0.9)], policy), db)
    [candidate] = response.candidates
    rec = candidate.record
    assert rec is not None and rec.biographic is not None
    assert rec.person_centric_id is None  # reference withheld
    assert rec.encounters == [] and rec.derogatory == []
    assert response.withheld == [Element.reference, Element.encounters, Element.derogatory]
    assert response.conditions == ["only this"]


def test_every_output_has_an_id_derived_from_the_query_message(db):
    """A redelivered query reproduces the same ids, so receivers absorb the copy."""
    policy = ParticipantPolicy(
        release=[ReleaseRule(elements=list(Element))],
        retrieval=RetrievalRule(on="every_match", elements=[Element.encounters]),
    )
    envelope, query, result, _response = ask(matcher([hit(2, 0.9)], policy), db)
    answer, follow = result.outgoing
    assert answer.envelope.message_id == codec.derived_id(envelope.message_id, "response")
    assert answer.envelope.correlation_id == query.query_id
    assert (answer.exchange, answer.routing_key) == ("biox.mx.out", "us.response")
    assert follow.envelope.message_id == codec.derived_id(envelope.message_id, "retrieval.ask")
    ask_message = ROUTES.decode("retrieval.ask", "retrieval.ask/1", follow.body)
    assert isinstance(ask_message, RetrievalAsk)
    assert ask_message.elements == [Element.encounters]
    assert ask_message.asked_by == "rule:every_match"
    assert (follow.exchange, follow.routing_key) == ("biox.mx", "mx.retrieval.ask")


def test_the_automatic_retrieval_rule_fires_only_on_derogatory_data_when_told_so(db):
    policy = ParticipantPolicy(
        release=[ReleaseRule(elements=list(Element))],
        retrieval=RetrievalRule(on="derogatory", elements=[Element.biographic]),
    )
    plain = ask(matcher([hit(2, 0.9)], policy), db)[2]
    flagged = ask(matcher([hit(1, 0.9)], policy), db)[2]  # record 1 has derogatory data
    assert len(plain.outgoing) == 1 and len(flagged.outgoing) == 2


def test_enrolled_query_data_is_kept_for_exactly_the_policys_days(db):
    policy = ParticipantPolicy(
        release=[ReleaseRule(elements=list(Element))],
        enrol={"us": [Purpose.enforce]},
        enrolled_retention_days=10,
    )
    before = datetime.now(UTC)
    envelope, query = query_from(submit(7))
    query = query.model_copy(
        update={"references": query.references.model_copy(update={"person_centric_id": "us-pcn-7"})}
    )
    with session_for(db) as s:
        [result] = matcher([], policy).search([Inbound(envelope, query)], s)
    after = datetime.now(UTC)
    assert isinstance(result, Effects)
    rec = next(r for r in result.rows if isinstance(r, Record))
    assert rec.person_centric_id == "us-pcn-7"  # the requester's person, kept with its data
    templates = next(r for r in result.rows if isinstance(r, EnrolledTemplates))
    assert rec.source == "us" and rec.source_query_id == query.query_id
    assert rec.source_message_id == envelope.message_id
    assert templates.record_id == rec.id
    assert before + timedelta(days=10) <= rec.retain_until <= after + timedelta(days=10)
    assert rec.retain_until - rec.received_at == timedelta(days=10)
    assert result.outcome == "no_match:enrolled"
    not_enrolled = ask(matcher([], policy), db, Purpose.investigate)[2]
    assert not any(isinstance(r, Record) for r in not_enrolled.rows)


def test_an_answer_reports_the_search_time_per_query_in_milliseconds(db):
    settings = Settings(threshold_high=HIGH, threshold_low=LOW, gallery_sync_s=3600)
    gallery = ScriptedGallery([hit(2, 0.9)], takes_s=0.2)
    handler = MatcherHandler("mx", REGISTRY, gallery, settings, POLICIES.of("mx"))  # type: ignore[arg-type]
    handler.follower.synced_at = float("inf")
    batch = [Inbound(*query_from(submit(n))) for n in (7, 8)]
    with session_for(db) as s:
        results = handler.search(batch, s)
    for effects in results:
        response = ROUTES.decode("response", "response/1", effects.outgoing[0].body)
        assert 90 < response.timings.search_ms < 150  # 200 ms for a batch of two
    assert gallery.searched == [2]  # both probes in one search


def test_every_query_of_a_batch_gets_its_own_result_whatever_happens_to_the_others(db):
    """One result per query, in order: a refused query in the middle of a batch does not
    stop the search of those after it."""
    handler = matcher([hit(1, 0.99)])
    batch: list[Inbound] = []
    for n in range(2):
        envelope, query = query_from(submit(7 + n))
        batch.append(Inbound(envelope, query))
    wrong = batch[0].message.model_copy(update={"providing": "sv"})
    batch.insert(1, Inbound(batch[0].envelope, wrong))  # addressed to another provider
    with session_for(db) as s:
        results = handler.search(batch, s)
    assert len(results) == 3
    assert isinstance(results[1], PermanentError) and results[1].reason is Reason.misaddressed
    answers = [
        ROUTES.decode("response", "response/1", r.outgoing[0].body)
        for r in results
        if isinstance(r, Effects)
    ]
    assert [a.query_id for a in answers] == [batch[i].message.query_id for i in (0, 2)]
    assert handler.gallery.searched == [2]  # type: ignore[attr-defined]


def test_the_search_asks_the_index_for_the_configured_candidates_and_releases_at_most_top(db):
    handler = matcher([hit(1, 0.99), hit(2, 0.98)])
    handler.settings = handler.settings.model_copy(
        update={"candidates": 7, "max_candidates_released": 1}
    )
    ask(handler, db)
    assert handler.gallery.asked == [(7, 1)]  # type: ignore[attr-defined]


def test_a_blocked_record_is_not_matched_even_when_the_index_finds_it(db):
    """§23: the FAISS snapshot may still hold a blocked record; the matcher does not read
    it, so the next best is answered (or nothing)."""
    with session_for(db) as s:
        blocked = s.get(Record, 1)
        blocked.blocked_at = datetime.now(UTC)
        s.add(blocked)
        s.commit()
    *_, response = ask(matcher([hit(1, 0.95), hit(2, 0.9)]), db)
    assert [c.identity_ref for c in response.candidates] == ["MX-000000002"]
    *_, alone = ask(matcher([hit(1, 0.95)]), db)
    assert alone.status is ResponseStatus.no_match


def test_the_provider_declines_a_subject_it_may_not_be_asked_about_whatever_the_requester_says(db):
    """us asks about someone its own encounter data shows is a Mexican citizen: mx checks
    §4 itself and declines before searching."""
    from biox.wire.messages import SubjectStatus

    handler = matcher([hit(1, 0.95)])
    envelope, query = query_from(submit(7), purpose=Purpose.enforce)
    query.subject_status = SubjectStatus(citizenships=["mx"])
    with session_for(db) as s:
        [result] = handler.search([Inbound(envelope, query)], s)
    response = ROUTES.decode("response", "response/1", result.outgoing[0].body)
    assert (response.status, response.reason_code) == (
        ResponseStatus.declined,
        Reason.excluded_citizen,
    )
    assert handler.gallery.searched == []  # declined before any search
    query.subject_status = SubjectStatus(citizenships=["gt"])
    query.encounter = query.encounter.model_copy(update={"country": "mx"})
    with session_for(db) as s:
        [elsewhere] = handler.search([Inbound(envelope, query)], s)
    response = ROUTES.decode("response", "response/1", elsewhere.outgoing[0].body)
    assert response.reason_code is Reason.not_encountered_here


def test_a_query_for_another_provider_is_refused_naming_it(db):
    handler = matcher([hit(1, 0.95)])
    envelope, query = query_from(submit(7), purpose=Purpose.enforce)
    query.providing = "sv"
    with session_for(db) as s:
        [refused] = handler.search([Inbound(envelope, query)], s)
    assert isinstance(refused, PermanentError)
    assert (refused.reason, refused.detail) == (Reason.misaddressed, "query is for 'sv'")


def test_a_matcher_under_a_worker_reports_its_search_time_and_gallery_size(db):
    from biox.metrics import Metrics

    handler = matcher([hit(2, 0.9)])
    metrics = Metrics("mx", "mx.query")
    handler.observe(metrics, db)
    ask(handler, db)
    samples = {s.name: s.value for f in metrics.registry.collect() for s in f.samples}
    assert samples["biox_matcher_search_seconds_count"] == 1
    assert samples["biox_gallery_identities"] == ScriptedGallery.size


def test_tombstones_written_after_a_catch_up_are_applied_at_the_next_one(tmp_path):
    from biox.agreement.ledgers import Tombstone
    from biox.gallery.gallery import Gallery
    from biox.sim import synth

    url = f"sqlite:///{tmp_path / 'mx.db'}"
    gallery = Gallery()
    gallery.enroll([1, 2], [Probe.from_biometrics(synth.capture(3, n, context=0)) for n in (1, 2)])
    handler = MatcherHandler("mx", REGISTRY, gallery, Settings(gallery_sync_s=0), POLICIES.of("mx"))
    with session_for(url) as s:
        s.add(Tombstone(record_id=1, cause="deletion"))
        s.commit()
        with capture_logs() as logs:
            handler.catch_up(s)
        assert gallery.size == 1
        [buried] = [e for e in logs if e["event"] == "tombstones_applied"]
        assert (buried["count"], buried["gallery"]) == (1, 1)
        s.add(Tombstone(record_id=2, cause="retention"))
        s.commit()
        handler.catch_up(s)
        assert gallery.size == 0
