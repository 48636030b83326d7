"""Results no reply queue took (its queue missing or misspelt), waiting in
``<code>.results.held`` for an operator to send them on (docs/integration.md, "When the
reply queue is missing"; ``biox encounters held | redeliver``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pika

from biox.broker.deadletters import DeadLetter, DeadLetterQueues, Filters
from biox.wire import addresses


def held_results(dlqs: DeadLetterQueues, code: str) -> list[DeadLetter]:
    """Oldest first, left where they are."""
    return dlqs.find([addresses.held_results_queue(code)], Filters())


def redeliver(dlqs: DeadLetterQueues, code: str, by: str) -> tuple[int, dict[str, int]]:
    """Every held result whose reply queue now exists sent on to it, taken only once
    confirmed; the others stay held. Returns how many were sent on, and how many wait for
    each reply queue still missing (a queue that exists but is not bound to the results
    exchange holds its results again: only the broker knows bindings)."""
    exists: dict[str, bool] = {}
    waiting: Counter[str] = Counter()

    def send_on(_ch: Any, d: DeadLetter) -> bool:
        if d.routing_key not in exists:
            exists[d.routing_key] = _queue_exists(dlqs, d.routing_key)
        if not exists[d.routing_key]:
            waiting[d.routing_key] += 1
            return False  # left held, not sent round again
        props = d.properties
        props.user_id = None  # the result is sent on by whoever redelivers it
        props.headers = {**d.headers, "biox-redelivered-by": by}
        dlqs.publisher.send_raw([(addresses.results(code), d.routing_key, d.body, props)])
        return True  # confirmed: send_raw raises if the broker refused it

    sent = dlqs.visit([addresses.held_results_queue(code)], Filters(), send_on)
    return sent, dict(waiting)


def _queue_exists(dlqs: DeadLetterQueues, name: str) -> bool:
    """A passive declare, on a channel of its own: a missing queue closes it."""
    ch = dlqs.conn.channel()
    try:
        ch.queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if ch.is_open:
            ch.close()
