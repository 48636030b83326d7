"""Publishing with confirms: envelopes to AMQP properties, batches settled together.

A batch is published without waiting, then its confirms are awaited together: one round
trip per batch, not per message. Messages lost to a dropped connection are published
again (tenacity) under the same ``message_id``; the receiver's idempotency absorbs any
copy the broker had in fact stored. A returned (unroutable) or nacked message is an error
for the caller, never a silent drop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, wait

import msgpack
import pika
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from biox.broker.link import ConnectionLost, Link, Nacked, Transport
from biox.trust.tls import ClientTLS
from biox.wire.codec import (
    APP_ID,
    CONTENT_TYPE,
    H_ATTEMPT,
    H_FROM,
    H_SCHEMA,
    H_TO,
    Envelope,
    Outgoing,
)


def properties_for(env: Envelope, user_id: str | None) -> pika.BasicProperties:
    headers = dict(env.headers)
    headers.update(
        {H_SCHEMA: env.schema, H_FROM: env.sender, H_TO: env.recipient, H_ATTEMPT: env.attempt}
    )
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=env.message_id,
        correlation_id=env.correlation_id,
        reply_to=env.reply_to,
        type=env.kind,
        app_id=APP_ID,
        user_id=user_id,
        timestamp=int(time.time()),
        headers=headers,
    )


def republish_properties(
    p: pika.BasicProperties, headers: dict[str, object], user_id: str
) -> pika.BasicProperties:
    """The original's properties for a copy we republish (retry tier, DLQ, replay).

    ``user_id`` becomes ours: the broker accepts no other on our connection; the
    original sender's stays in the headers.
    """
    return pika.BasicProperties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        type=p.type,
        app_id=p.app_id,
        timestamp=p.timestamp,
        user_id=user_id,
        headers=headers,
    )


def pack_outgoing(outgoing: Sequence[Outgoing]) -> bytes:
    """Serialise what a handler produced, for the idempotency record: a redelivery
    republishes exactly this, headers (``biox-actor``) included."""
    packed: bytes = msgpack.packb(
        [
            [
                o.exchange,
                o.routing_key,
                o.body,
                o.envelope.message_id,
                o.envelope.kind,
                o.envelope.schema,
                o.envelope.sender,
                o.envelope.recipient,
                o.envelope.correlation_id,
                o.envelope.reply_to,
                o.envelope.headers,
            ]
            for o in outgoing
        ],
        use_bin_type=True,
    )
    return packed


def unpack_outgoing(data: bytes) -> list[Outgoing]:
    """The messages ``pack_outgoing`` stored (records written before headers were kept
    have ten fields, and get none)."""
    if not data:
        return []
    out = []
    for ex, rk, body, mid, kind, schema, sender, recipient, corr, reply, *rest in msgpack.unpackb(
        data
    ):
        headers = dict(rest[0]) if rest else {}
        env = Envelope(mid, kind, schema, sender, recipient, corr, reply, headers=headers)
        out.append(Outgoing(ex, rk, body, env))
    return out


class Publisher:
    def __init__(self, link: Transport, timeout: float = 60.0) -> None:
        self.link = link
        self.timeout = timeout

    def send(self, outgoing: Sequence[Outgoing]) -> None:
        self.send_raw(
            [
                (o.exchange, o.routing_key, o.body, properties_for(o.envelope, self.link.user))
                for o in outgoing
            ]
        )

    def send_raw(self, messages: Sequence[tuple[str, str, bytes, pika.BasicProperties]]) -> None:
        """Publish all, wait for all confirms; re-publish those a lost connection took."""
        todo = list(messages)
        for attempt in Retrying(
            # a nack is the broker saying "not now" (a quorum queue electing its leader
            # after a restart, a queue at its length limit): worth the same retries
            retry=retry_if_exception_type((ConnectionLost, Nacked)),
            stop=stop_after_delay(self.timeout),
            wait=wait_exponential(multiplier=0.2, max=3),
            reraise=True,
        ):
            with attempt:
                if not self.link.ready.is_set():
                    self.link.ready.wait(min(self.timeout, 5))
                futures = list(zip(todo, self.link.publish_many(todo), strict=True))
                wait([f for _, f in futures], timeout=self.timeout)
                todo = [m for m, f in futures if _retryable(f)]
                for _, f in futures:
                    exc = f.exception(timeout=0) if f.done() else None
                    if exc is not None and not isinstance(exc, ConnectionLost | Nacked):
                        raise exc  # unroutable: retrying cannot help
                if todo:
                    raise ConnectionLost(f"{len(todo)} message(s) unconfirmed or nacked")


def _retryable(future: Future[None]) -> bool:
    if not future.done():
        return True
    return isinstance(future.exception(timeout=0), ConnectionLost | Nacked)


# pragma: no mutate start (it opens a real connection: the integration tests cover it)
def publish_once(
    url: str, outgoing: Sequence[Outgoing], name: str, tls: ClientTLS | None = None
) -> None:
    """Send a few messages from a short-lived tool (an examiner's decision, an operator's
    retrieval request) with the same confirms and retries as a worker."""
    link = Link(url, name=name, tls=tls)
    link.start()
    try:
        Publisher(link).send(outgoing)
    finally:
        link.close()


# pragma: no mutate end
