"""What handlers tell the people who run them: the detail of each refusal (it travels in a
``rejected`` answer's ``reason`` or a dead letter's ``biox-error``), the log events on-call
staff watch for, how each handler is built for its worker, and how a matcher picks up
what other matchers enrolled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import pytest
from sqlalchemy import event, update
from sqlmodel import select
from structlog.testing import capture_logs

from biox.database import engine_for, session_for
from biox.gallery.gallery import Gallery
from biox.gallery.snapshot import Mark
from biox.handlers.base import Context, Effects
from biox.handlers.matcher import MatcherHandler
from biox.handlers.response import ResponseHandler
from biox.handlers.retrieval import RetrievalHandler
from biox.handlers.review import ReviewHandler
from biox.policy.release import Policies
from biox.queries import examiners
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim import synth
from biox.store import AuditEntry, EnrolledTemplates, RetrievalRow, ReviewCaseRow, Transaction
from biox.trust.sealing import Trust
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    Element,
    Response,
    RetrievalRequest,
    RetrievalResponse,
    ReviewDecision,
    ReviewVerdict,
)
from tests.registry import operating
from tests.unit.test_review import case_row

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
AT = datetime(2026, 11, 20, tzinfo=UTC)


def env(kind: str, sender: str, mid: str = "m-1") -> Envelope:
    return Envelope(mid, kind, f"{kind}/1", sender, "us", "q-1")


def one(handler, kind: str, message, db: str, sender: str, mid: str = "m-1"):
    with session_for(db) as s:
        [result] = ROUTES.routes[kind].handler(
            handler, [Inbound(env(kind, sender, mid), message)], s
        )
        if isinstance(result, Effects):
            s.add_all(result.rows)
            s.commit()
    return result


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(
            Transaction(
                query_id="q-1",
                role="requester",
                encounter_id="E-1",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="pending",
            )
        )
        s.commit()
    return url


# --- the detail of each refusal -----------------------------------------------------------------


def test_each_refusal_of_an_answer_says_what_did_not_fit(db):
    handler = ResponseHandler("us", POLICIES.of("us"))

    def answer(**kw) -> Response:
        values = {
            "query_id": "q-1",
            "requesting": "us",
            "providing": "mx",
            "status": "no_match",
            "timings": {"received_at": AT, "answered_at": AT},
            **kw,
        }
        return Response(**values)

    wrong = one(handler, "response", answer(requesting="sv"), db, "mx")
    assert str(wrong) == "misaddressed: response is for 'sv'"
    other = one(handler, "response", answer(providing="sv"), db, "sv")
    assert str(other) == "misaddressed: query q-1 was sent to mx, not sv"
    unknown = one(handler, "response", answer(query_id="q-9"), db, "mx")
    assert str(unknown) == "unknown_query: no query q-9 sent to mx"


def test_each_refusal_of_a_retrieval_says_what_did_not_fit(db):
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))

    def request(**kw) -> RetrievalRequest:
        values = {
            "retrieval_id": "r-1",
            "query_id": "q-1",
            "asker": "mx",
            "holder": "us",
            "identity_ref": "MX-1",
            "elements": [Element.biographic],
            "sent_at": AT,
            "justification": "check",
            **kw,
        }
        return RetrievalRequest(**values)

    assert str(one(handler, "retrieval.request", request(holder="sv"), db, "mx", "r-1")) == (
        "misaddressed: request from mx names mx → sv"
    )
    assert str(one(handler, "retrieval.request", request(), db, "mx", "other")) == (
        "invalid_message: retrieval_id must be the request's message_id"
    )
    assert str(one(handler, "retrieval.request", request(), db, "mx", "r-1")) == (
        "not_matched: no answer from mx to q-1 received yet"
    )
    with session_for(db) as s:
        s.get(Transaction, ("q-1", "requester")).status = "match"
        s.get(Transaction, ("q-1", "requester")).answer = {"status": "match"}
        s.commit()
    answered = one(handler, "retrieval.request", request(), db, "mx", "r-1")
    assert isinstance(answered, Effects)  # no encounter behind the query: declined
    held = next(r for r in answered.rows if isinstance(r, RetrievalRow))
    assert (held.status, held.reason_code, held.justification) == (
        "declined",
        "not_matched",
        "check",
    )
    assert held.answered_at is not None

    def response(**kw) -> RetrievalResponse:
        values = {
            "retrieval_id": "r-x",
            "query_id": "q-1",
            "asker": "us",
            "holder": "mx",
            "status": "declined",
            "answered_at": AT,
            **kw,
        }
        return RetrievalResponse(**values)

    assert str(one(handler, "retrieval.response", response(), db, "mx")) == (
        "unknown_retrieval: r-x"
    )
    with session_for(db) as s:
        s.add(
            RetrievalRow(
                retrieval_id="r-x",
                role="asker",
                query_id="q-1",
                asker="us",
                holder="mx",
                identity_ref="US-1",
                elements=["biographic"],
            )
        )
        s.commit()
    assert str(one(handler, "retrieval.response", response(), db, "sv")) == (
        "misaddressed: retrieval r-x was sent to mx, answered by sv"
    )
    kept = one(handler, "retrieval.response", response(reason_code="release_not_agreed"), db, "mx")
    assert isinstance(kept, Effects)
    [row] = kept.rows
    assert row.reason_code == "release_not_agreed" and row.retain_until is None  # no data


def test_each_refusal_of_a_decision_names_the_case_and_the_identity(tmp_path):
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add(case_row("c-1"))
        s.commit()
    handler = ReviewHandler("mx", POLICIES.of("mx"))

    def decision(case_id: str, ref: str | None) -> ReviewDecision:
        return ReviewDecision(
            case_id=case_id,
            verdict=ReviewVerdict.match,
            identity_ref=ref,
            examiner="e",
            decided_at=AT,
        )

    assert str(one(handler, "review.decision", decision("c-9", None), url, "mx")) == (
        "unknown_case: c-9"
    )
    assert str(one(handler, "review.decision", decision("c-1", "MX-9"), url, "mx")) == (
        "not_a_candidate: 'MX-9' in case c-1"
    )


# --- the log events on-call staff watch for --------------------------------------------------


def test_a_late_or_second_answer_is_logged_with_what_was_kept(db):
    handler = ResponseHandler("us", POLICIES.of("us"))
    answer = Response(
        query_id="q-1",
        requesting="us",
        providing="mx",
        status="no_match",
        timings={"received_at": AT, "answered_at": AT},
    )
    one(handler, "response", answer, db, "mx", "a-1")
    with capture_logs() as logs:
        matched = Response.model_validate({**answer.model_dump(), "status": "match"})
        late = one(handler, "response", matched, db, "mx", "a-2")
    assert isinstance(late, Effects) and late.outcome == "superseded"
    [entry] = [e for e in logs if e["event"] == "answer_after_final"]
    assert {k: entry[k] for k in ("query_id", "kept", "ignored", "message_id")} == {
        "query_id": "q-1",
        "kept": "no_match",
        "ignored": "match",
        "message_id": "a-2",
    }


def test_a_second_decision_is_logged_with_both_examiners(tmp_path):
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add(case_row("c-1", status="decided", examiner="first"))
        s.commit()
    decision = ReviewDecision(
        case_id="c-1", verdict=ReviewVerdict.no_match, examiner="second", decided_at=AT
    )
    with capture_logs() as logs:
        one(ReviewHandler("mx", POLICIES.of("mx")), "review.decision", decision, url, "mx")
    [entry] = [e for e in logs if e["event"] == "case_already_decided"]
    assert (entry["query_id"], entry["examiner"], entry["decided_by"]) == ("c-1", "second", "first")


def test_a_second_retrieval_answer_is_logged_with_what_was_kept(db):
    with session_for(db) as s:
        s.add(
            RetrievalRow(
                retrieval_id="r-2",
                role="asker",
                query_id="q-1",
                asker="us",
                holder="mx",
                identity_ref="US-1",
                elements=["biographic"],
                status="released",
            )
        )
        s.commit()
    answer = RetrievalResponse(
        retrieval_id="r-2",
        query_id="q-1",
        asker="us",
        holder="mx",
        status="declined",
        answered_at=AT,
    )
    with capture_logs() as logs:
        again = one(
            RetrievalHandler("us", REGISTRY, POLICIES.of("us")),
            "retrieval.response",
            answer,
            db,
            "mx",
        )
    assert isinstance(again, Effects) and again.outcome == "superseded"
    [entry] = [e for e in logs if e["event"] == "retrieval_answered_twice"]
    assert (entry["query_id"], entry["kept"]) == ("q-1", "released")


# --- built for its worker ---------------------------------------------------------------------


def test_every_queue_builds_its_handler_for_the_participant(tmp_path):
    settings = Settings(data_dir=tmp_path)
    ctx = Context("mx", REGISTRY, POLICIES.of("mx"), settings)
    with capture_logs() as logs:
        for queue in ROUTES.queues.values():
            handler = queue.handler.build(ctx)
            assert handler.me == "mx"  # type: ignore[attr-defined]
            if hasattr(handler, "policy"):
                assert handler.policy is ctx.policy  # type: ignore[attr-defined]
            if hasattr(handler, "registry"):
                assert handler.registry is ctx.registry  # type: ignore[attr-defined]
            if hasattr(handler, "trust"):  # the partners' keys, from the keys directory
                assert isinstance(handler.trust, Trust)  # type: ignore[attr-defined]
    [empty] = [e for e in logs if e["event"] == "empty_gallery"]
    assert empty["participant"] == "mx"
    assert empty["directory"] == str(settings.gallery_dir("mx"))
    # no snapshot yet: an empty gallery that enrolments fill, not a matcher that cannot search
    assert MatcherHandler.build(ctx).gallery.size == 0


def test_a_matcher_loads_the_gallery_snapshot_with_the_configured_probes(tmp_path):
    from biox.sim import galleries

    settings = Settings(data_dir=tmp_path, index="ivf", ivf_nprobe=7)
    galleries.build_gallery(settings, "mx", 300, 3)
    ctx = Context("mx", REGISTRY, POLICIES.of("mx"), settings)
    matcher = MatcherHandler.build(ctx)
    assert matcher.gallery.size == 300 and matcher.gallery.face.nprobe == 7
    assert matcher.settings is settings


# --- what other matchers enrolled ------------------------------------------------------------


def enrolled(db: str, record_id: int, biometrics: bytes, when: datetime) -> int:
    with session_for(db) as s:
        row = EnrolledTemplates(record_id=record_id, biometrics=biometrics, enrolled_at=when)
        s.add(row)
        s.commit()
        assert row.seq is not None
        return row.seq


def test_a_matcher_adds_each_enrolment_once_and_skips_an_unreadable_one(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    matcher = MatcherHandler(
        "mx", REGISTRY, Gallery(), Settings(gallery_sync_s=3600), POLICIES.of("mx")
    )
    bio = msgpack.packb(synth.capture(3, 5, context=1).model_dump(mode="python"), use_bin_type=True)
    old = datetime.now(UTC) - timedelta(hours=1)  # beyond the one-minute look-back
    enrolled(db, (1 << 61) + 1, bio, old)
    bad_seq = enrolled(db, (1 << 61) + 2, b"\xc1", old)
    with session_for(db) as s, capture_logs() as logs:
        assert matcher.catch_up(s) == 1
        assert matcher.catch_up(s) == 0  # within BIOX_GALLERY_SYNC_S: not read again
    [bad] = [e for e in logs if e["event"] == "enrolment_unreadable"]
    assert (bad["seq"], bad["record_id"]) == (bad_seq, (1 << 61) + 2)
    assert bad["error"] == "FormatError: "  # msgpack's own message for a reserved byte is empty
    [loaded] = [e for e in logs if e["event"] == "enrolments_loaded"]
    assert (loaded["count"], loaded["gallery"]) == (1, 1)
    assert matcher.gallery.size == 1

    enrolled(db, (1 << 61) + 3, bio, old)  # a later sequence, committed an hour "ago"
    matcher.follower.synced_at = float("-inf")
    with session_for(db) as s:
        assert matcher.catch_up(s) == 1  # found by its sequence, above the last one seen
        matcher.follower.synced_at = float("-inf")
        assert matcher.catch_up(s) == 0  # each row once


def test_a_late_commit_of_a_lower_sequence_is_found_by_its_recent_time(tmp_path):
    db = f"sqlite:///{tmp_path / 'mx.db'}"
    matcher = MatcherHandler(
        "mx", REGISTRY, Gallery(), Settings(gallery_sync_s=0), POLICIES.of("mx")
    )
    bio = msgpack.packb(synth.capture(3, 6, context=1).model_dump(mode="python"), use_bin_type=True)
    enrolled(db, (1 << 61) + 5, bio, datetime.now(UTC))
    matcher._mark = Mark(10)  # as if higher sequences had been seen already
    with session_for(db) as s:
        assert matcher.catch_up(s) == 1
        assert matcher.catch_up(s) == 0  # still within the look-back: not added again
    assert matcher.gallery.size == 1


# --- two examiners, one case -------------------------------------------------------------------


def test_a_case_taken_between_the_listing_and_the_update_is_not_taken_twice(tmp_path):
    """Another examiner takes the case after this one listed it: the conditional update
    finds it no longer free and this examiner gets nothing."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with session_for(url) as s:
        s.add(case_row("c-1"))
        s.commit()
    engine = engine_for(url)
    raced: list[bool] = []

    def other_examiner_first(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE REVIEW_CASES") and not raced:
            raced.append(True)
            with engine.connect() as other:
                other.execute(
                    update(ReviewCaseRow)
                    .where(ReviewCaseRow.case_id == "c-1")
                    .values(status="in_review", examiner="other", taken_at=datetime.now(UTC))
                )
                other.commit()

    event.listen(engine, "before_cursor_execute", other_examiner_first)
    try:
        with session_for(url) as s:
            assert examiners.take_next(s, "me", lease_s=900) is None
    finally:
        event.remove(engine, "before_cursor_execute", other_examiner_first)
    assert raced
    with session_for(url) as s:
        assert s.get(ReviewCaseRow, "c-1").examiner == "other"


def test_an_unreadable_retrieval_request_is_answered_rejected_with_its_reason_in_words():
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    env = Envelope("r-7", "retrieval.request", "retrieval.request/1", "mx", "us", "q-7")
    for error, words in (
        (
            PermanentError(Reason.invalid_message, "elements: field required"),
            "elements: field required",
        ),
        (PermanentError(Reason.undecodable), REASON_TEXT[Reason.undecodable]),
    ):
        effects = handler.reject(env, error)
        assert effects is not None and effects.outcome == f"rejected:{error.reason.value}"
        [out] = effects.outgoing
        answer = codec.decode_body(RetrievalResponse, out.envelope.schema, out.body)
        assert (answer.status.value, answer.reason_code, answer.reason) == (
            "rejected",
            error.reason,
            words,
        )
        assert (answer.retrieval_id, answer.query_id, out.envelope.recipient) == (
            "r-7",
            "q-7",
            "mx",
        )
        assert out.envelope.correlation_id == "q-7"


def test_each_audit_entry_is_counted_by_its_direction(tmp_path: Path) -> None:
    from biox.handlers.audit import AuditHandler

    env = Envelope("m-1", "query", "query/1", "mx", "us", "q-1", user_id="mx.link")
    batch = [
        Inbound(env, None, b"x", "biox.us", "us.query"),
        Inbound(env, None, b"x", "biox.us.out", "mx.query"),
        Inbound(env, None, b"x", "biox.us", "us.dead-letter.query"),
        Inbound(env, None, b"x", "biox.us", "us.retry.query.5"),
    ]
    with session_for(f"sqlite:///{tmp_path}/a.db") as s:
        results = AuditHandler("us").chain(batch, s)
        stored = s.exec(select(AuditEntry).order_by(AuditEntry.seq)).all()
    assert [r.outcome for r in results] == [
        "audited:in",
        "audited:out",
        "audited:dead-letter",
        "audited:retry",
    ]
    assert [e.provenance for e in stored] == ["mx", "us", "mx", "mx"]
