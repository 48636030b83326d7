"""Handlers are plain functions of (messages, session) → effects: tested without a broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from biox.database import session_for
from biox.gallery.gallery import Gallery
from biox.handlers.base import Effects
from biox.handlers.intake import IntakeHandler
from biox.handlers.matcher import MatcherHandler
from biox.handlers.response import ResponseHandler
from biox.policy.release import Policies
from biox.registry import Purpose
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim import galleries, synth
from biox.store import EncounterRow, Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    EncounterResult,
    EncounterSubmit,
    Query,
    Response,
    ResponseStatus,
    SubjectStatus,
)
from tests.registry import operating

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
SEED = 5
SIZE = 1500


def envelope(kind: str, sender: str, recipient: str, **kw) -> Envelope:
    return Envelope(
        message_id=str(uuid.uuid4()),
        kind=kind,
        schema=f"{kind}/1",
        sender=sender,
        recipient=recipient,
        timestamp=datetime.now(UTC),
        **kw,
    )


def submit(person: int = 10, status: SubjectStatus | None = None, purpose=Purpose.enforce):
    rng = np.random.default_rng(person)
    return EncounterSubmit(
        encounter_id=f"E-{person}",
        purpose=purpose,
        subject_status=status or SubjectStatus(citizenships=["gt"]),
        biometrics=synth.capture(SEED, person, context=2),
        encounter=synth.encounter_here("us", rng),
    )


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'biox.db'}"


def test_intake_sends_one_query_per_agreed_partner_and_records_them(db):
    env = envelope("encounter.submit", "us", "us", reply_to="replies", correlation_id="E-10")
    with session_for(db) as s:
        handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
        [effects] = handler.submit([Inbound(env, submit())], s)
    assert isinstance(effects, Effects)
    *sent, first = effects.outgoing
    assert sorted(o.routing_key for o in sent) == ["mx.query", "sv.query"]
    assert {o.exchange for o in sent} == {"biox.us.out"}
    encounter, *queries = effects.rows
    assert isinstance(encounter, EncounterRow) and encounter.partners == ["mx", "sv"]
    assert {r.providing for r in queries} == {"mx", "sv"}
    assert all(r.reply_to == "replies" for r in [encounter, *queries])
    # revision 1 goes with the queries: every partner pending, with when it is due (issue 21)
    assert (first.exchange, first.routing_key) == ("biox.us.results", "replies")
    assert first.envelope.message_id == codec.derived_id(env.message_id, "sent")
    result = ROUTES.decode("encounter.result", "encounter.result/1", first.body)
    assert (result.status.value, result.revision, encounter.revision) == ("pending", 1, 1)
    assert result.submission_id == env.message_id
    assert [(o.partner, o.status.value) for o in result.outcomes] == [
        ("mx", "pending"),
        ("sv", "pending"),
    ]
    due = {q.providing: q.answer_due for q in queries}
    assert all(o.answer_due == due[o.partner] and o.sent_at for o in result.outcomes)
    for out in sent:  # a redelivered submission makes the same query ids
        partner = out.routing_key.split(".")[0]
        assert out.envelope.message_id == codec.derived_id(env.message_id, "query", partner)
        assert out.envelope.correlation_id == out.envelope.message_id
    days = POLICIES.of("us").encounter_retention_days
    kept = encounter.retain_until - encounter.submitted_at
    assert abs(kept - timedelta(days=days)) < timedelta(seconds=5)


def test_intake_refuses_citizens_with_a_reply(db):
    env = envelope("encounter.submit", "us", "us", reply_to="replies", correlation_id="E-10")
    handler = IntakeHandler("us", REGISTRY)
    with session_for(db) as s:
        [err] = handler.submit([Inbound(env, submit(status=SubjectStatus(citizenships=["us"])))], s)
    assert isinstance(err, PermanentError) and err.reason is Reason.excluded_citizen
    answer = handler.reject(env, err)
    assert answer is not None
    result = ROUTES.decode("encounter.result", "encounter.result/1", answer.outgoing[0].body)
    assert isinstance(result, EncounterResult)
    assert result.status.value == "refused" and result.reason_code is Reason.excluded_citizen
    assert answer.outgoing[0].routing_key == "replies"
    # every other participant is listed, skipped with its own reason (issue 21 (4))
    assert [(o.partner, o.status.value, o.reason_code) for o in result.outcomes] == [
        ("mx", "skipped", Reason.excluded_citizen),
        ("sv", "skipped", Reason.excluded_citizen),
    ]
    other = handler.reject(env, PermanentError(Reason.no_biometrics))
    refused = ROUTES.decode("encounter.result", "encounter.result/1", other.outgoing[0].body)
    assert refused.outcomes == []  # refused before any partner was considered


def test_intake_without_reply_to_cannot_answer_and_dead_letters():
    env = envelope("encounter.submit", "us", "us")
    assert IntakeHandler("us", REGISTRY).reject(env, PermanentError(Reason.undecodable)) is None


@pytest.fixture(scope="module")
def matcher_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mx")
    db = f"sqlite:///{d / 'biox.db'}"
    gallery = galleries.populate("mx", SIZE, SEED, db, d / "gallery")
    return db, MatcherHandler("mx", REGISTRY, gallery, Settings(), POLICIES.of("mx"))


def query_from(sub: EncounterSubmit, provider: str = "mx", purpose=None) -> tuple[Envelope, Query]:
    now = datetime.now(UTC)
    qid = str(uuid.uuid4())
    q = Query(
        query_id=qid,
        requesting="us",
        providing=provider,
        purpose=purpose or sub.purpose,
        references={"transaction_id": qid, "encounter_id": sub.encounter_id},
        subject_status=sub.subject_status,
        biometrics=sub.biometrics,
        encounter=sub.encounter,
        created_at=now,
        sent_at=now,
    )
    return envelope("query", "us", provider, correlation_id=qid), q


def test_matcher_answers_a_batch_with_match_and_no_match(matcher_setup):
    db, handler = matcher_setup
    rng = np.random.default_rng(1)
    mated = synth.known_to("mx", SIZE, rng)
    stranger = synth.stranger(SEED, {"mx": SIZE}, rng)
    batch = [Inbound(*query_from(submit(mated))), Inbound(*query_from(submit(stranger)))]
    with session_for(db) as s:
        results = handler.search(batch, s)
    responses = [ROUTES.decode("response", "response/1", r.outgoing[0].body) for r in results]
    assert [r.status for r in responses] == [ResponseStatus.match, ResponseStatus.no_match]
    assert responses[0].candidates[0].identity_ref == synth.identity_ref("mx", mated)
    assert responses[0].candidates[0].record is not None  # the releasable record travels
    assert results[0].outgoing[0].routing_key == "us.response"
    assert results[0].rows[0].role == "provider"


def test_matcher_declines_an_unagreed_purpose_and_rejects_bad_templates(matcher_setup):
    """A purpose outside the agreement is a decision (declined, §9); a broken template is
    a query that cannot be processed (rejected). Each message gets its own answer."""
    db, _ = matcher_setup
    handler = MatcherHandler("sv", REGISTRY, Gallery(), Settings(), POLICIES.of("sv"))
    env, q = query_from(submit(3), provider="sv", purpose=Purpose.adjudicate)
    bad_env, bad = query_from(submit(4), provider="sv", purpose=Purpose.enforce)
    bad.biometrics.face.template = b"\x00" * 12
    with session_for(db) as s:
        declined, err = handler.search([Inbound(env, q), Inbound(bad_env, bad)], s)
    response = ROUTES.decode("response", "response/1", declined.outgoing[0].body)
    assert isinstance(response, Response)
    assert response.status is ResponseStatus.declined
    assert response.reason_code is Reason.purpose_not_agreed
    assert declined.rows[0].status == "declined"
    assert isinstance(err, PermanentError) and err.reason is Reason.template_size
    rejected = handler.reject(bad_env, err)
    response = ROUTES.decode("response", "response/1", rejected.outgoing[0].body)
    assert response.status is ResponseStatus.rejected
    assert response.reason_code is Reason.template_size


def test_response_handler_stores_provenance_and_replies(db):
    with session_for(db) as s:
        s.add(
            EncounterRow(encounter_id="E-9", purpose="enforce", reply_to="replies", partners=["mx"])
        )
        s.add(
            Transaction(
                query_id="q1",
                role="requester",
                encounter_id="E-9",
                requesting="us",
                providing="mx",
                purpose="enforce",
                reply_to="replies",
                status="pending",
            )
        )
        s.commit()
        now = datetime.now(UTC)
        r = Response(
            query_id="q1",
            requesting="us",
            providing="mx",
            status=ResponseStatus.no_match,
            timings={"received_at": now, "answered_at": now},
        )
        env = envelope("response", "mx", "us", correlation_id="q1")
        [effects] = ResponseHandler("us", POLICIES.of("us")).receive([Inbound(env, r)], s)
    tx = effects.rows[0]
    assert tx.status == "no_match" and tx.source == "mx" and tx.source_message_id == env.message_id
    assert tx.retain_until is None  # a no-match carries no partner data to keep
    assert effects.outgoing[0].envelope.message_id == codec.derived_id(env.message_id, "result")
    result = ROUTES.decode("encounter.result", "encounter.result/1", effects.outgoing[0].body)
    [outcome] = result.outcomes
    assert outcome.partner == "mx" and outcome.status.value == "no_match"
    assert result.status.value == "complete" and result.revision == 1
    assert effects.outgoing[0].envelope.correlation_id == "E-9"


def test_response_for_an_unknown_query_is_refused(db):
    now = datetime.now(UTC)
    r = Response(
        query_id="nope",
        requesting="us",
        providing="mx",
        status=ResponseStatus.match,
        timings={"received_at": now, "answered_at": now},
    )
    with session_for(db) as s:
        [err] = ResponseHandler("us", POLICIES.of("us")).receive(
            [Inbound(envelope("response", "mx", "us"), r)], s
        )
    assert isinstance(err, TransientError) and err.reason is Reason.unknown_query


def test_a_second_submission_of_an_encounter_in_the_same_batch_is_refused_and_the_rest_go_on(
    db,
):
    """Encounter ids are unique across a batch as across the database: the copy is refused
    as a duplicate, what follows it is handled, and a refused one does not count as seen."""
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))

    def inbound(sub: EncounterSubmit) -> Inbound[EncounterSubmit]:
        env = envelope(
            "encounter.submit", "us", "us", reply_to="r", correlation_id=sub.encounter_id
        )
        return Inbound(env, sub)

    citizen = submit(11, status=SubjectStatus(citizenships=["us"]))
    retry_of_citizen = submit(11)  # the same id, resubmitted after its refusal
    batch = [submit(10), submit(10), citizen, retry_of_citizen, submit(12)]
    with session_for(db) as s:
        results = handler.submit([inbound(b) for b in batch], s)
    kinds = [r.reason.value if isinstance(r, PermanentError) else type(r).__name__ for r in results]
    assert kinds == ["Effects", "duplicate_encounter", "excluded_citizen", "Effects", "Effects"]
    assert results[1].detail == "encounter E-10"
    assert [r.rows[0].encounter_id for r in results if isinstance(r, Effects)] == [
        "E-10",
        "E-11",
        "E-12",
    ]


def test_a_submission_addressed_to_another_participant_is_refused_as_misaddressed(db):
    """Issue 21 (7): biox-to naming mx on us's intake is not processed as if for us."""
    env = envelope("encounter.submit", "us", "mx", reply_to="replies", correlation_id="E-10")
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    with session_for(db) as s:
        [err] = handler.submit([Inbound(env, submit())], s)
    assert isinstance(err, PermanentError) and err.reason is Reason.misaddressed
    assert "biox-to 'mx'" in err.detail
    answer = handler.reject(env, err)
    result = ROUTES.decode("encounter.result", "encounter.result/1", answer.outgoing[0].body)
    assert (result.status.value, result.reason_code) == ("refused", Reason.misaddressed)
