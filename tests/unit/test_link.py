"""The AMQP link's bookkeeping under unit test, with a fake connection and channel.

pika calls the link back from its I/O loop; here the test plays that loop: it opens
channels, delivers messages, confirms, nacks and returns publishes, and closes the
channel, and looks at what the link did to the (fake) channel and to the futures it gave
its callers. The link's contract is in docs/architecture.md ("The AMQP link").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest

from biox.broker.link import ConnectionLost, Link, Nacked, Unroutable


class Loop:
    """pika's I/O loop, run by the test: callbacks from other threads run at once."""

    handed_over: int = 0  # callbacks handed over by other threads

    def add_callback_threadsafe(self, fn: Callable[[], None]) -> None:
        self.handed_over += 1
        fn()

    def stop(self) -> None:
        pass


@dataclass
class FakeConnection:
    ioloop: Loop = field(default_factory=Loop)
    is_open: bool = True

    def close(self) -> None:
        self.is_open = False


@dataclass
class FakeChannel:
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    is_open: bool = True

    def add_on_close_callback(self, cb: Any) -> None:
        pass

    def add_on_return_callback(self, cb: Any) -> None:
        pass

    def confirm_delivery(self, ack_nack_callback: Any, callback: Any) -> None:
        self.calls.append(("confirm_delivery",))

    def basic_qos(self, prefetch_count: int, callback: Any) -> None:
        self.calls.append(("qos", prefetch_count))

    def basic_consume(self, queue: str, on_message_callback: Any, auto_ack: bool) -> None:
        self.calls.append(("consume", queue, auto_ack))

    def basic_ack(self, tag: int) -> None:
        self.calls.append(("ack", tag))

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.calls.append(("nack", tag, requeue))

    def basic_publish(self, exchange, routing_key, body, properties, mandatory) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("publish", exchange, routing_key, properties.message_id, mandatory))


@dataclass
class Method:
    delivery_tag: int
    multiple: bool = False
    exchange: str = "biox.us"
    routing_key: str = "us.query"
    redelivered: bool = False


def frame(kind: type, tag: int, multiple: bool = False) -> Any:
    method = kind(delivery_tag=tag, multiple=multiple)
    return type("Frame", (), {"method": method})()


def opened(link: Link) -> FakeChannel:
    """A new channel on the link, as after (re)connecting; ready for publishing."""
    channel = FakeChannel()
    link._conn = FakeConnection()  # type: ignore[assignment]
    link._on_channel(channel)
    link.ready.set()
    return channel


def deliver(link: Link, tag: int) -> Any:
    link._on_message(link.generation, Method(tag), pika.BasicProperties(message_id=f"m{tag}"), b"")
    return link.deliveries.get_nowait()


@pytest.fixture
def link() -> Link:
    return Link("amqp://u:p@localhost:1/%2F", name="test", consume="us.query")


def test_a_consuming_link_sets_prefetch_and_manual_acks(link):
    channel = opened(link)
    link._on_confirm_mode(None)
    link._on_qos(None)
    assert ("qos", 256) in channel.calls
    assert ("consume", "us.query", False) in channel.calls  # never auto-ack


def test_acks_go_to_the_channel_that_delivered(link):
    channel = opened(link)
    d = deliver(link, 7)
    link.ack(d)
    link.nack(deliver(link, 8), requeue=True)
    assert channel.calls[-2:] == [("ack", 7), ("nack", 8, True)]


def test_a_delivery_from_a_dead_connection_is_never_acked_on_the_new_one(link):
    first = opened(link)
    old = deliver(link, 3)
    new_channel = opened(link)  # reconnected: delivery tags start again at 1
    assert old.generation != link.generation
    link.ack(old)
    link.nack(old, requeue=True)
    assert [c for c in first.calls + new_channel.calls if c[0] in ("ack", "nack")] == []
    fresh = deliver(link, 3)  # the same tag number on the new channel is another message
    link.ack(fresh)
    assert ("ack", 3) in new_channel.calls


def test_a_batch_of_acks_wakes_the_io_thread_once_and_skips_a_dead_connections(link):
    """The consume loop acks a batch in one call: one hand-over to the I/O thread, each
    delivery still acked on its own tag, never one from before a reconnect."""
    opened(link)
    old = deliver(link, 3)
    channel = opened(link)
    batch = [deliver(link, 1), old, deliver(link, 2)]
    loop = link._conn.ioloop  # type: ignore[union-attr]
    link.ack(*batch)
    link.ack()  # a batch all sent to its retry tiers: nothing to hand over
    assert loop.handed_over == 1
    assert [c for c in channel.calls if c[0] == "ack"] == [("ack", 1), ("ack", 2)]


def test_confirms_settle_the_futures_they_name_and_multiple_covers_the_prefix(link):
    channel = opened(link)
    props = [pika.BasicProperties(message_id=f"p{i}") for i in range(1, 5)]
    futures = [link.publish("biox.us.out", "mx.query", b"x", p) for p in props]
    assert [c[3] for c in channel.calls if c[0] == "publish"] == ["p1", "p2", "p3", "p4"]
    assert all(c[4] for c in channel.calls if c[0] == "publish")  # mandatory: no silent drop
    link._on_confirm(frame(pika.spec.Basic.Ack, 2, multiple=True))
    assert [f.done() for f in futures] == [True, True, False, False]
    link._on_confirm(frame(pika.spec.Basic.Nack, 3))
    assert isinstance(futures[2].exception(timeout=0), Nacked)
    assert not futures[3].done()
    link._on_confirm(frame(pika.spec.Basic.Ack, 4))
    assert futures[3].result(timeout=0) is None
    assert futures[0].result(timeout=0) is None


def test_a_returned_message_fails_as_unroutable_even_though_the_broker_acks_it(link):
    opened(link)
    future = link.publish("biox.us.out", "nowhere", b"x", pika.BasicProperties(message_id="r1"))
    link._on_return(
        None,
        type(
            "M",
            (),
            {
                "reply_code": 312,
                "reply_text": "NO_ROUTE",
                "exchange": "biox.us.out",
                "routing_key": "nowhere",
            },
        )(),
        pika.BasicProperties(message_id="r1"),
        b"x",
    )
    link._on_confirm(frame(pika.spec.Basic.Ack, 1))
    with pytest.raises(Unroutable, match="NO_ROUTE"):
        future.result(timeout=0)


def test_a_closed_channel_fails_every_unconfirmed_publish(link):
    opened(link)
    futures = [
        link.publish("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id=f"c{i}"))
        for i in range(3)
    ]
    link._on_confirm(frame(pika.spec.Basic.Ack, 1))
    link._on_channel_closed(None, Exception("gone"))
    assert futures[0].result(timeout=0) is None
    for f in futures[1:]:
        assert isinstance(f.exception(timeout=0), ConnectionLost)


def test_publishing_while_disconnected_fails_at_once(link):
    future = link.publish("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id="d"))
    assert isinstance(future.exception(timeout=0), ConnectionLost)


def test_confirm_numbering_restarts_with_each_channel(link):
    opened(link)
    lost = link.publish("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id="a"))
    link._on_channel_closed(None, Exception("gone"))
    opened(link)
    again = link.publish("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id="a"))
    link._on_confirm(frame(pika.spec.Basic.Ack, 1))  # tag 1 of the new channel
    assert isinstance(lost.exception(timeout=0), ConnectionLost)
    assert again.result(timeout=0) is None


def test_the_link_names_its_user_from_the_url():
    assert Link("amqp://us-workers:pw@h:1/%2F", name="n").user == "us-workers"


def test_a_link_to_a_cluster_moves_to_the_next_node_each_time_a_connection_ends(monkeypatch):
    """The nodes of ``BIOX_AMQP_URL``, in order: the first that fails is left for the
    second, a connection lost on the second moves to the third, and round again."""
    tried: list[str] = []
    link = Link(
        "amqp://u:p@node1:5672/%2F,amqp://u:p@node2:5672/%2F, amqp://u:p@node3:5672/%2F",
        name="test",
    )

    class Attempt:
        def __init__(self, params, on_open_callback, on_open_error_callback, on_close_callback):  # type: ignore[no-untyped-def]
            tried.append(params.host)
            self.fail, self.close = on_open_error_callback, on_close_callback
            self.ioloop = self

        def start(self) -> None:  # the loop runs until the connection fails or is lost
            if len(tried) == 5:
                link._stopping = True
            if len(tried) % 2:
                self.fail(self, ConnectionError("refused"))
            else:
                self.close(self, ConnectionError("lost"))

        def stop(self) -> None:
            pass

    monkeypatch.setattr("biox.broker.link.SelectConnection", Attempt)
    monkeypatch.setattr("biox.broker.link.time.sleep", lambda s: None)
    link._run()
    assert tried == ["node1", "node2", "node3", "node1", "node2"]
    assert all(p.heartbeat == 30 and p.connection_attempts == 1 for p in link.nodes)


def test_a_batch_is_handed_over_once_in_order_each_with_its_own_confirm(link):
    channel = opened(link)
    loop = link._conn.ioloop  # type: ignore[union-attr]
    before = loop.handed_over
    batch = [
        ("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id=f"b{i}"))
        for i in range(1, 4)
    ]
    futures = link.publish_many(batch)
    assert loop.handed_over == before + 1  # one wake-up of the I/O loop for the batch
    assert [c[3] for c in channel.calls if c[0] == "publish"] == ["b1", "b2", "b3"]
    assert all(c[4] for c in channel.calls if c[0] == "publish")
    link._on_confirm(frame(pika.spec.Basic.Nack, 2))
    link._on_confirm(frame(pika.spec.Basic.Ack, 3, multiple=True))
    assert futures[0].result(timeout=0) is None and futures[2].result(timeout=0) is None
    assert isinstance(futures[1].exception(timeout=0), Nacked)


def test_a_batch_meeting_a_closed_channel_fails_every_message_of_it(link):
    channel = opened(link)
    channel.is_open = False
    batch = [("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id="z"))] * 2
    futures = link.publish_many(batch)
    assert [c for c in channel.calls if c[0] == "publish"] == []
    for f in futures:
        assert isinstance(f.exception(timeout=0), ConnectionLost)


def test_a_batch_while_disconnected_fails_at_once(link):
    batch = [("biox.us.out", "mx.query", b"x", pika.BasicProperties(message_id="d"))] * 3
    futures = link.publish_many(batch)
    assert len(futures) == 3
    for f in futures:
        assert isinstance(f.exception(timeout=0), ConnectionLost)
