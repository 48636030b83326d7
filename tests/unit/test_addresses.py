"""Names are parsed where they are built (wire/addresses.py): every reading of a name
undoes the function that built it."""

from __future__ import annotations

import pytest

from biox.wire import addresses


@pytest.mark.parametrize("code, role", [("us", "query"), ("mx", "review"), ("sv", "audit")])
def test_a_work_queue_and_its_dead_letter_queue_read_back_as_code_and_role(code, role):
    queue = addresses.queue(code, role)
    assert addresses.work_queue(queue) == (code, role)
    assert addresses.work_queue_of(addresses.dead_letter_queue(queue)) == queue
    assert addresses.owner(queue) == code


def test_own_hops_are_named_by_their_keys_and_a_kinds_key_is_none():
    assert addresses.hop(addresses.retry_key("us", "query", 5)) == "retry"
    assert addresses.hop(addresses.dead_letter_key("us", "query")) == "dead-letter"
    assert addresses.hop(addresses.replay_key("us", "review")) == "replay"
    for kind in ("query", "review.decision", "encounter.submit", "retry"):
        assert addresses.hop(addresses.routing_key("us", kind)) == ""
    assert addresses.hop(addresses.unrecorded_retry_key("us", "audit", 5)) == ""
    assert addresses.owner(addresses.replay_key("mx", "query")) == "mx"


def test_exchanges_and_queues_are_told_apart_by_name():
    for exchange in (
        addresses.inbox("us"),
        addresses.outbox("us"),
        addresses.results("us"),
        addresses.held_results_exchange("us"),
    ):
        assert addresses.is_exchange(exchange)
    for queue in (
        addresses.queue("us", "query"),
        addresses.link_queue("us", "mx"),
        addresses.held_results_queue("us"),
        addresses.retry_queue("us.query", 5),
    ):
        assert not addresses.is_exchange(queue)
