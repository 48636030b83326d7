"""Human review (§8) without a broker: the lease, examiners racing for cases in separate
processes, and the review worker's handling of decisions (one per case, by a candidate)."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from biox.database import session_for
from biox.handlers.base import Effects
from biox.handlers.review import ReviewHandler
from biox.policy.release import ParticipantPolicy, Policies, ReleaseRule, RetrievalRule
from biox.queries import examiners
from biox.routes import ROUTES
from biox.store import Record, ReviewCaseRow, Transaction
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    Element,
    Response,
    ResponseStatus,
    RetrievalAsk,
    ReviewDecision,
    ReviewVerdict,
)

POLICIES = Policies.load(Path("deploy/policy.toml"))


def case_row(case_id: str, opened_s_ago: float = 60, **kw) -> ReviewCaseRow:
    values = {
        "case_id": case_id,
        "query_id": case_id,
        "requesting": "us",
        "purpose": "enforce",
        "opened_at": datetime.now(UTC) - timedelta(seconds=opened_s_ago),
        "candidates": [
            {"identity_ref": "MX-000000001", "fused_score": 0.45, "scores": {"face": 0.45}},
            {"identity_ref": "MX-000000002", "fused_score": 0.35, "scores": {"face": 0.35}},
        ],
        "source": "us",
        **kw,
    }
    return ReviewCaseRow(**values)


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add(case_row("c-1"))
        for rid in (1, 2):
            s.add(Record(id=rid, identity_ref=f"MX-00000000{rid}", source="mx"))
        s.add(
            Transaction(
                query_id="c-1",
                role="provider",
                encounter_id="E-1",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="pending_review",
            )
        )
        s.commit()
    return url


def held_for(db: str, seconds: float) -> None:
    with session_for(db) as s:
        row = s.get(ReviewCaseRow, "c-1")
        row.status, row.examiner = "in_review", "first"
        row.taken_at = datetime.now(UTC) - timedelta(seconds=seconds)
        s.commit()


def test_a_lease_is_counted_in_seconds(db):
    held_for(db, 60)  # a minute into a 15-minute lease
    with session_for(db) as s:
        assert examiners.take_next(s, "second", lease_s=900) is None
    held_for(db, 901)
    with session_for(db) as s:
        again = examiners.take_next(s, "second", lease_s=900)
    assert again is not None and again.examiner == "second"


def test_the_oldest_free_case_is_taken_first(db):
    with session_for(db) as s:
        s.add(case_row("c-old", opened_s_ago=3600))
        s.add(case_row("c-new", opened_s_ago=5))
        s.commit()
        taken = [examiners.take_next(s, "x", 900).case_id for _ in range(3)]
        assert taken == ["c-old", "c-1", "c-new"]
        assert examiners.take_next(s, "y", 900) is None


def test_overdue_is_an_open_case_older_than_the_limit(db):
    with session_for(db) as s:
        s.add(case_row("c-late", opened_s_ago=4 * 3600 + 5))
        s.add(case_row("c-done", opened_s_ago=9 * 3600, status="decided"))
        s.commit()
        cases = examiners.open_cases(s)
    assert [c.case_id for c in cases] == ["c-late", "c-1"]
    assert [c.case_id for c in examiners.overdue(cases, 4 * 3600)] == ["c-late"]
    assert examiners.overdue(cases, 10 * 3600) == []
    assert 59 < examiners.age_s(next(c for c in cases if c.case_id == "c-1")) < 120


def test_the_backlog_an_operator_scrapes_counts_undecided_cases_and_the_oldest_age(tmp_path, db):
    from biox.handlers.review import backlog
    from biox.metrics import Metrics

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with session_for(empty):
        pass
    assert backlog(empty) == {"cases": 0.0, "oldest_seconds": 0.0}
    with session_for(db) as s:  # c-1 is pending, a minute old
        s.add(case_row("c-taken", opened_s_ago=600, status="in_review", examiner="x"))
        s.add(case_row("c-done", opened_s_ago=9 * 3600, status="decided"))
        s.commit()
    now = backlog(db)
    assert now["cases"] == 2.0  # pending and in review; not the decided one, however old
    assert 599 < now["oldest_seconds"] < 700  # read back naive from SQLite, taken as UTC

    metrics = Metrics("mx", "mx.review.decision")
    ReviewHandler("mx", POLICIES.of("mx")).observe(metrics, db)
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith("biox_review_backlog")
    }
    labels = tuple(sorted(metrics.labels.items()))
    assert scraped[("biox_review_backlog_cases", labels)] == 2.0
    assert 599 < scraped[("biox_review_backlog_oldest_seconds", labels)] < 700
    with session_for(db) as s:
        s.delete(s.get(ReviewCaseRow, "c-taken"))
        s.commit()
    again = {s.name: s.value for f in metrics.registry.collect() for s in f.samples}
    assert again["biox_review_backlog_cases"] == 1.0  # read at each scrape, never stale


def _take_all(url: str, examiner: str, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    got = []
    with session_for(url) as s:
        while (case := examiners.take_next(s, examiner, 900)) is not None:
            got.append(case.case_id)
    out.put((examiner, got))  # type: ignore[attr-defined]


def test_two_examiners_racing_in_two_processes_never_get_the_same_case(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with session_for(url) as s:
        s.add_all(case_row(f"c-{i:03d}", opened_s_ago=1000 - i) for i in range(60))
        s.commit()
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(2), ctx.Queue()
    racers = [ctx.Process(target=_take_all, args=(url, e, start, out)) for e in ("a", "b")]
    for p in racers:
        p.start()
    results = dict(out.get(timeout=60) for _ in racers)
    for p in racers:
        p.join(10)
    a, b = set(results["a"]), set(results["b"])
    assert not a & b, f"both took {sorted(a & b)}"
    assert a | b == {f"c-{i:03d}" for i in range(60)}
    assert len(results["a"]) == len(a) and len(results["b"]) == len(b)
    with session_for(url) as s:
        for case_id in a:
            assert s.get(ReviewCaseRow, case_id).examiner == "a"


# --- the review worker's side ------------------------------------------------------------------


def decide(
    db: str,
    verdict: ReviewVerdict,
    ref: str | None,
    examiner: str,
    case_id="c-1",
    note=None,
    policy: ParticipantPolicy | None = None,
):
    decision = ReviewDecision(
        case_id=case_id,
        verdict=verdict,
        identity_ref=ref,
        examiner=examiner,
        decided_at=datetime(2026, 11, 22, 10, 30, tzinfo=UTC),
        note=note,
    )
    out = codec.to_own_inbox(
        decision, participant="mx", message_id=f"d-{examiner}", correlation_id=case_id
    )
    with session_for(db) as s:
        [result] = ReviewHandler("mx", policy or POLICIES.of("mx")).decide(
            [Inbound(out.envelope, decision)], s
        )
        if isinstance(result, Effects):
            s.add_all(result.rows)
            s.commit()
    return result


def test_a_match_decision_answers_with_the_chosen_candidate_as_the_examiner(db):
    result = decide(db, ReviewVerdict.match, "MX-000000002", "ex-1")
    assert isinstance(result, Effects) and result.outcome == "decided:match"
    [out] = result.outgoing  # mx has no automatic retrieval rule
    assert out.envelope.message_id == codec.derived_id("d-ex-1", "response")
    assert out.routing_key == "us.response"
    response = ROUTES.decode("response", "response/1", out.body)
    assert isinstance(response, Response)
    assert response.status is ResponseStatus.match and response.decided_by.value == "examiner"
    assert [c.identity_ref for c in response.candidates] == ["MX-000000002"]
    assert response.candidates[0].fused_score == 0.35
    with session_for(db) as s:
        case = s.get(ReviewCaseRow, "c-1")
        assert (case.status, case.verdict, case.examiner) == ("decided", "match", "ex-1")
        assert case.identity_ref == "MX-000000002"
        assert s.get(Transaction, ("c-1", "provider")).status == "match"


def test_a_decision_still_answers_when_the_providers_row_of_the_query_is_gone(db):
    """The provider's transaction may have been purged while the case waited: the
    requester still gets the examiner's answer, and no row is invented."""
    with session_for(db) as s:
        s.delete(s.get(Transaction, ("c-1", "provider")))
        s.commit()
    result = decide(db, ReviewVerdict.no_match, None, "ex-3")
    assert isinstance(result, Effects) and result.outcome == "decided:no_match"
    [out] = result.outgoing
    assert ROUTES.decode("response", "response/1", out.body).status is ResponseStatus.no_match
    assert not any(isinstance(r, Transaction) for r in result.rows)


def test_an_examiners_match_asks_for_more_when_the_policy_says_so_under_derived_ids(db):
    """§10 after §8: the automatic retrieval rule fires after a person's match as after
    the matcher's, about that record, with ids a redelivered decision derives again."""
    policy = ParticipantPolicy(
        release=[ReleaseRule(elements=list(Element))],
        retrieval=RetrievalRule(on="every_match", elements=[Element.biographic]),
    )
    result = decide(db, ReviewVerdict.match, "MX-000000001", "ex-3", policy=policy)
    assert isinstance(result, Effects) and result.outcome == "decided:match"
    response, ask = result.outgoing
    assert ask.envelope.message_id == codec.derived_id("d-ex-3", "retrieval.ask")
    assert ask.envelope.correlation_id == "c-1" and ask.routing_key == "mx.retrieval.ask"
    asked = ROUTES.decode("retrieval.ask", "retrieval.ask/1", ask.body)
    assert isinstance(asked, RetrievalAsk)
    assert (asked.query_id, asked.elements) == ("c-1", [Element.biographic])
    answer = ROUTES.decode("response", "response/1", response.body)
    assert [c.identity_ref for c in answer.candidates] == ["MX-000000001"]


def test_a_decision_is_kept_with_its_note_and_time_and_a_no_match_names_the_examiner(db):
    result = decide(db, ReviewVerdict.no_match, None, "ex-2", note="different scar")
    assert isinstance(result, Effects) and result.outcome == "decided:no_match"
    [out] = result.outgoing
    response = ROUTES.decode("response", "response/1", out.body)
    assert response.status is ResponseStatus.no_match
    assert response.decided_by.value == "examiner"
    with session_for(db) as s:
        case = s.get(ReviewCaseRow, "c-1")
        assert case.note == "different scar"
        assert case.decided_at == datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
        assert case.decided_at.tzinfo is UTC  # read back aware (store.UTCDateTime)


def test_a_second_decision_changes_neither_the_case_nor_the_answer(db):
    decide(db, ReviewVerdict.no_match, None, "first")
    second = decide(db, ReviewVerdict.match, "MX-000000001", "second")
    assert isinstance(second, Effects) and second.outcome == "already_decided"
    assert second.outgoing == [] and second.rows == []
    with session_for(db) as s:
        case = s.get(ReviewCaseRow, "c-1")
        assert (case.verdict, case.examiner, case.identity_ref) == ("no_match", "first", None)
        assert s.get(Transaction, ("c-1", "provider")).status == "no_match"


def test_a_match_on_someone_not_among_the_candidates_is_refused(db):
    result = decide(db, ReviewVerdict.match, "MX-000000003", "ex-1")
    assert isinstance(result, PermanentError) and result.reason is Reason.not_a_candidate
    with session_for(db) as s:
        assert s.get(ReviewCaseRow, "c-1").status == "pending"


def test_a_decision_that_overtook_its_case_is_retried(db):
    result = decide(db, ReviewVerdict.no_match, None, "ex-1", case_id="c-unknown")
    assert isinstance(result, TransientError) and result.reason is Reason.unknown_case


def test_the_decision_message_names_the_examiner_for_the_audit_trail(db):
    with session_for(db) as s:
        case = s.get(ReviewCaseRow, "c-1")
    out = examiners.decision_message("mx", case, ReviewVerdict.no_match, "ignored", "ex-9")
    assert out.envelope.headers[codec.H_ACTOR] == "ex-9"
    assert (out.exchange, out.routing_key) == ("biox.mx", "mx.review.decision")
    decision = ROUTES.decode("review.decision", "review.decision/1", out.body)
    assert isinstance(decision, ReviewDecision)
    assert decision.identity_ref is None  # a no-match names nobody
    assert out.envelope.correlation_id == "c-1"


def test_a_decided_case_is_never_taken_again_however_old_its_lease(db):
    with session_for(db) as s:
        s.add(case_row("c-done", opened_s_ago=9000, status="decided"))
        row = s.get(ReviewCaseRow, "c-1")
        row.status, row.taken_at = "decided", datetime.now(UTC) - timedelta(days=2)
        s.commit()
        assert examiners.take_next(s, "anyone", lease_s=900) is None


def test_the_examiner_sees_each_candidates_scores_and_record(db):
    with session_for(db) as s:
        sides = examiners.sides(s, s.get(ReviewCaseRow, "c-1"))
    assert [(x.identity_ref, x.fused_score, x.scores) for x in sides] == [
        ("MX-000000001", 0.45, {"face": 0.45}),
        ("MX-000000002", 0.35, {"face": 0.35}),
    ]
    assert [x.record.identity_ref for x in sides if x.record] == ["MX-000000001", "MX-000000002"]


def test_a_decision_carries_the_examiners_note_and_a_fresh_id(db):
    with session_for(db) as s:
        case = s.get(ReviewCaseRow, "c-1")
    a = examiners.decision_message("mx", case, ReviewVerdict.match, "MX-000000001", "e", "why")
    b = examiners.decision_message("mx", case, ReviewVerdict.match, "MX-000000001", "e", "why")
    decision = ROUTES.decode("review.decision", "review.decision/1", a.body)
    assert isinstance(decision, ReviewDecision)
    assert decision.note == "why" and decision.identity_ref == "MX-000000001"
    assert a.envelope.message_id != b.envelope.message_id  # two clicks are two decisions


def test_an_examiners_match_on_a_record_that_may_not_be_released_is_declined_as_theirs(db):
    """The examiner found the person, but the record is sealed (§9): the answer is a
    decline, and it is the examiner's decision, not the automatic matcher's."""
    with session_for(db) as s:
        s.get(Record, 2).releasable = False
        s.commit()
    result = decide(db, ReviewVerdict.match, "MX-000000002", "ex-3")
    assert isinstance(result, Effects)
    [out] = result.outgoing
    response = ROUTES.decode("response", "response/1", out.body)
    # the requester hears a no-match from the examiner (a decline would say a record
    # exists, issue 20); the provider's row keeps why
    assert response.status is ResponseStatus.no_match and response.reason_code is None
    assert response.decided_by.value == "examiner"
    assert response.candidates == []
    tx = next(r for r in result.rows if isinstance(r, Transaction))
    assert (tx.status, tx.reason_code) == ("declined", "record_not_releasable")


def test_a_record_blocked_after_its_case_opened_is_not_released_by_the_examiners_match(db):
    """Issue 20: a block holds on every path. The case was opened on record 1; its source
    then blocked it (§23); the examiner's later match releases nothing."""
    with session_for(db) as s:
        s.get(Record, 1).blocked_at = datetime(2026, 11, 21, tzinfo=UTC)
        s.commit()
    result = decide(db, ReviewVerdict.match, "MX-000000001", "ex-5")
    assert isinstance(result, Effects)
    response = ROUTES.decode("response", "response/1", result.outgoing[0].body)
    assert response.status is ResponseStatus.no_match and response.candidates == []
    assert len(result.outgoing) == 1  # and no retrieval asked after it


def test_a_match_on_a_candidate_whose_record_is_gone_is_refused(db):
    with session_for(db) as s:
        s.delete(s.get(Record, 2))  # deleted since the case opened (a correction, §23)
        s.commit()
    result = decide(db, ReviewVerdict.match, "MX-000000002", "ex-4")
    assert isinstance(result, PermanentError) and result.reason is Reason.not_a_candidate
    with session_for(db) as s:
        assert s.get(ReviewCaseRow, "c-1").status == "pending"


EVIDENCE = {
    "log_lr": 4.2,
    "modalities": {"face": 1.5, "finger": 2.7},
    "fpir": 0.004,
    "gallery_size": 2,
}


def test_a_calibrated_case_shows_the_examiner_the_evidence_and_the_answer_carries_it(db):
    """With a calibration the case holds each candidate's evidence: the examiner sees
    the log-LR per modality and the FPIR the score stands for, and the examiner's match
    hands the requester the same evidence."""
    from rich.console import Console

    from biox.render import case_table

    with session_for(db) as s:
        row = s.get(ReviewCaseRow, "c-1")
        row.candidates = [{**row.candidates[0]}, {**row.candidates[1], "evidence": EVIDENCE}]
        s.commit()
        sides = examiners.sides(s, s.get(ReviewCaseRow, "c-1"))
        shown = Console(width=200, record=True)
        shown.print(case_table(s.get(ReviewCaseRow, "c-1"), sides))
    assert [x.evidence for x in sides] == [None, EVIDENCE]
    lines = {
        line.split("│")[1].strip(): line for line in shown.export_text().splitlines() if "│" in line
    }
    assert "+2.7" in lines["finger log-LR"] and "+1.5" in lines["face log-LR"]
    assert "0.004" in lines["FPIR at this score"]
    result = decide(db, ReviewVerdict.match, "MX-000000002", "ex-1")
    assert isinstance(result, Effects)
    response = ROUTES.decode("response", "response/1", result.outgoing[0].body)
    assert isinstance(response, Response)
    assert response.candidates[0].evidence is not None
    assert response.candidates[0].evidence.model_dump() == EVIDENCE
