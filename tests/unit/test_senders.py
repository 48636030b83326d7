"""Who may send each kind (docs/workflows.md, "Who may send what"): the route table's
sender check, which the consume loop runs before decoding, then the handler's checks of
what the message says against who sent it. Routing already keeps a partner away from the
kinds a participant takes only from itself; these checks hold even when a message gets
past routing (a single broker, an operator's replay, a misconfigured link)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from biox.database import session_for
from biox.gallery.gallery import Gallery
from biox.handlers.base import Effects
from biox.handlers.matcher import MatcherHandler
from biox.handlers.response import ResponseHandler
from biox.handlers.retrieval import RetrievalHandler
from biox.handlers.review import ReviewHandler
from biox.policy.release import Policies
from biox.routes import ROUTES
from biox.settings import Settings
from biox.store import EncounterRow, RetrievalRow, Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    Element,
    Response,
    ResponseStatus,
    RetrievalAsk,
    RetrievalRequest,
    RetrievalResponse,
    RetrievalStatus,
    ReviewCase,
    ReviewDecision,
    ReviewVerdict,
    Timings,
)
from tests.registry import operating
from tests.unit.test_handlers import query_from, submit

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def env(kind: str, sender: str, recipient: str = "us", mid: str | None = None, **kw) -> Envelope:
    return Envelope(mid or str(uuid.uuid4()), kind, f"{kind}/1", sender, recipient, **kw)


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(EncounterRow(encounter_id="E-1", purpose="enforce", reply_to="r", partners=["mx"]))
        s.add(
            Transaction(
                query_id="q-mx",
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


def one(handler, envelope: Envelope, message, db: str):
    """The way the consume loop takes one message: sender check, then the kind's handler."""
    me = handler.me
    try:
        ROUTES.check_sender(
            envelope.kind, envelope.sender, me, lambda c: REGISTRY.get(c) is not None
        )
    except BioxError as exc:
        return exc
    with session_for(db) as s:
        [result] = ROUTES.routes[envelope.kind].handler(handler, [Inbound(envelope, message)], s)
        s.rollback()
    return result


def misaddressed(result) -> bool:
    return isinstance(result, PermanentError) and result.reason is Reason.misaddressed


# --- query (matcher) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "requesting", "providing", "reason"),
    [
        ("zz", "zz", "mx", Reason.unknown_participant),  # nobody the registry knows
        ("sv", "us", "mx", Reason.misaddressed),  # sv asking in us's name
        ("us", "us", "sv", Reason.misaddressed),  # a query for someone else
    ],
)
def test_the_matcher_takes_queries_only_from_their_named_requester(
    tmp_path, sender, requesting, providing, reason
):
    handler = MatcherHandler("mx", REGISTRY, Gallery(), Settings(), POLICIES.of("mx"))
    _e, q = query_from(submit(3))
    q.requesting, q.providing = requesting, providing
    result = one(
        handler,
        env("query", sender, "mx", correlation_id=q.query_id),
        q,
        f"sqlite:///{tmp_path / 'mx.db'}",
    )
    assert isinstance(result, PermanentError) and result.reason is reason


def test_the_matcher_does_not_answer_a_rejection_to_an_unknown_sender_or_itself():
    handler = MatcherHandler("mx", REGISTRY, Gallery(), Settings(), POLICIES.of("mx"))
    error = PermanentError(Reason.undecodable)
    assert handler.reject(env("query", "zz", "mx", correlation_id="q"), error) is None
    assert handler.reject(env("query", "mx", "mx", correlation_id="q"), error) is None
    assert handler.reject(env("query", "us", "mx"), error) is None  # no query id to answer
    answer = handler.reject(env("query", "us", "mx", mid="m-1", correlation_id="q"), error)
    assert answer is not None
    [out] = answer.outgoing
    assert out.routing_key == "us.response" and out.envelope.correlation_id == "q"
    assert out.envelope.message_id == codec.derived_id("m-1", "response")


# --- response ------------------------------------------------------------------------------


def response(providing: str = "mx", requesting: str = "us", query_id: str = "q-mx") -> Response:
    return Response(
        query_id=query_id,
        requesting=requesting,
        providing=providing,
        status=ResponseStatus.no_match,
        timings=Timings(received_at=NOW, answered_at=NOW),
    )


def test_a_response_is_taken_only_from_the_partner_that_was_queried(db):
    handler = ResponseHandler("us", POLICIES.of("us"))
    assert misaddressed(one(handler, env("response", "sv"), response(providing="sv"), db))
    assert misaddressed(one(handler, env("response", "sv"), response(providing="mx"), db))
    assert misaddressed(one(handler, env("response", "mx"), response(requesting="sv"), db))
    taken = one(handler, env("response", "mx"), response(), db)
    assert isinstance(taken, Effects) and taken.outcome == "no_match"


def test_a_response_to_a_query_not_yet_recorded_waits_in_the_retry_tiers(db):
    handler = ResponseHandler("us", POLICIES.of("us"))
    result = one(handler, env("response", "mx"), response(query_id="q-unknown"), db)
    assert isinstance(result, TransientError) and result.reason is Reason.unknown_query
    assert handler.reject(env("response", "mx"), result) is None  # never answered back


# --- review.case and review.decision: own participant only ---------------------------------


def test_review_messages_from_a_partner_are_refused(db):
    handler = ReviewHandler("us", POLICIES.of("us"))
    case = ReviewCase(
        case_id="c-1",
        query_id="q-1",
        requesting="mx",
        purpose="enforce",  # type: ignore[arg-type]
        encounter={"encountered_at": NOW, "country": "mx"},  # type: ignore[arg-type]
        candidates=[],
        opened_at=NOW,
    )
    decision = ReviewDecision(
        case_id="c-1", verdict=ReviewVerdict.no_match, examiner="x", decided_at=NOW
    )
    assert misaddressed(one(handler, env("review.case", "mx"), case, db))
    assert misaddressed(one(handler, env("review.decision", "mx"), decision, db))
    opened = one(handler, env("review.case", "us"), case, db)
    assert isinstance(opened, Effects) and opened.outcome == "case_opened"


# --- retrieval: ask (own), request (the partner that answered), response (the holder) -------


def test_a_retrieval_ask_is_taken_only_from_the_participant_itself(db):
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    ask = RetrievalAsk(query_id="q-mx", elements=[Element.biographic], asked_by="op")
    assert misaddressed(one(handler, env("retrieval.ask", "mx"), ask, db))


@pytest.mark.parametrize(
    ("sender", "asker", "holder", "mid_is_retrieval_id", "reason"),
    [
        ("zz", "zz", "us", True, Reason.unknown_participant),
        ("sv", "mx", "us", True, Reason.misaddressed),  # sv asking in mx's name
        ("mx", "mx", "sv", True, Reason.misaddressed),  # a request for another holder
        ("mx", "mx", "us", False, Reason.invalid_message),  # the id its sender knows it by
    ],
)
def test_a_retrieval_request_is_taken_only_from_the_asker_it_names(
    db, sender, asker, holder, mid_is_retrieval_id, reason
):
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    request = RetrievalRequest(
        retrieval_id="r-1",
        query_id="q-mx",
        asker=asker,
        holder=holder,
        identity_ref="MX-1",
        elements=[Element.biographic],
        sent_at=NOW,
    )
    mid = "r-1" if mid_is_retrieval_id else "other"
    result = one(handler, env("retrieval.request", sender, mid=mid), request, db)
    assert isinstance(result, PermanentError) and result.reason is reason


def test_a_retrieval_request_that_overtook_the_match_is_retried_not_refused(db):
    """mx's match answer to q-mx is not in yet (it travels on another queue): the request
    climbs the retry tiers instead of being declined for good."""
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    request = RetrievalRequest(
        retrieval_id="r-2",
        query_id="q-mx",
        asker="mx",
        holder="us",
        identity_ref="MX-1",
        elements=[Element.biographic],
        sent_at=NOW,
    )
    result = one(handler, env("retrieval.request", "mx", mid="r-2"), request, db)
    assert isinstance(result, TransientError) and result.reason is Reason.not_matched


def test_a_retrieval_request_about_another_partners_query_is_declined_not_retried(db):
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    request = RetrievalRequest(
        retrieval_id="r-3",
        query_id="q-mx",  # sent to mx, not to sv
        asker="sv",
        holder="us",
        identity_ref="SV-1",
        elements=[Element.biographic],
        sent_at=NOW,
    )
    result = one(handler, env("retrieval.request", "sv", mid="r-3"), request, db)
    assert isinstance(result, Effects)
    [out] = result.outgoing
    answer = ROUTES.decode(out.envelope.kind, out.envelope.schema, out.body)
    assert isinstance(answer, RetrievalResponse)
    assert answer.status is RetrievalStatus.declined and answer.reason_code is Reason.not_matched
    assert answer.withheld == [Element.biographic] and answer.data is None
    assert out.routing_key == "sv.retrieval.response"


def test_a_retrieval_response_is_taken_only_from_the_holder_that_was_asked(db):
    with session_for(db) as s:
        s.add(
            RetrievalRow(
                retrieval_id="r-4",
                role="asker",
                query_id="q-9",
                asker="us",
                holder="mx",
                identity_ref="US-1",
                elements=["biographic"],
            )
        )
        s.commit()
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))

    def answer(holder: str, asker: str = "us") -> RetrievalResponse:
        return RetrievalResponse(
            retrieval_id="r-4",
            query_id="q-9",
            asker=asker,
            holder=holder,
            status=RetrievalStatus.declined,
            answered_at=NOW,
        )

    assert misaddressed(one(handler, env("retrieval.response", "sv"), answer("mx"), db))
    assert misaddressed(one(handler, env("retrieval.response", "sv"), answer("sv"), db))
    assert misaddressed(one(handler, env("retrieval.response", "mx"), answer("mx", "sv"), db))
    unknown = RetrievalResponse(
        retrieval_id="r-none",
        query_id="q",
        asker="us",
        holder="mx",
        status=RetrievalStatus.declined,
        answered_at=NOW,
    )
    refused = one(handler, env("retrieval.response", "mx"), unknown, db)
    assert isinstance(refused, PermanentError) and refused.reason is Reason.unknown_retrieval
    kept = one(handler, env("retrieval.response", "mx"), answer("mx"), db)
    assert isinstance(kept, Effects) and kept.outcome == "received:declined"


def test_only_a_known_partners_unreadable_retrieval_request_is_answered_rejected():
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    error = PermanentError(Reason.undecodable)
    assert handler.reject(env("retrieval.request", "zz", correlation_id="q"), error) is None
    assert handler.reject(env("retrieval.request", "us", correlation_id="q"), error) is None
    assert handler.reject(env("retrieval.response", "mx", correlation_id="q"), error) is None
    assert handler.reject(env("retrieval.request", "mx"), error) is None  # no query id
    answer = handler.reject(env("retrieval.request", "mx", mid="r-9", correlation_id="q"), error)
    assert answer is not None
    [out] = answer.outgoing
    rejected = ROUTES.decode(out.envelope.kind, out.envelope.schema, out.body)
    assert isinstance(rejected, RetrievalResponse)
    assert rejected.status is RetrievalStatus.rejected and rejected.retrieval_id == "r-9"
    assert rejected.reason_code is Reason.undecodable and out.routing_key == "mx.retrieval.response"


def test_a_retrieval_request_about_a_query_never_sent_is_declined(db):
    handler = RetrievalHandler("us", REGISTRY, POLICIES.of("us"))
    request = RetrievalRequest(
        retrieval_id="r-9",
        query_id="q-never",
        asker="mx",
        holder="us",
        identity_ref="MX-1",
        elements=[Element.biographic],
        sent_at=NOW,
    )
    result = one(handler, env("retrieval.request", "mx", mid="r-9"), request, db)
    assert isinstance(result, Effects)
    [out] = result.outgoing
    answer = ROUTES.decode(out.envelope.kind, out.envelope.schema, out.body)
    assert answer.status is RetrievalStatus.declined and answer.reason_code is Reason.not_matched
    assert answer.reason == "no query of ours was answered by mx"
    assert out.envelope.correlation_id == "q-never"
