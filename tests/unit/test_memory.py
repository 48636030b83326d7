"""The in-memory exchange behaves as the broker does where the tests rely on it: topic
matching, the delivery limit, retry tiers (docs/testing.md, "In memory")."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlmodel import Session

from biox.broker.memory import InMemoryExchange, topic_matches
from biox.handlers.base import Context, Effects, Handler, Result
from biox.routes import Queue, RouteTable, Sender, route
from biox.settings import Settings
from biox.wire import codec
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import BioxError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import Element, RetrievalAsk


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("us.query", "us.query", True),
        ("us.query", "us.response", False),
        ("us.*", "us.query", True),
        ("us.*", "us.review.case", False),
        ("us.#", "us.review.case", True),
        ("us.#", "us", True),
        ("*.query", "mx.query", True),
        ("us.retry.#", "us.retry.query.5", True),
        ("#", "anything.at.all", True),
        ("us.retry.query.*", "us.retry.query", False),
    ],
)
def test_topic_patterns_match_as_amqp_says(pattern, key, matches):
    assert topic_matches(pattern, key) is matches


class Stubborn(Handler):
    """Answers every ask with a message to an exchange nobody declared, or a retry."""

    retry = False
    calls = 0

    @classmethod
    def build(cls, ctx: Context) -> Stubborn:
        return cls()

    def handle(self, batch: Sequence[Inbound[RetrievalAsk]], session: Session) -> list[Result]:
        Stubborn.calls += 1
        if Stubborn.retry and Stubborn.calls == 1:
            return [TransientError(Reason.unknown_query, "later") for _ in batch]
        out = Outgoing(
            "biox.nowhere",
            "x",
            b"",
            Envelope(
                "o-" + batch[0].envelope.message_id, "retrieval.ask", "retrieval.ask/1", "us", "us"
            ),
        )
        if Stubborn.retry:
            return [Effects() for _ in batch]
        return [Effects(outgoing=[out]) for _ in batch]

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None


def exchange(tmp_path, retries: str = "1") -> InMemoryExchange:
    table = RouteTable(
        [Queue("retrieval", Stubborn)],  # type: ignore[list-item]
        [route(RetrievalAsk, "retrieval", Stubborn.handle, Sender.own)],  # type: ignore[arg-type]
    )
    settings = Settings(data_dir=tmp_path, retry_delays=retries, delivery_limit=3)
    return InMemoryExchange(settings, codes=["us"], routes=table)


def ask() -> Outgoing:
    message = RetrievalAsk(query_id="q", elements=[Element.biographic], asked_by="x")
    return codec.to_own_inbox(message, participant="us", message_id="m-1", correlation_id="q")


def test_a_message_whose_output_can_never_be_published_is_parked_after_the_limit(tmp_path):
    Stubborn.retry, Stubborn.calls = False, 0
    ex = exchange(tmp_path)
    ex.publish(ask())
    ex.run()
    [parked] = ex.dead_letters("us", "retrieval")
    assert parked.properties.message_id == "m-1"
    assert parked.properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert Stubborn.calls == 1  # handled once; then only its stored output was retried
    assert ex.broker.queues["us.retrieval"] == type(ex.broker.queues["us.retrieval"])()


def test_a_retry_tier_lets_its_message_back_in_once_nothing_else_is_left(tmp_path):
    Stubborn.retry, Stubborn.calls = True, 0
    ex = exchange(tmp_path)
    ex.publish(ask())
    assert ex.run(retries=False) == 1
    assert len(ex.broker.queues["us.retrieval.retry.1"]) == 1
    ex.run()
    assert Stubborn.calls == 2 and not ex.broker.queues["us.retrieval.retry.1"]
    assert ex.dead_letters("us", "retrieval") == []
