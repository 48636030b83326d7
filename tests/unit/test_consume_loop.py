"""The consume loop under unit test, driven through an in-memory transport.

The transport (``FakeLink``) stands where the AMQP link does: it hands the loop
deliveries, settles publishes as the broker's confirms would (or refuses them the ways a
broker can: connection lost, nacked, returned as unroutable), and records every confirm,
ack and nack in one ordered log. At every ack it checks, in the loop's own database,
that the effect and the idempotency marker are committed, so "ack only after commit and
confirm" is observed, not assumed. docs/architecture.md ("One consume loop") is the
contract these tests hold the loop to.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select
from structlog.testing import capture_logs

from biox.agreement.ledgers import RefusalRow
from biox.broker.admission import header_bytes
from biox.broker.consumer import ConsumeLoop
from biox.broker.link import ConnectionLost, Delivery, Message, Nacked, Unroutable
from biox.broker.publisher import properties_for, unpack_outgoing
from biox.database import session_for
from biox.handlers.audit import AuditHandler
from biox.handlers.base import Effects, Handler, Result
from biox.routes import ROUTES, Queue, RouteTable, Sender, route
from biox.settings import Settings
from biox.store import AuditEntry, ParticipantRow, ProcessedMessage
from biox.trust import audit
from biox.trust.sealing import memory_rings
from biox.wire import addresses, codec
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound, arrived, read_envelope
from biox.wire.messages import Element, RetrievalAsk

QUEUE = "us.retrieval"
RINGS = memory_rings(["us", "mx", "sv"])
OWN, P = Sender.own, Sender.partner


@dataclass
class Published:
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties

    @property
    def message_id(self) -> str:
        return str(self.properties.message_id)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


@dataclass
class FakeLink:
    """The broker side of one connection, in memory."""

    user: str = "us-workers"
    generation: int = 1
    deliveries: queue.Queue[Delivery] = field(default_factory=queue.Queue)
    ready: threading.Event = field(default_factory=threading.Event)
    log: list[tuple[Any, ...]] = field(default_factory=list)
    confirmed: list[Published] = field(default_factory=list)
    refuse: list[type[Exception]] = field(default_factory=list)  # next publishes, in turn
    refuse_all: type[Exception] | None = None
    on_ack: Callable[[Delivery], None] | None = None
    _tag: int = 0

    def __post_init__(self) -> None:
        self.ready.set()

    def start(self) -> FakeLink:
        return self

    def close(self) -> None:
        self.log.append(("close",))

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        mandatory: bool = True,
    ) -> Future[None]:
        future: Future[None] = Future()
        refusal = self.refuse.pop(0) if self.refuse else self.refuse_all
        if refusal is not None:
            self.log.append(("refused", properties.message_id, refusal.__name__))
            future.set_exception(refusal(f"{refusal.__name__} (fake broker)"))
        else:
            self.confirmed.append(Published(exchange, routing_key, body, properties))
            self.log.append(("confirm", properties.message_id))
            future.set_result(None)
        return future

    def publish_many(
        self, messages: Sequence[Message], mandatory: bool = True
    ) -> list[Future[None]]:
        return [self.publish(*m, mandatory=mandatory) for m in messages]

    def ack(self, *deliveries: Delivery) -> None:
        for d in deliveries:
            if self.on_ack is not None:
                self.on_ack(d)
            self.log.append(("ack", d.delivery_tag))

    def nack(self, d: Delivery, *, requeue: bool) -> None:
        self.log.append(("nack", d.delivery_tag, requeue))

    # --- what the tests look at --------------------------------------------------------

    def deliver(
        self,
        out: Outgoing,
        *,
        redelivered: bool = False,
        generation: int | None = None,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        message_id: str | None = "keep",
        exchange: str | None = None,
        routing_key: str | None = None,
        user_id: str | None = None,
    ) -> Delivery:
        self._tag += 1
        props = properties_for(out.envelope, user_id or out_user(out))
        if headers:
            props.headers = {**props.headers, **headers}
        if message_id != "keep":
            props.message_id = message_id
        d = Delivery(
            generation if generation is not None else self.generation,
            self._tag,
            out.exchange if exchange is None else exchange,
            routing_key or out.routing_key,
            redelivered,
            props,
            out.body if body is None else body,
            time.time(),
        )
        self.deliveries.put(d)
        return d

    def settled(self) -> set[int]:
        return {e[1] for e in self.log if e[0] in ("ack", "nack")}

    def acks(self) -> list[int]:
        return [e[1] for e in self.log if e[0] == "ack"]

    def nacks(self) -> list[tuple[int, bool]]:
        return [(e[1], e[2]) for e in self.log if e[0] == "nack"]

    def to(self, routing_key: str) -> list[Published]:
        return [p for p in self.confirmed if p.routing_key == routing_key]


class ScriptedHandler(Handler):
    """A handler whose answer to each ``retrieval.ask`` is named by its ``asked_by``:

    ok | permanent | transient | boom (the whole batch raises) | stale (the commit lost an
    optimistic-lock race, ``times`` times). ``reject`` answers a sender called ``mx`` (an
    identifiable partner) and leaves anyone else to the dead-letter queue."""

    def __init__(self, stale_times: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.seen: list[Inbound] = []
        self.stale_left = stale_times

    def handle(self, batch: Sequence[Inbound], session: Session) -> list[Result]:
        self.calls.append([i.envelope.message_id for i in batch])
        self.seen.extend(batch)
        if any(i.message.asked_by == "short" for i in batch):
            return []  # a handler bug: fewer results than messages
        modes = [i.message.asked_by for i in batch]  # type: ignore[union-attr]
        if "boom" in modes:
            raise RuntimeError("handler bug")
        if "stale" in modes and self.stale_left > 0:
            self.stale_left -= 1
            raise StaleDataError("encounter revision moved")
        return [self._one(i) for i in batch]

    def _one(self, inb: Inbound) -> Result:
        mode = inb.message.asked_by  # type: ignore[union-attr]
        if mode == "permanent":
            return PermanentError(Reason.not_matched, "no match to ask about")
        if mode == "transient":
            return TransientError(Reason.unknown_query, "not yet")
        mid = inb.envelope.message_id
        row = ParticipantRow(code=mid, agency="effect", status="done")
        out = codec.to_partner(
            RetrievalAsk(query_id=mid, elements=[Element.biographic], asked_by="effect"),
            sender="us",
            recipient="mx",
            message_id=codec.derived_id(mid, "effect"),
            correlation_id=mid,
        )
        return Effects(rows=[row], outgoing=[out], outcome="done:effect")

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        if envelope.sender != "mx":
            return None
        answer = codec.to_partner(
            RetrievalAsk(query_id="x", elements=[Element.reference], asked_by=error.reason),
            sender="us",
            recipient="mx",
            message_id=codec.derived_id(envelope.message_id, "rejected"),
            correlation_id=envelope.message_id,
        )
        return Effects(outgoing=[answer], outcome=f"rejected:{error.reason.value}")


def ask(mode: str, sender: str = "us", message_id: str | None = None) -> Outgoing:
    message = RetrievalAsk(query_id="q-1", elements=[Element.biographic], asked_by=mode)
    out = codec.to_own_inbox(
        message,
        participant="us",
        message_id=message_id or str(uuid.uuid4()),
        correlation_id="q-1",
    )
    if sender != "us":  # a partner's: signed and sealed to us, as the loop requires
        out.envelope = Envelope(
            out.envelope.message_id, out.envelope.kind, out.envelope.schema, sender, "us", "q-1"
        )
        if sender in RINGS:
            out = RINGS[sender].seal(out)
    return out


@dataclass
class Rig:
    loop: ConsumeLoop
    link: FakeLink
    handler: Any
    db: str

    def run(self, *deliveries: Delivery, timeout: float = 5.0) -> None:
        """Run the loop until every given delivery is acked or nacked."""
        stop = threading.Event()
        thread = threading.Thread(target=self.loop.run, args=(stop,), daemon=True)
        thread.start()
        want = {d.delivery_tag for d in deliveries}
        deadline = time.monotonic() + timeout
        while not want <= self.link.settled() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # let the loop idle: nothing more may happen after the last ack
        stop.set()
        thread.join(5)
        assert want <= self.link.settled(), f"unsettled: {want - self.link.settled()}"

    def marker(self, message_id: str) -> ProcessedMessage | None:
        """The marker of ``message_id``, from whichever sender (``database.marker_key``)."""
        with session_for(self.db) as s:
            return s.exec(
                select(ProcessedMessage).where(
                    col(ProcessedMessage.message_id).endswith(f"/{message_id}")
                )
            ).first()

    def refusals(self) -> list[tuple[str, str | None, str, bool]]:
        with session_for(self.db) as s:
            rows = s.exec(select(RefusalRow)).all()
        return [(r.kind, r.sender, r.reason, r.answered) for r in rows]

    def effect(self, message_id: str) -> ParticipantRow | None:
        with session_for(self.db) as s:
            return s.get(ParticipantRow, message_id)


def table(handler_class: type, *, undecoded: bool = False) -> RouteTable:
    """A route table of one queue: ``us.retrieval`` taking ``retrieval.ask`` from the
    participant itself and from partners, or an audit-like queue taking everything."""
    if undecoded:
        return RouteTable([Queue("audit", handler_class, undecoded=handler_class.handle)], [])
    queue = Queue("retrieval", handler_class)
    return RouteTable([queue], [route(RetrievalAsk, "retrieval", handler_class.handle, OWN, P)])


def out_user(out: Outgoing) -> str:
    """The broker user a sender's workers connect as (the broker stamps it)."""
    return f"{out.envelope.sender}.workers"


def rig(
    tmp_path,
    handler: Any = None,
    *,
    undecoded: bool = False,
    routes: RouteTable | None = None,
    **overrides: Any,
) -> Rig:
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    options: dict[str, Any] = {
        "publish_timeout": 0.3,
        "retry_delays": "1,5",
        "batch_wait_ms": 20,
        "batch_max": 16,
        # the loop's mechanics, not identities: tests/unit/test_identity.py has those
        "dev_shared_broker": True,
        **overrides,
    }
    settings = Settings(**options)
    link = FakeLink()
    handler = handler or ScriptedHandler()
    routes = routes or table(type(handler), undecoded=undecoded)
    loop = ConsumeLoop(
        url="amqp://unused",
        participant="us",
        queue=next(iter(routes.queues.values())),
        routes=routes,
        handler=handler,
        database_url=db,
        settings=settings,
        keys=RINGS["us"],
        known=lambda code: code in ("us", "mx", "sv"),
        link=link,
    )
    return Rig(loop, link, handler, db)


# --- the happy path: commit, confirm, then ack -----------------------------------------------


def test_a_delivery_is_acked_only_after_its_effect_and_marker_are_committed_and_confirmed(
    tmp_path,
):
    r = rig(tmp_path)
    seen_at_ack: list[tuple[bool, bool, list[str]]] = []

    def check(d: Delivery) -> None:
        mid = d.properties.message_id
        seen_at_ack.append(
            (
                r.effect(mid) is not None,
                r.marker(mid) is not None,
                [p.message_id for p in r.link.confirmed],
            )
        )

    r.link.on_ack = check
    out = ask("ok")
    d = r.link.deliver(out)
    r.run(d)
    [(effect, marker, confirmed)] = seen_at_ack
    assert effect and marker
    assert confirmed == [codec.derived_id(out.envelope.message_id, "effect")]
    kinds = [e[0] for e in r.link.log if e[0] in ("confirm", "ack")]
    assert kinds == ["confirm", "ack"]
    stored = r.marker(out.envelope.message_id)
    assert stored is not None and stored.published  # confirmed: a redelivery sends nothing
    assert r.link.confirmed[0].properties.user_id == "us-workers"  # the link's own user


def test_a_batch_is_handled_in_one_call_and_every_delivery_acked_once(tmp_path):
    r = rig(tmp_path)
    ds = [r.link.deliver(ask("ok")) for _ in range(5)]
    r.run(*ds)
    assert sum(len(c) for c in r.handler.calls) == 5
    assert len(r.handler.calls) < 5  # batched, not one call per message
    assert sorted(r.link.acks()) == [d.delivery_tag for d in ds]
    assert len(r.link.confirmed) == 5


def test_the_same_message_twice_in_one_batch_is_handled_once(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    first, second = r.link.deliver(out), r.link.deliver(out, redelivered=True)
    r.run(first, second)
    assert [mid for call in r.handler.calls for mid in call] == [out.envelope.message_id]
    assert sorted(r.link.acks()) == [first.delivery_tag, second.delivery_tag]
    assert len(r.link.confirmed) == 1
    assert r.loop.stats["duplicate"] == 1


# --- redelivery: stored outputs under the same ids, and nothing else ---------------------------


def test_a_redelivery_after_confirm_publishes_nothing_and_runs_no_handler(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    r.run(r.link.deliver(out))
    again = r.link.deliver(out, redelivered=True)
    r.run(again)
    assert len(r.handler.calls) == 1
    assert len(r.link.confirmed) == 1
    assert again.delivery_tag in r.link.acks()


def test_unconfirmed_outputs_are_requeued_then_republished_byte_for_byte_under_the_same_ids(
    tmp_path,
):
    r = rig(tmp_path)
    r.link.refuse_all = ConnectionLost
    out = ask("ok")
    first = r.link.deliver(out)
    with capture_logs() as logs:
        r.run(first)
    [trouble] = events(logs, "publish_failed")  # what an operator sees while the broker is away
    assert trouble["log_level"] == "warning" and trouble["worker"] == r.loop.worker
    assert (trouble["error"], trouble["batch"]) == ("1 message(s) unconfirmed or nacked", 1)
    assert r.link.nacks() == [(first.delivery_tag, True)]  # back to the queue, not acked
    assert r.link.acks() == []
    marker = r.marker(out.envelope.message_id)
    assert marker is not None and not marker.published  # the effect is committed already
    refused = [e for e in r.link.log if e[0] == "refused"]
    assert refused and {e[1] for e in refused} == {
        codec.derived_id(out.envelope.message_id, "effect")
    }

    r.link.refuse_all = None  # the broker is back
    again = r.link.deliver(out, redelivered=True)
    r.run(again)
    assert len(r.handler.calls) == 1  # not handled a second time
    [sent] = r.link.confirmed
    assert sent.message_id == codec.derived_id(out.envelope.message_id, "effect")
    expected = r.handler._one(
        Inbound(out.envelope, codec.decode_body(RetrievalAsk, out.envelope.schema, out.body))
    )
    # the very bytes stored with the marker (sealed once, before the first attempt) ...
    [stored] = unpack_outgoing(marker.outputs)
    assert (
        sent.body == stored.body
        and sent.headers["biox-signature"] == (stored.envelope.headers["biox-signature"])
    )
    # ... which only mx can open, to what the handler produced
    opened = RINGS["mx"].open(read_envelope(sent.properties), sent.body)
    assert opened == expected.outgoing[0].body
    assert (sent.exchange, sent.routing_key) == ("biox.us.out", "mx.retrieval.ask")
    assert again.delivery_tag in r.link.acks()
    assert r.marker(out.envelope.message_id).published


@pytest.mark.parametrize("refusal", [ConnectionLost, Nacked])
def test_a_refused_publish_is_retried_under_the_same_message_id(tmp_path, refusal):
    r = rig(tmp_path, publish_timeout=5.0)
    r.link.refuse = [refusal, refusal]
    out = ask("ok")
    d = r.link.deliver(out)
    r.run(d)
    published = [e[1] for e in r.link.log if e[0] in ("refused", "confirm")]
    assert published == [codec.derived_id(out.envelope.message_id, "effect")] * 3
    assert r.link.acks() == [d.delivery_tag] and r.link.nacks() == []


def test_an_unroutable_output_is_not_retried_and_the_input_goes_back_to_the_queue(tmp_path):
    r = rig(tmp_path, publish_timeout=5.0)
    r.link.refuse = [Unroutable]
    d = r.link.deliver(ask("ok"))
    started = time.monotonic()
    r.run(d)
    assert time.monotonic() - started < 3  # no waiting out the publish timeout
    assert r.link.nacks() == [(d.delivery_tag, True)]
    assert len([e for e in r.link.log if e[0] == "refused"]) == 1


def test_deliveries_from_a_dead_connection_are_neither_handled_nor_acked(tmp_path):
    r = rig(tmp_path)
    old = r.link.deliver(ask("ok"), generation=1)
    r.link.generation = 2  # the connection dropped: the broker requeued ``old`` itself
    new = r.link.deliver(ask("ok"))
    r.run(new)
    assert old.delivery_tag not in r.link.settled()
    assert [mid for call in r.handler.calls for mid in call] == [new.properties.message_id]


# --- each failure class routed as documented ----------------------------------------------------


def test_a_permanent_error_with_an_identifiable_sender_is_answered_and_remembered(tmp_path):
    r = rig(tmp_path)
    out = ask("permanent", sender="mx")
    d = r.link.deliver(out)
    r.run(d)
    [answer] = r.link.confirmed
    assert answer.message_id == codec.derived_id(out.envelope.message_id, "rejected")
    assert r.marker(out.envelope.message_id) is not None  # a redelivery re-sends, not re-decides
    assert r.link.acks() == [d.delivery_tag]
    assert r.link.to(addresses.dead_letter_key("us", "retrieval")) == []
    assert r.refusals() == [("retrieval.ask", "mx", "not_matched", True)]


def test_a_permanent_error_nobody_can_be_told_of_is_dead_lettered_with_its_reason(tmp_path):
    r = rig(tmp_path)
    out = ask("permanent")
    d = r.link.deliver(out)
    r.run(d)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.exchange == addresses.inbox("us")  # through the inbox: the audit sees it
    assert dead.body == out.body and dead.message_id == out.envelope.message_id
    h = dead.headers
    assert h["biox-reason"] == "not_matched" and h["biox-permanent"] is True
    assert h["biox-error-class"] == "PermanentError"
    assert h["biox-original-exchange"] == out.exchange
    assert h["biox-original-routing-key"] == out.routing_key
    assert h["biox-original-user-id"] == "us.workers"
    assert dead.properties.user_id == "us-workers"  # the broker accepts no other on our link
    assert h["biox-worker"].startswith(QUEUE + "@")
    assert h["biox-attempt"] == 0  # failed on its first delivery
    assert r.refusals() == [("retrieval.ask", "us", "not_matched", False)]  # counted (§27)
    assert r.marker(out.envelope.message_id) is None
    assert r.link.acks() == [d.delivery_tag]


def test_a_partners_message_back_from_a_retry_tier_keeps_its_attempts(tmp_path):
    """The broker brings a tier's expired copy back by the default exchange, which only
    our own copies use: its headers are kept and the attempts climb. The same headers on a
    delivery through the inbox are the partner's own and dropped: it cannot pick a tier."""
    r = rig(tmp_path)
    out = ask("transient", sender="mx")
    r.run(r.link.deliver(out))
    [hop] = r.link.to(addresses.retry_key("us", "retrieval", 1))
    assert hop.headers["biox-attempt"] == 1
    r.run(r.link.deliver(out, headers=hop.headers, exchange=""))
    [hop2] = r.link.to(addresses.retry_key("us", "retrieval", 5))
    assert hop2.headers["biox-attempt"] == 2
    r.run(r.link.deliver(out, headers=hop2.headers))  # forged by mx: starts again at 1
    assert [
        h.headers["biox-attempt"] for h in r.link.to(addresses.retry_key("us", "retrieval", 1))
    ] == [1, 1]


def test_a_permanent_error_after_retries_is_parked_with_the_attempts_it_had(tmp_path):
    """A message that went round the retry tiers twice and then failed for good: the dead
    letter says 2, so an operator knows it was tried before."""
    r = rig(tmp_path)
    out = ask("permanent")
    r.run(r.link.deliver(out, headers={"biox-attempt": 2}, exchange=""))  # from the tier
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-attempt"] == 2


def test_an_unreadable_body_is_dead_lettered_as_undecodable(tmp_path):
    r = rig(tmp_path)
    d = r.link.deliver(ask("ok"), body=b"\xc1 not msgpack")
    r.run(d)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-reason"] == "undecodable" and dead.body == b"\xc1 not msgpack"
    assert r.handler.calls == []


def test_a_body_over_the_size_limit_is_refused_before_anything_reads_it(tmp_path):
    r = rig(tmp_path, max_message_bytes=1000)
    big = b"\x92" + b"\x00" * 1000  # would decode (a list): only its size refuses it
    d = r.link.deliver(ask("ok"), body=big)
    fits = r.link.deliver(ask("ok"), body=b"\xc1" * 1000)
    r.run(d, fits)
    dead = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert [m.headers["biox-reason"] for m in dead] == ["too_large", "undecodable"]
    assert "1001 bytes > 1000" in dead[0].headers["biox-error"]
    assert r.handler.calls == []


def test_a_kind_the_queue_does_not_take_is_dead_lettered_as_unknown_kind(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    d = r.link.deliver(out)
    d.properties.type = "query"
    r.run(d)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-reason"] == "unknown_kind"
    assert "us.retrieval" in dead.headers["biox-error"]
    assert r.handler.calls == []


def test_a_transient_error_climbs_the_retry_tiers_then_parks(tmp_path):
    r = rig(tmp_path)
    out = ask("transient")
    first = r.link.deliver(out)
    r.run(first)
    [hop] = r.link.to(addresses.retry_key("us", "retrieval", 1))
    assert hop.exchange == addresses.inbox("us") and hop.headers["biox-attempt"] == 1
    assert hop.headers["biox-reason"] == "unknown_query" and hop.headers["biox-permanent"] is False
    assert hop.body == out.body and hop.message_id == out.envelope.message_id
    assert r.link.acks() == [first.delivery_tag]  # acked once the copy sits in its tier

    # the tier's TTL expired: back again, dead-lettered by the broker on the default exchange
    second = r.link.deliver(out, headers=hop.headers, exchange="")
    r.run(second)
    [hop2] = r.link.to(addresses.retry_key("us", "retrieval", 5))
    assert hop2.headers["biox-attempt"] == 2
    assert hop2.headers["biox-first-failed-at"] == hop.headers["biox-first-failed-at"]

    third = r.link.deliver(out, headers=hop2.headers, exchange="")  # past the last tier
    r.run(third)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-attempt"] == 3
    # parked with the last failure's why: what an operator reads before replaying
    assert dead.headers["biox-reason"] == "unknown_query"
    assert dead.headers["biox-error"] == "not yet"  # the code is biox-reason's alone
    assert dead.headers["biox-error-class"] == "TransientError"
    assert r.marker(out.envelope.message_id) is None  # never processed: a replay handles it


@pytest.mark.parametrize("neighbours", [1, 3])
def test_a_handler_exception_isolates_the_message_that_causes_it(tmp_path, neighbours):
    r = rig(tmp_path)
    good = [r.link.deliver(ask("ok")) for _ in range(neighbours)]
    bad = r.link.deliver(ask("boom"))
    r.run(*good, bad)
    assert len(r.link.confirmed) - len(r.link.to(addresses.retry_key("us", "retrieval", 1))) == (
        neighbours
    )
    [hop] = r.link.to(addresses.retry_key("us", "retrieval", 1))
    assert hop.message_id == bad.properties.message_id
    assert hop.headers["biox-reason"] == "handler_error"
    assert hop.headers["biox-error-class"] == "RuntimeError"
    assert sorted(r.link.acks()) == sorted(d.delivery_tag for d in [*good, bad])
    for d in good:
        assert r.effect(d.properties.message_id) is not None


def test_an_optimistic_lock_conflict_reruns_the_batch_at_once(tmp_path):
    r = rig(tmp_path, ScriptedHandler(stale_times=1))
    out = ask("stale")
    d = r.link.deliver(out)
    with capture_logs() as logs:
        r.run(d)
    [rerun] = events(logs, "conflict_rerun")
    assert (rerun["worker"], rerun["batch"]) == (r.loop.worker, 1)
    assert rerun["error"] == "encounter revision moved"
    assert len(r.handler.calls) == 2  # ran again on fresh state, no retry tier
    assert r.link.to(addresses.retry_key("us", "retrieval", 1)) == []
    assert len(r.link.confirmed) == 1 and r.link.acks() == [d.delivery_tag]


def test_a_conflict_that_keeps_coming_back_goes_to_the_retry_tier(tmp_path):
    r = rig(tmp_path, ScriptedHandler(stale_times=100))
    d = r.link.deliver(ask("stale"))
    r.run(d)
    assert len(r.handler.calls) == 4  # the first run and three re-runs, then the tier
    [hop] = r.link.to(addresses.retry_key("us", "retrieval", 1))
    assert hop.headers["biox-error-class"] == "StaleDataError"


def test_a_delivery_without_message_id_is_parked_once_and_never_handled(tmp_path):
    r = rig(tmp_path)
    d = r.link.deliver(ask("ok"), message_id=None)
    r.run(d)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-reason"] == "invalid_message"
    assert dead.headers["biox-error"] == "no message_id"
    assert r.handler.calls == [] and r.link.acks() == [d.delivery_tag]


def test_a_delivery_without_message_id_that_cannot_be_parked_goes_back_to_its_queue(tmp_path):
    r = rig(tmp_path, publish_timeout=0.3)
    r.link.refuse_all = ConnectionLost
    d = r.link.deliver(ask("ok"), message_id=None)
    with capture_logs() as logs:
        r.run(d)
    [trouble] = events(logs, "publish_failed")
    assert trouble["log_level"] == "warning" and trouble["worker"] == r.loop.worker
    assert (trouble["error"], trouble["batch"]) == ("1 message(s) unconfirmed or nacked", 1)
    assert r.link.nacks() == [(d.delivery_tag, True)] and r.link.acks() == []
    assert r.handler.calls == []


def test_a_failure_that_cannot_be_parked_is_requeued_not_acked(tmp_path):
    r = rig(tmp_path)
    r.link.refuse_all = ConnectionLost
    d = r.link.deliver(ask("transient"))
    r.run(d)
    assert r.link.nacks() == [(d.delivery_tag, True)] and r.link.acks() == []


class UndecodedHandler(Handler):
    """Takes every kind undecoded, like the audit consumer: each hop is its own event.
    ``fail``: the error it returns for every message instead (none: it records them)."""

    def __init__(self, fail: BioxError | None = None) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.batches: list[int] = []
        self.fail = fail

    def handle(self, batch: Sequence[Inbound], session: Session) -> list[Result]:
        self.batches.append(len(batch))
        for i in batch:
            assert i.message is None
            self.seen.append((i.envelope.message_id, i.routing_key, i.envelope.attempt))
        return [self.fail or Effects(outcome="seen") for _ in batch]

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None


def test_an_undecoded_consumer_keys_each_hop_of_a_message_separately(tmp_path):
    handler = UndecodedHandler()
    r = rig(tmp_path, handler, undecoded=True)
    out = ask("ok")
    first = r.link.deliver(out)
    hop = r.link.deliver(out, headers={"biox-attempt": 1}, exchange="")  # back from a tier
    again = r.link.deliver(out, redelivered=True)  # the first hop once more
    r.run(first, hop, again)
    mid = out.envelope.message_id
    assert handler.seen == [(mid, out.routing_key, 0), (mid, out.routing_key, 1)]
    with session_for(r.db) as s:
        keys = s.exec(select(ProcessedMessage.message_id)).all()
    assert sorted(keys) == sorted(
        f"{out_user(out)}|{mid}|{exchange}|{out.routing_key}|{n}"
        for exchange, n in ((out.exchange, 0), ("", 1))
    )


def test_the_audit_trail_is_its_own_idempotency_record(tmp_path):
    """The audit queue writes no marker: each entry carries its hop under a unique index,
    and a redelivery, or a second publish of the same hop, finds it there and is not
    chained again; a redelivery an older version marked finds that marker."""
    assert ROUTES.audit is not None
    r = rig(tmp_path, AuditHandler("us"), routes=RouteTable([ROUTES.audit], []))
    out = ask("ok")
    first = r.link.deliver(out)
    r.run(first)
    again = r.link.deliver(out, redelivered=True)
    twice = r.link.deliver(out)  # the same hop, published twice
    hop = r.link.deliver(out, headers={"biox-attempt": 1}, exchange="")
    r.run(again, twice, hop)
    legacy = ask("ok")  # handled before the upgrade: a marker, no hop on its entry
    lid = legacy.envelope.message_id
    key = f"{out_user(legacy)}|{lid}|{legacy.exchange}|{legacy.routing_key}|0"
    with session_for(r.db) as s:
        s.add(ProcessedMessage(consumer="us.audit", message_id=key))
        s.commit()
    r.link.deliver(legacy, redelivered=True)
    r.run(*list(r.link.deliveries.queue))
    with session_for(r.db) as s:
        entries = s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
        markers = s.exec(select(ProcessedMessage)).all()
        assert audit.verify(s) == (2, None)
    mid = out.envelope.message_id
    assert [(e.message_id, e.hop) for e in entries] == [
        (mid, f"{out_user(out)}|{mid}|{exchange}|{out.routing_key}|{n}")
        for exchange, n in ((out.exchange, 0), ("", 1))
    ]
    assert [m.message_id for m in markers] == [key]  # only the older version's
    assert r.loop.stats["duplicate"] == 3


def test_an_undecoded_queue_sends_its_failures_on_keys_it_does_not_record(tmp_path):
    """The audit consumer's own failures go through the inbox like every hop (nobody writes
    to the default exchange) but on keys the audit queue is not bound to: they must not
    feed it."""
    transient = TransientError(Reason.unknown_query, "not yet")
    r = rig(tmp_path, UndecodedHandler(fail=transient), undecoded=True)
    r.run(r.link.deliver(ask("ok")))
    [hop] = r.link.confirmed
    assert (hop.exchange, hop.routing_key) == (
        "biox.us",
        addresses.unrecorded_retry_key("us", "audit", 1),
    )
    r.handler.fail = PermanentError(Reason.undecodable)
    r.run(r.link.deliver(ask("ok")))
    dead = r.link.confirmed[-1]
    assert (dead.exchange, dead.routing_key) == (
        "biox.us",
        addresses.unrecorded_dead_letter_key("us", "audit"),
    )


# --- what an operator reads: one log line per outcome, the counts at the end ---------------------


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_each_message_leaves_a_log_line_an_operator_can_follow(tmp_path):
    r = rig(tmp_path)
    ok, dead, later = ask("ok"), ask("permanent"), ask("transient")
    with capture_logs() as logs:
        r.run(*(r.link.deliver(m) for m in (ok, dead, later)))
    [started] = events(logs, "worker_started")
    assert started["queue"] == QUEUE and started["worker"] == r.loop.worker
    [handled] = events(logs, "handled")
    assert {
        k: handled[k] for k in ("query_id", "message_id", "kind", "sender", "outcome", "attempt")
    } == {
        "query_id": "q-1",
        "message_id": ok.envelope.message_id,
        "kind": "retrieval.ask",
        "sender": "us",
        "outcome": "done:effect",
        "attempt": 0,
    }
    [parked] = events(logs, "dead_lettered")
    assert (parked["query_id"], parked["message_id"]) == ("q-1", dead.envelope.message_id)
    assert parked["route"] == "biox.us/us.dead-letter.retrieval"
    assert parked["error"] == "not_matched: no match to ask about"
    [failed] = events(logs, "handler_failed")
    assert (failed["query_id"], failed["message_id"], failed["attempt"]) == (
        "q-1",
        later.envelope.message_id,
        1,
    )
    assert (failed["reason"], failed["error"]) == ("unknown_query", "TransientError: not yet")
    assert failed["transient"] is True
    [stopped] = events(logs, "worker_stopped")
    assert stopped["worker"] == r.loop.worker
    assert (stopped["done"], stopped["retried"], stopped["dead_lettered"]) == (1, 1, 1)


def test_an_unexpected_failure_is_logged_as_not_transient(tmp_path):
    r = rig(tmp_path)
    with capture_logs() as logs:
        r.run(r.link.deliver(ask("boom")))
    [failed] = events(logs, "handler_failed")
    assert failed["error"] == "RuntimeError: handler bug" and failed["transient"] is False
    assert r.loop.stats["retried"] == 1


def test_a_retry_that_cannot_be_published_is_logged_and_the_input_requeued(tmp_path):
    r = rig(tmp_path)
    r.link.refuse_all = ConnectionLost
    with capture_logs() as logs:
        r.run(r.link.deliver(ask("transient")))
    [trouble] = events(logs, "retry_publish_failed")
    assert trouble["error"] == "1 message(s) unconfirmed or nacked"
    assert r.loop.stats["retried"] == 0


def test_a_batch_holds_at_most_batch_max_deliveries(tmp_path):
    r = rig(tmp_path, batch_max=2)
    ds = [r.link.deliver(ask("ok")) for _ in range(5)]
    r.run(*ds)
    sizes = [len(c) for c in r.handler.calls]
    assert max(sizes) == 2 and sum(sizes) == 5 and sizes[0] == 2


def test_a_batch_waits_a_moment_for_more_deliveries(tmp_path):
    r = rig(tmp_path, batch_wait_ms=400)
    first = r.link.deliver(ask("ok"))
    timer = threading.Timer(0.1, lambda: r.link.deliver(ask("ok")))
    timer.start()
    second_tag = first.delivery_tag + 1
    stop = threading.Event()
    worker = threading.Thread(target=r.loop.run, args=(stop,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while {first.delivery_tag, second_tag} - r.link.settled() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert [len(c) for c in r.handler.calls] == [2]  # one batch: the second came in time


def batches_of_two_deliveries_100_ms_apart(r: Rig, sizes: Callable[[], list[int]]) -> list[int]:
    first = r.link.deliver(ask("ok"))
    timer = threading.Timer(0.1, lambda: r.link.deliver(ask("ok")))
    timer.start()
    stop = threading.Event()
    worker = threading.Thread(target=r.loop.run, args=(stop,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while len(r.link.settled()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert first.delivery_tag in r.link.settled()
    return sizes()


def test_the_audit_waits_longer_for_a_fuller_batch_and_the_query_path_does_not(tmp_path):
    """No query waits for an audit entry, and at a few entries a batch the audit worker
    spent most of its CPU on the batch's fixed cost (``BIOX_AUDIT_BATCH_WAIT_MS``)."""
    waits = {"batch_wait_ms": 0, "audit_batch_wait_ms": 400}
    for sub in ("audit", "query-path"):
        (tmp_path / sub).mkdir()
    audit = UndecodedHandler()
    r = rig(tmp_path / "audit", audit, undecoded=True, **waits)
    assert batches_of_two_deliveries_100_ms_apart(r, lambda: audit.batches) == [2]
    r = rig(tmp_path / "query-path", **waits)
    assert batches_of_two_deliveries_100_ms_apart(r, lambda: [len(c) for c in r.handler.calls]) == [
        1,
        1,
    ]


def test_markers_are_written_with_their_time_and_outputs(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    before = datetime.now(UTC)
    r.run(r.link.deliver(out))
    marker = r.marker(out.envelope.message_id)
    assert marker is not None and marker.consumer == QUEUE
    assert marker.processed_at.replace(tzinfo=UTC) >= before.replace(microsecond=0)
    [stored] = unpack_outgoing(marker.outputs)
    assert stored.envelope.message_id == codec.derived_id(out.envelope.message_id, "effect")


def test_a_handler_gets_the_message_decoded_with_where_it_came_from(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    r.run(r.link.deliver(out))
    [inbound] = r.handler.seen
    assert isinstance(inbound.message, RetrievalAsk) and inbound.message.asked_by == "ok"
    assert (inbound.body, inbound.exchange, inbound.routing_key) == (
        out.body,
        out.exchange,
        out.routing_key,
    )
    assert inbound.envelope.message_id == out.envelope.message_id


def test_a_handler_that_answers_fewer_messages_than_it_got_commits_nothing(tmp_path):
    """A result per message is the handler contract: a batch that breaks it is a bug, sent
    to the retry tier whole, never half acked."""
    r = rig(tmp_path)
    d = r.link.deliver(ask("short"))
    r.run(d)
    [hop] = r.link.to(addresses.retry_key("us", "retrieval", 1))
    assert hop.headers["biox-error-class"] == "ValueError"
    assert r.marker(d.properties.message_id) is None


def test_the_counters_an_operator_reads_at_stop_count_every_message(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    same = [r.link.deliver(out, redelivered=i > 0) for i in range(3)]  # one batch, 3 copies
    r.run(*same)
    r.run(r.link.deliver(out, redelivered=True))  # and once more after it was done
    r.run(r.link.deliver(ask("ok")))  # a second, different one
    r.run(r.link.deliver(ask("transient")), r.link.deliver(ask("transient")))
    r.run(r.link.deliver(ask("permanent")), r.link.deliver(ask("permanent")))
    assert r.loop.stats == {"done": 2, "duplicate": 3, "retried": 2, "dead_lettered": 2}
    # and the same in the worker's Prometheus metrics, by kind, outcome, route and reason
    samples = {
        (
            s.name,
            tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("participant", "queue"))),
        ): s.value
        for f in r.loop.metrics.registry.collect()
        for s in f.samples
    }
    assert (
        samples[("biox_messages_in_total", (("kind", "retrieval.ask"), ("outcome", "done")))] == 2
    )
    assert samples[("biox_messages_out_total", (("kind", "retrieval.ask"),))] == 2
    assert samples[("biox_duplicates_total", ())] == 3
    assert samples[("biox_failures_total", (("reason", "unknown_query"), ("route", "retry")))] == 2
    assert (
        samples[("biox_failures_total", (("reason", "not_matched"), ("route", "dead_letter")))] == 2
    )
    assert samples[("biox_end_to_end_seconds_count", (("kind", "retrieval.ask"),))] == 2
    # one handler call per batch that had something new; each took well under a second
    assert samples[("biox_handler_seconds_count", (("kind", "retrieval.ask"),))] == 4
    assert 0 < samples[("biox_handler_seconds_sum", (("kind", "retrieval.ask"),))] < 4
    labelled = {
        (s.labels.get("participant"), s.labels.get("queue"))
        for f in r.loop.metrics.registry.collect()
        for s in f.samples
    }
    assert labelled == {("us", "us.retrieval")}  # every sample names its worker


def test_a_lost_published_mark_is_logged_and_costs_only_a_republish(tmp_path, monkeypatch):
    """Marking outputs published is best effort: if that write fails the input is acked
    all the same. The worker remembers the confirm, so its own redelivery sends nothing
    again; a worker started after it (a restart) republishes the stored outputs under
    the same ids."""
    from biox.broker import consumer

    def disk_full(*_: Any) -> None:
        raise OSError("disk full")

    r = rig(tmp_path)
    monkeypatch.setattr(consumer, "mark_published", disk_full)
    out = ask("ok")
    d = r.link.deliver(out)
    with capture_logs() as logs:
        r.run(d)
    lost = events(logs, "mark_published_failed")[0]
    assert lost["log_level"] == "warning"
    assert (lost["worker"], lost["error"]) == (r.loop.worker, "disk full")
    assert r.link.acks() == [d.delivery_tag]
    assert not r.marker(out.envelope.message_id).published
    effect = codec.derived_id(out.envelope.message_id, "effect")
    monkeypatch.undo()
    restarted = rig(tmp_path)  # the same database, a new worker: it knows only the marker
    restarted.run(restarted.link.deliver(out, redelivered=True))
    assert len(r.handler.calls) == 1 and not restarted.handler.calls  # handled once, ever
    assert [c.message_id for c in restarted.link.confirmed] == [effect]
    assert restarted.marker(out.envelope.message_id).published  # marked once it idled


def test_a_worker_whose_mark_was_lost_still_sends_nothing_twice(tmp_path, monkeypatch):
    from biox.broker import consumer

    def disk_full(*_: Any) -> None:
        raise OSError("disk full")

    r = rig(tmp_path)
    monkeypatch.setattr(consumer, "mark_published", disk_full)
    out = ask("ok")
    r.run(r.link.deliver(out))
    assert not r.marker(out.envelope.message_id).published
    monkeypatch.undo()
    r.run(r.link.deliver(out, redelivered=True))  # it remembers the confirm
    assert [c.message_id for c in r.link.confirmed] == [
        codec.derived_id(out.envelope.message_id, "effect")
    ]
    assert r.marker(out.envelope.message_id).published  # with that batch's commit


def test_a_confirmed_output_is_marked_with_the_next_batch_not_a_transaction_of_its_own(
    tmp_path, monkeypatch
):
    """docs/performance.md: a commit of its own per batch, for the published mark, was 13 %
    of intake's time under load. The mark rides on the next batch's commit; an idle queue
    or a stopping worker writes it alone."""
    from biox import database
    from biox.broker import consumer

    r = rig(tmp_path)
    calls: list[list[str]] = []

    def recorded(session: Any, queue: str, ids: list[str]) -> None:
        calls.append(list(ids))
        database.mark_published(session, queue, ids)

    monkeypatch.setattr(consumer, "mark_published", recorded)
    first, second = ask("ok"), ask("ok")
    key = lambda o: f"{o.envelope.sender}/{o.envelope.message_id}"  # noqa: E731
    r.loop.consume([r.link.deliver(first)])
    assert calls == [] and r.loop.confirmed == {key(first)}
    assert not r.marker(first.envelope.message_id).published  # not yet: no commit of its own
    r.loop.consume([r.link.deliver(second)])
    assert calls == [[key(first)]] and r.loop.confirmed == {key(second)}  # with the batch
    assert r.marker(first.envelope.message_id).published
    r.run()  # idle, then stopping: the rest alone
    assert calls[-1] == [key(second)] and not r.loop.confirmed
    assert r.marker(second.envelope.message_id).published


def test_a_publish_never_confirmed_within_the_timeout_is_not_taken_for_a_success(tmp_path):
    """A confirm that never comes (the connection hung after the broker took it) is not a
    success: the input is not acked but requeued, and its redelivery publishes the output
    again under the same id."""
    r = rig(tmp_path, publish_timeout=1.0)
    silent: list[Future[None]] = []
    original = r.link.publish

    def first_unanswered(*args: Any, **kw: Any) -> Future[None]:
        if not silent:
            silent.append(Future())  # never settled
            return silent[0]
        return original(*args, **kw)

    r.link.publish = first_unanswered  # type: ignore[method-assign]
    out = ask("ok")
    d = r.link.deliver(out)
    r.run(d, timeout=10)
    assert r.link.acks() == [] and r.link.nacks() == [(d.delivery_tag, True)]
    again = r.link.deliver(out, redelivered=True)
    r.run(again, timeout=10)
    assert [p.message_id for p in r.link.confirmed] == [
        codec.derived_id(out.envelope.message_id, "effect")
    ]
    assert r.link.acks() == [again.delivery_tag]


def test_confirming_one_message_marks_only_its_own_outputs_published(tmp_path):
    """A message whose outputs were never confirmed stays marked unpublished while others
    go through, so that its redelivery still republishes them."""
    r = rig(tmp_path, publish_timeout=0.3)
    r.link.refuse_all = ConnectionLost
    stuck = ask("ok")
    r.run(r.link.deliver(stuck))
    r.link.refuse_all = None
    fine = ask("ok")
    r.run(r.link.deliver(fine))
    assert r.marker(fine.envelope.message_id).published
    assert not r.marker(stuck.envelope.message_id).published


# --- scheduled maintenance between batches -------------------------------------------------------


class Maintaining(ScriptedHandler):
    """A handler with scheduled work: a row and a message each time, or a failure."""

    def __init__(self, every_s: float, fail: bool = False) -> None:
        super().__init__()
        self.maintain_every_s = every_s
        self.fail = fail
        self.runs = 0

    def maintain(self, session: Session, now: datetime) -> list[Outgoing]:
        self.runs += 1
        self.at = now
        if self.fail:
            raise RuntimeError("disk full")
        session.add(ParticipantRow(code=f"kept-{self.runs}", agency="maintenance", status="x"))
        return [ask("ok", message_id=f"maintained-{self.runs}")]


def test_scheduled_work_runs_once_its_interval_passed_committed_then_published(tmp_path):
    handler = Maintaining(every_s=60)
    r = rig(tmp_path, handler)
    r.loop.maintain()  # just started: not yet due
    assert handler.runs == 0
    r.loop._maintained_at -= 61  # a minute later
    r.loop.maintain()
    r.loop.maintain()  # due again only one interval after the last run
    assert handler.runs == 1
    assert handler.at.tzinfo is UTC  # the loop's clock, aware, handed to the handler
    assert r.effect("kept-1") is not None  # committed
    assert [p.message_id for p in r.link.confirmed] == ["maintained-1"]  # then published


class MaintainingForPartners(Maintaining):
    """Scheduled work that speaks to a partner, as the audit worker's checkpoints do."""

    def maintain(self, session: Session, now: datetime) -> list[Outgoing]:
        self.runs += 1
        ask = RetrievalAsk(query_id="q-1", elements=[Element.reference], asked_by="schedule")
        return [
            codec.to_partner(
                ask, sender="us", recipient="mx", message_id="scheduled-1", correlation_id="q-1"
            )
        ]


def test_scheduled_work_for_a_partner_leaves_signed_and_sealed_like_any_other(tmp_path):
    r = rig(tmp_path, MaintainingForPartners(every_s=60))
    r.loop._maintained_at -= 61
    r.loop.maintain()
    [sent] = r.link.confirmed
    assert sent.headers["biox-signature"] and sent.headers["biox-sealed-to"]
    assert (sent.exchange, sent.routing_key) == ("biox.us.out", "mx.retrieval.ask")
    env = read_envelope(sent.properties)
    opened = RINGS["mx"].open(env, sent.body)  # mx, and only mx, can read it
    assert codec.decode_body(RetrievalAsk, env.schema, opened).asked_by == "schedule"


def test_a_handler_without_a_schedule_is_never_maintained(tmp_path):
    for every in (0, -1):
        handler = Maintaining(every_s=every)
        r = rig(tmp_path / str(every), handler)
        r.loop._maintained_at -= 3600
        r.loop.maintain()
        assert handler.runs == 0 and r.link.confirmed == []
    plain = rig(tmp_path / "plain")  # ScriptedHandler keeps the protocol's default: no schedule
    plain.loop._maintained_at -= 3600
    with capture_logs() as logs:
        plain.loop.maintain()
    assert plain.link.confirmed == [] and logs == []  # not tried, so nothing failed


def test_an_interval_under_a_second_is_kept_too(tmp_path):
    handler = Maintaining(every_s=0.5)
    r = rig(tmp_path, handler)
    r.loop._maintained_at -= 0.6
    r.loop.maintain()
    assert handler.runs == 1


def test_failed_scheduled_work_is_logged_and_the_loop_goes_on(tmp_path):
    handler = Maintaining(every_s=60, fail=True)
    r = rig(tmp_path, handler)
    r.loop._maintained_at -= 61
    with capture_logs() as logs:
        r.loop.maintain()
    [failed] = [e for e in logs if e["event"] == "maintenance_failed"]
    assert "disk full" in failed["error"] and failed["worker"] == r.loop.worker
    assert r.link.confirmed == []
    d = r.link.deliver(ask("ok"))
    r.run(d)  # still consuming
    assert r.link.acks() == [d.delivery_tag]


# --- verify, then answer; freshness (docs/security.md) --------------------------------------


@pytest.mark.parametrize("trick", ["unknown kind", "too large"])
def test_nothing_is_answered_before_the_broker_identity_is_proven(tmp_path, trick):
    """sv, holding a real login, names mx in biox-from on a message the loop refuses
    before any handler: an unknown kind, or a body over the limit. Checked in the order
    identity first, nobody is answered (were it answered, us would send mx a signed
    rejection of a message mx never sent); the dead letter names the identity failure."""
    r = rig(tmp_path, dev_shared_broker=False, max_message_bytes=1000)
    out = ask("ok", sender="mx")
    if trick == "unknown kind":
        out.envelope = replace(out.envelope, kind="no.such.kind")
    body = out.body + b"\0" * 2000 if trick == "too large" else None
    d = r.link.deliver(out, body=body, user_id="sv.workers")  # the broker: sv is speaking
    r.run(d)
    assert r.link.to(f"mx.{out.envelope.kind}") == [] and r.handler.calls == []
    assert [p for p in r.link.confirmed if not p.routing_key.startswith("us.")] == []
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-reason"] == (
        "unknown_kind" if trick == "unknown kind" else "forged_sender"
    )
    assert r.refusals()[0][3] is False  # recorded as not answered


def test_a_proven_partner_is_answered_when_its_message_is_too_large(tmp_path):
    r = rig(tmp_path, dev_shared_broker=False, max_message_bytes=60)
    out = ask("ok", sender="mx")  # signed and sealed by mx, longer than 60 bytes
    assert len(out.body) > 60
    r.run(r.link.deliver(out, user_id="mx.workers"))
    [answer] = r.link.confirmed
    assert answer.message_id == codec.derived_id(out.envelope.message_id, "rejected")


@pytest.mark.parametrize(
    ("signed_ago", "refused"),
    [
        (timedelta(days=2), False),
        (timedelta(days=4), True),  # older than the window (3 days by default)
        (timedelta(minutes=-3), False),  # a partner's clock a little ahead
        (timedelta(minutes=-30), True),  # signed in the future: beyond the skew
    ],
)
def test_a_partners_signature_must_be_fresh_on_first_arrival(tmp_path, signed_ago, refused):
    r = rig(tmp_path, dev_shared_broker=False)
    plain = ask("ok")
    plain.envelope = replace(plain.envelope, sender="mx", recipient="us")
    out = RINGS["mx"].seal(plain, signed_at=datetime.now(UTC) - signed_ago)
    r.run(r.link.deliver(out))
    dead = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert [d.headers["biox-reason"] for d in dead] == (["stale"] if refused else [])
    if refused:  # the operator's replay of that dead letter is ours: not held to the window
        replay = r.link.deliver(
            out,
            exchange="biox.us",
            routing_key=addresses.replay_key("us", "retrieval"),
            headers=dead[0].headers,
            user_id="us.operators",
        )
        r.run(replay)
        assert len(r.link.to(addresses.dead_letter_key("us", "retrieval"))) == 1


def test_a_partners_id_cannot_squat_anothers(tmp_path):
    """sv sends a message under the id mx's next one will have: both are handled, each
    marked under its own sender (database.marker_key); sv's copy suppresses nothing."""

    class Seen(ScriptedHandler):
        def _one(self, inb: Inbound) -> Result:
            return Effects(outcome="seen")

    r = rig(tmp_path, Seen(), dev_shared_broker=False)
    squat = ask("ok", sender="sv", message_id="m-next")
    real = ask("ok", sender="mx", message_id="m-next")
    r.run(r.link.deliver(squat, user_id="sv.workers"))
    r.run(r.link.deliver(real, user_id="mx.workers"))
    assert r.handler.calls == [["m-next"], ["m-next"]]
    with session_for(r.db) as s:
        keys = sorted(s.exec(select(ProcessedMessage.message_id)).all())
    assert keys == ["mx/m-next", "sv/m-next"]


def test_headers_over_the_bound_are_refused_before_anything_else_and_never_answered(tmp_path):
    """The broker's max_message_size counts the body only: 20 KiB of headers from a
    partner that is otherwise proven are refused too_large, by size, unanswered."""
    r = rig(tmp_path, dev_shared_broker=False, max_header_bytes=16 * 1024)
    out = ask("ok", sender="mx")
    d = r.link.deliver(out, headers={"x-pad": "x" * (20 * 1024)}, user_id="mx.workers")
    r.run(d)
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-reason"] == "too_large"
    assert "headers of " in dead.headers["biox-error"] and "> 16384" in dead.headers["biox-error"]
    assert [p for p in r.link.confirmed if not p.routing_key.startswith("us.")] == []
    assert r.handler.calls == []
    exact = rig(tmp_path / "exact", dev_shared_broker=False, max_header_bytes=10**6)
    d = exact.link.deliver(out, user_id="mx.workers")
    size = header_bytes(
        arrived(read_envelope(d.properties), d.exchange, d.routing_key, "us").headers
    )
    tight = rig(tmp_path / "tight", dev_shared_broker=False, max_header_bytes=size)
    tight.run(tight.link.deliver(out, user_id="mx.workers"))  # exactly at the bound: taken
    assert tight.link.to(addresses.dead_letter_key("us", "retrieval")) == []


def test_an_unknown_kind_is_named_with_what_the_queue_takes(tmp_path):
    r = rig(tmp_path)
    out = ask("ok")
    out.envelope = replace(out.envelope, kind="no.such.kind")
    r.run(r.link.deliver(out))
    [dead] = r.link.to(addresses.dead_letter_key("us", "retrieval"))
    assert dead.headers["biox-error"].endswith(
        "'no.such.kind' on us.retrieval, which takes retrieval.ask"
    )


def test_the_freshness_window_allows_the_clock_skew_on_both_sides(tmp_path):
    r = rig(tmp_path, dev_shared_broker=False)
    plain = ask("ok")
    plain.envelope = replace(plain.envelope, sender="mx", recipient="us")
    just_old = timedelta(days=3, minutes=2)  # past the 3 days, within the 5 min skew
    out = RINGS["mx"].seal(plain, signed_at=datetime.now(UTC) - just_old)
    r.run(r.link.deliver(out))
    assert r.link.to(addresses.dead_letter_key("us", "retrieval")) == []
