"""One partner's flood does not delay another's queries (docs/security.md, "Quotas"): each
partner's messages wait in arrival queues of their own, which the worker consumes side by
side, on a real RabbitMQ with the real workers."""

from __future__ import annotations

import time

import pytest

from biox.wire import addresses, codec
from tests.integration.conftest import Exchange, Peer
from tests.integration.test_bad_input import valid_query

# runs once: not again on PostgreSQL (Makefile, PG_SELECT)
pytestmark = [pytest.mark.integration, pytest.mark.fault]

FLOOD = 1500


def test_a_flood_from_one_partner_leaves_anothers_query_at_the_front(
    exchange: Exchange, peer: Peer
):
    """us's matcher is stopped; sv sends 1 500 queries, then mx one. The matcher comes
    back: mx's answer leaves while most of sv's flood still waits in sv's own arrival
    queue, where one shared queue would have put it behind all 1 500."""
    flood_queue = addresses.arrival_queue("us", "query", "sv")
    answers = peer.observe(addresses.ingress("mx", "us"), "mx.response")
    exchange.kill("us-query")
    try:
        for _ in range(FLOOD):
            q = valid_query(requesting="sv", providing="us")
            peer.publish(
                addresses.ingress("us", "sv"),
                "us.query",
                codec.encode_body(q),
                sender="sv",
                recipient="us",
                correlation_id=q.query_id,
            )
        mine = valid_query(requesting="mx", providing="us")
        peer.publish(
            addresses.ingress("us", "mx"),
            "us.query",
            codec.encode_body(mine),
            sender="mx",
            recipient="us",
            correlation_id=mine.query_id,
        )
        assert exchange.ready(flood_queue) == FLOOD
        started = time.monotonic()
        exchange.restart("us-query")
        got = peer.take(answers, 1, timeout=60, correlation_id=mine.query_id)
        waited = time.monotonic() - started
        still_waiting = exchange.ready(flood_queue)
    finally:
        peer.ch.queue_purge(flood_queue)  # the rest of the flood: nobody needs it answered
    assert got, "mx's query was never answered"
    assert still_waiting > FLOOD // 2, f"mx waited for {FLOOD - still_waiting} of sv's queries"
    assert waited < 30
