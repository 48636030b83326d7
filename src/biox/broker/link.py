"""One AMQP connection driven by its own I/O thread, shared by publisher and consumer.

Why a thread with pika's asynchronous ``SelectConnection``: a ``BlockingConnection`` with
confirms waits one round trip per publish (about 1 k msg/s here), and blocks heartbeats
while a handler works. Here publishes return a future settled by the broker's
(possibly batched) confirm, deliveries are queued for a worker thread, and acks are
handed back to the I/O thread with ``add_callback_threadsafe``. The link reconnects by
itself; a delivery from a connection that died is never acked on the new one (the broker
has already requeued it).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import structlog
from pika.adapters.select_connection import SelectConnection
from pika.exceptions import AMQPError

from biox.broker import writes
from biox.broker.connection import parameters, user_of
from biox.settings import Settings
from biox.trust.tls import ClientTLS

log = structlog.get_logger("biox.broker")


class ConnectionLost(Exception):
    """The connection or channel closed before the broker confirmed the message."""


class Unroutable(Exception):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class Nacked(Exception):
    """The broker refused responsibility for a message (e.g. a queue at its limit)."""


#: one message to publish: exchange, routing key, body, properties
Message = tuple[str, str, bytes, pika.BasicProperties]


def _fail_all(futures: Sequence[Future[None]], exc: Exception) -> None:
    for future in futures:
        future.set_exception(exc)


@dataclass
class Delivery:
    generation: int
    delivery_tag: int
    exchange: str
    routing_key: str
    redelivered: bool
    properties: pika.BasicProperties
    body: bytes
    received: float


def take(deliveries: queue.Queue[Delivery], batch_max: int, wait_ms: float) -> list[Delivery]:
    """One batch: the first delivery within 0.2 s (none: an empty batch), then more until
    ``batch_max`` or ``wait_ms`` after the first; past the deadline, only what is already
    waiting. The consume loop's batching (docs/architecture.md, "One consume loop")."""
    try:
        batch = [deliveries.get(timeout=0.2)]
    except queue.Empty:
        return []
    deadline = time.monotonic() + wait_ms / 1000
    while len(batch) < batch_max:
        try:
            batch.append(deliveries.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            break
    return batch


class Transport(Protocol):
    """What the consume loop and the publisher use of a link: the AMQP ``Link`` here, the
    memory broker's in ``biox.broker.memory``, a fake one in the unit tests."""

    user: str
    generation: int
    deliveries: queue.Queue[Delivery]
    ready: threading.Event

    def start(self) -> Transport: ...

    def close(self) -> None: ...

    def publish_many(
        self, messages: Sequence[Message], mandatory: bool = True
    ) -> list[Future[None]]:
        """A future per message, in order, each settled by the broker's confirm."""

    def ack(self, *deliveries: Delivery) -> None: ...

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """No default: whether a message goes back to its queue or is dropped is said at
        every call."""


class Link:
    def __init__(
        self,
        url: str,
        *,
        name: str,
        consume: str | Sequence[str] | None = None,
        prefetch: int = 256,
        heartbeat: int = 30,
        tls: ClientTLS | None = None,
    ) -> None:
        writes.install()  # one socket write per turn of pika's loop, not one per frame
        #: one per node of a cluster (``connection.nodes``): a lost connection moves on
        self.nodes = parameters(url, tls)
        for params in self.nodes:
            params.heartbeat = heartbeat
            params.blocked_connection_timeout = 300
            params.client_properties = {"connection_name": name, "product": "biox"}
            params.connection_attempts = 1
        self._node = 0
        self.name = name
        self.user = user_of(url, tls)
        #: the queues this link consumes: a worker's own and its partners' arrival queues,
        #: each its own consumer with its own prefetch, so that none waits behind another
        self.consume_queues = [consume] if isinstance(consume, str) else list(consume or ())
        self.prefetch = prefetch
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.generation = 0
        self.ready = threading.Event()
        self._stopping = False
        self._conn: SelectConnection | None = None
        self._channel: Any = None
        self._next_tag = 0
        self._pending: collections.OrderedDict[int, tuple[Future[None], str]] = (
            collections.OrderedDict()
        )
        self._returned: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name=f"amqp-{name}", daemon=True)

    @classmethod
    def consuming(cls, url: str, name: str, queue: str | Sequence[str], settings: Settings) -> Link:
        """A worker's link: consumes ``queue`` (or several) with the configured prefetch
        and heartbeat."""
        return cls(
            url,
            name=name,
            consume=queue,
            prefetch=settings.worker_prefetch,
            heartbeat=settings.heartbeat,
            tls=settings.client_tls(),
        )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Link:
        self._thread.start()
        if not self.ready.wait(timeout):
            self.close()
            raise ConnectionLost(f"{self.name}: broker not reachable within {timeout:.0f}s")
        return self

    def close(self) -> None:
        self._stopping = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # the loop may already be gone
                conn.ioloop.add_callback_threadsafe(self._close_now)
        self._thread.join(timeout=10)

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_now(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        elif self._conn is not None:
            self._conn.ioloop.stop()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._conn = SelectConnection(
                self.nodes[self._node % len(self.nodes)],
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self._conn.ioloop.start()
            self._fail_pending(ConnectionLost(f"{self.name}: connection closed"))
            self.ready.clear()
            if self._stopping:
                break
            self._node += 1  # the node that failed or was lost may be gone: the next one
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            if self.ready.is_set():
                backoff = 0.5

    def _on_open(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: SelectConnection, exc: BaseException) -> None:
        log.warning("amqp_connect_failed", link=self.name, error=str(exc))
        conn.ioloop.stop()

    def _on_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        if not self._stopping:
            log.warning("amqp_connection_closed", link=self.name, reason=str(reason))
        self._channel = None
        conn.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self.generation += 1
        self._channel = channel
        self._next_tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        if self.consume_queues:
            self._channel.basic_qos(prefetch_count=self.prefetch, callback=self._on_qos)
        else:
            self.ready.set()

    def _on_qos(self, _frame: Any) -> None:
        generation = self.generation
        for name in self.consume_queues:
            self._channel.basic_consume(
                name,
                on_message_callback=lambda ch, method, props, body: self._on_message(
                    generation, method, props, body
                ),
                auto_ack=False,
            )
        self.ready.set()

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self._channel = None
        self._fail_pending(ConnectionLost(f"{self.name}: channel closed: {reason}"))
        if not self._stopping:
            log.warning("amqp_channel_closed", link=self.name, reason=str(reason))
            if self._conn is not None and self._conn.is_open:
                self._conn.close()

    # --- consuming ------------------------------------------------------------------------

    def _on_message(self, generation: int, method: Any, props: Any, body: bytes) -> None:
        self.deliveries.put(
            Delivery(
                generation,
                method.delivery_tag,
                method.exchange,
                method.routing_key,
                method.redelivered,
                props,
                body,
                time.time(),
            )
        )

    def ack(self, *deliveries: Delivery) -> None:
        """One hand-over to the I/O thread for all of them: a batch's acks each woke it
        (a write to its wake-up pipe and a turn of its loop), and its loop is a sixth to a
        quarter of a worker's CPU (docs/performance.md)."""
        if deliveries:  # a batch all sent to its retry tiers was acked there
            self._threadsafe(lambda: self._settle(deliveries, lambda ch, tag: ch.basic_ack(tag)))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._threadsafe(
            lambda: self._settle([delivery], lambda ch, tag: ch.basic_nack(tag, requeue=requeue))
        )

    def _settle(self, deliveries: Sequence[Delivery], action: Callable[[Any, int], None]) -> None:
        """On the channel that delivered them: never one from before a reconnect."""
        if self._channel is None:
            return
        for d in deliveries:
            if d.generation == self.generation:
                action(self._channel, d.delivery_tag)

    def _threadsafe(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.ioloop.add_callback_threadsafe(fn)
        except Exception as exc:  # loop closed: the broker requeues unacked deliveries
            log.debug("amqp_callback_dropped", link=self.name, error=str(exc))

    # --- publishing -----------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        mandatory: bool = True,
    ) -> Future[None]:
        """Returns at once; the future settles on the broker's confirm (or its refusal)."""
        return self.publish_many([(exchange, routing_key, body, properties)], mandatory)[0]

    def publish_many(
        self, messages: Sequence[Message], mandatory: bool = True
    ) -> list[Future[None]]:
        """A batch handed to the I/O thread at once, in order: one wake-up of its loop for
        the batch, not one per message (docs/performance.md, "One write per turn of the
        loop"). A future per message, each settled by its own confirm."""
        futures: list[Future[None]] = [Future() for _ in messages]
        conn = self._conn
        if conn is None or not self.ready.is_set():
            _fail_all(futures, ConnectionLost(f"{self.name}: not connected"))
            return futures
        batch = list(zip(futures, messages, strict=True))
        try:
            conn.ioloop.add_callback_threadsafe(lambda: self._publish_now(batch, mandatory))
        except Exception as exc:
            _fail_all(futures, ConnectionLost(f"{self.name}: {exc}"))
        return futures

    def _publish_now(self, batch: Sequence[tuple[Future[None], Message]], mandatory: bool) -> None:
        for future, (exchange, routing_key, body, properties) in batch:
            channel = self._channel
            if channel is None or not channel.is_open:
                future.set_exception(ConnectionLost(f"{self.name}: channel not open"))
                continue
            try:
                channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
            except AMQPError as exc:
                future.set_exception(ConnectionLost(f"{self.name}: {exc}"))
                continue
            self._next_tag += 1
            self._pending[self._next_tag] = (future, properties.message_id or "")

    def _on_return(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        self._returned[props.message_id or ""] = (
            f"{method.reply_code} {method.reply_text}: exchange={method.exchange!r} "
            f"routing_key={method.routing_key!r}"
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tags = [method.delivery_tag]
        if method.multiple:  # pending is in tag order: take the prefix up to the tag
            tags = []
            for tag in self._pending:
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            future, message_id = entry
            returned = self._returned.pop(message_id, None)
            if future.done():
                continue
            if returned is not None:
                future.set_exception(Unroutable(returned))
            elif ok:
                future.set_result(None)
            else:
                future.set_exception(Nacked(f"broker nacked message {message_id}"))

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, collections.OrderedDict()
        self._returned.clear()
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(exc)
