"""The exchange in memory: every participant's real handlers under the real consume loop,
routed by the real topology, with no broker (docs/testing.md, "In memory").

For biox's own tests of whole workflows, and for integrators who want to try their
handlers, their policy files or their encounter-system logic without a RabbitMQ::

    exchange = InMemoryExchange(settings)          # registry, policy, data_dir from settings
    exchange.declare_queue("my-encounter-system")  # the encounter system's reply queue
    exchange.publish(codec.to_submissions(submit, participant="us", message_id=...,
                                        correlation_id=submit.encounter_id,
                                        reply_to="my-encounter-system"))
    exchange.run()                                 # until nothing is left to do
    exchange.results("my-encounter-system")        # the EncounterResults, in order

What is the same as on a broker: the route table, the bindings (``topology.bindings``),
sender checks, decoding, idempotency, commits, ``rejected`` answers and dead letters
with their reasons, retry tiers (``run`` lets a tier's messages back in once nothing else
is left, as its TTL would), and the quorum queues' delivery limit (a message requeued
more than ``BIOX_DELIVERY_LIMIT`` times is parked in the queue's DLQ). What is not: time
(no TTL, no lease clock), concurrency (one batch at a time), and the broker's own refusals
(permissions, limits). Broker users are stamped as a broker would (``publish`` takes the
rightful sender's unless told otherwise), and partner messages are signed and sealed.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import pika

from biox.agreement import participants
from biox.broker.consumer import ConsumeLoop
from biox.broker.link import Delivery, Message, Unroutable
from biox.broker.publisher import Publisher
from biox.broker.topology import arrival_queues, bindings
from biox.database import session_for
from biox.handlers.base import Context, Handler
from biox.policy.release import Policies
from biox.registry import Registry
from biox.routes import Queue, RouteTable, Sender, routes_for
from biox.settings import Settings
from biox.trust.identity import Role, broker_user
from biox.trust.sealing import memory_rings
from biox.wire import addresses, codec
from biox.wire.codec import Envelope, Outgoing
from biox.wire.inbound import read_envelope
from biox.wire.messages import EncounterResult


@dataclass
class Stored:
    """A message sitting in a queue of the memory broker."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    deliveries: int = 0  # times handed to a consumer and given back


@dataclass
class MemoryBroker:
    """Topic exchanges, exchange-to-exchange bindings and queues, held in dictionaries."""

    queues: dict[str, deque[Stored]] = field(default_factory=dict)
    # source exchange → [(destination, is an exchange, pattern)]
    bound: dict[str, list[tuple[str, bool, str]]] = field(default_factory=dict)
    published: list[Stored] = field(default_factory=list)  # every publish, in order

    def declare_queue(self, name: str) -> None:
        self.queues.setdefault(name, deque())

    def bind(self, destination: str, source: str, pattern: str) -> None:
        self.bound.setdefault(source, []).append(
            (destination, destination not in self.queues, pattern)
        )

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Any) -> int:
        """Routes a copy to every queue bound; returns how many queues it reached."""
        message = Stored(exchange, routing_key, body, props)
        self.published.append(message)
        if exchange == "":
            if routing_key not in self.queues:
                return 0
            self.queues[routing_key].append(message)
            return 1
        reached: set[str] = set()
        self._route(exchange, routing_key, message, reached, set())
        return len(reached)

    def _route(
        self, exchange: str, key: str, message: Stored, reached: set[str], seen: set[str]
    ) -> None:
        if exchange in seen:
            return
        seen.add(exchange)
        for destination, is_exchange, pattern in self.bound.get(exchange, ()):
            if not topic_matches(pattern, key):
                continue
            if is_exchange:
                self._route(destination, key, message, reached, seen)
            elif destination not in reached:
                reached.add(destination)
                self.queues[destination].append(message)


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return p[i] in ("*", k[j]) and match(i + 1, j + 1)

    return match(0, 0)


class MemoryLink:
    """What the consume loop and the publisher need of an AMQP link, on a memory broker."""

    generation = 1

    def __init__(self, broker: MemoryBroker, user: str) -> None:
        self.broker = broker
        self.user = user
        self.ready = threading.Event()
        self.ready.set()
        self.deliveries: queue.Queue[Delivery] = queue.Queue()  # unused: the runner feeds
        self.settled: dict[int, str] = {}  # delivery tag → ack | requeue | drop

    def start(self) -> MemoryLink:
        return self

    def close(self) -> None:
        pass

    def publish_many(
        self, messages: Sequence[Message], mandatory: bool = True
    ) -> list[Future[None]]:
        futures: list[Future[None]] = []
        for exchange, routing_key, body, properties in messages:
            future: Future[None] = Future()
            if self.broker.publish(exchange, routing_key, body, properties) == 0 and mandatory:
                future.set_exception(Unroutable(f"312 NO_ROUTE: {exchange!r} {routing_key!r}"))
            else:
                future.set_result(None)
            futures.append(future)
        return futures

    def ack(self, *deliveries: Delivery) -> None:
        for delivery in deliveries:
            self.settled[delivery.delivery_tag] = "ack"

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self.settled[delivery.delivery_tag] = "requeue" if requeue else "drop"


class InMemoryExchange:
    def __init__(
        self,
        settings: Settings,
        codes: Iterable[str] | None = None,
        routes: RouteTable | None = None,
        registry: Registry | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.settings = settings
        self.routes = routes = routes or routes_for(settings.shards)
        self.registry = registry or Registry.load(settings.registry)
        self.policies = policies or Policies.load(settings.policy)
        self.codes = sorted(codes or self.registry.codes)
        self.broker = MemoryBroker()
        self._tags = itertools.count(1)
        #: who has a link with whom (an agreement, either way): as on a broker
        self.links = {
            c: [p for p in self.registry.linked(c) if p in self.codes] for c in self.codes
        }
        for code in self.codes:
            for q in routes.queues.values():
                name = addresses.queue(code, q.role)
                for n in (name, addresses.dead_letter_queue(name)):
                    self.broker.declare_queue(n)
                for n in arrival_queues(code, q.role, self.links[code], routes):
                    self.broker.declare_queue(n)
                for seconds in settings.retry_tiers:
                    self.broker.declare_queue(addresses.retry_queue(name, seconds))
        for code in self.codes:
            for destination, source, key in bindings(
                code, [code, *self.links[code]], routes, settings.retry_tiers
            ):
                self.broker.bind(destination, source, key)
        self.loops: dict[str, ConsumeLoop] = {}
        #: each participant's keys, so partner messages travel signed and sealed as on a broker
        self.keys = memory_rings(self.codes)
        for code in self.codes:
            ctx = Context(code, self.registry, self.policies.of(code), settings)
            with session_for(settings.database_for(code)) as session:
                participants.sync(session, self.registry)  # as each worker does at start
            for q in routes.queues.values():
                handler: Handler = q.handler.build(_for_queue(ctx, q))
                loop = ConsumeLoop(
                    url="memory://",
                    participant=code,
                    queue=q,
                    routes=routes,
                    handler=handler,
                    database_url=settings.database_for(code),
                    settings=settings,
                    keys=self.keys[code],
                    known=self.links[code].__contains__,
                    link=MemoryLink(self.broker, user=broker_user(code, Role.workers)),
                    partners=self.links[code],
                )
                loop.requeue_pause = 0.0
                self.loops[loop.queue] = loop

    # --- what a test or an integrator does -------------------------------------------------

    def handler(self, code: str, role: str) -> Any:
        """The handler object of ``code``'s ``role`` queue (to inspect or adjust)."""
        return self.loops[addresses.queue(code, role)].handler

    def declare_queue(self, name: str) -> None:
        """A queue of the test's own, e.g. an encounter system's ``reply_to``: bound by its
        name to every participant's results exchange, as an encounter system binds it."""
        self.broker.declare_queue(name)
        for code in self.codes:
            self.broker.bind(name, addresses.results(code), name)

    def publish(
        self, messages: Outgoing | Sequence[Outgoing], *, user: str | None = None, seal: bool = True
    ) -> None:
        """Publish as each message's rightful sender would: under the broker user of its
        side (an encounter system, an operator, a partner's workers) and, between
        participants, signed and sealed. ``user`` and ``seal=False`` forge."""
        for out in [messages] if isinstance(messages, Outgoing) else messages:
            env = out.envelope
            ring = self.keys.get(env.sender)  # none for a stranger: it cannot sign
            if (
                seal
                and ring is not None
                and self.routes.sealed(env.kind, env.sender, env.recipient)
            ):
                out = ring.seal(out)
            link = MemoryLink(self.broker, user=user or self._rightful_user(env))
            Publisher(link).send([out])

    def _rightful_user(self, env: Envelope) -> str:
        senders = self.routes.routes[env.kind].senders
        if Sender.partner in senders and env.sender != env.recipient:
            return broker_user(env.sender, Role.workers)
        if Sender.encounter_system in senders:
            return broker_user(env.recipient, Role.encounters)
        return broker_user(env.sender, Role.operators)

    def run(self, retries: bool = True, max_batches: int = 100_000) -> int:
        """Deliver until no work queue holds anything; returns the batches processed.

        With ``retries``, once everything else is done, the messages waiting in retry tiers
        go back to their queues (their TTL, in no time) and the run goes on.
        """
        done = 0
        while done < max_batches:
            progressed = False
            for loop in self.loops.values():
                for name in loop.consumed:  # its own queue, then each partner's arrivals
                    waiting = self.broker.queues[name]
                    if waiting:
                        self._deliver(loop, waiting)
                        done += 1
                        progressed = True
            if progressed:
                continue
            if not (retries and self._release_retries()):
                return done
        raise RuntimeError(f"still busy after {max_batches} batches: a message loops")

    def take(self, queue_name: str) -> list[Stored]:
        """Everything in a queue (removed from it)."""
        waiting = self.broker.queues[queue_name]
        out = list(waiting)
        waiting.clear()
        return out

    def results(self, queue_name: str) -> list[EncounterResult]:
        """The encounter results delivered to an encounter system's queue so far."""
        return [
            codec.decode_body(EncounterResult, m.properties.headers.get(codec.H_SCHEMA), m.body)
            for m in self.take(queue_name)
        ]

    def opened(self, m: Stored) -> bytes:
        """A published message's body as its recipient reads it (sealed ones opened)."""
        env = read_envelope(m.properties)
        if not self.routes.sealed(env.kind, env.sender, env.recipient):
            return m.body
        return self.keys[env.recipient].open(env, m.body)

    def dead_letters(self, code: str, role: str) -> list[Stored]:
        return list(self.broker.queues[addresses.dead_letter_queue(addresses.queue(code, role))])

    # --- the runner ---------------------------------------------------------------------------

    def _deliver(self, loop: ConsumeLoop, waiting: deque[Stored]) -> None:
        taken = [waiting.popleft() for _ in range(min(len(waiting), self.settings.batch_max))]
        deliveries = [
            Delivery(
                1,
                next(self._tags),
                m.exchange,
                m.routing_key,
                False,
                m.properties,
                m.body,
                time.time(),
            )
            for m in taken
        ]
        link = loop.link
        assert isinstance(link, MemoryLink)  # every loop here was built on one
        loop.consume(deliveries)
        requeue = []
        for m, d in zip(taken, deliveries, strict=True):
            if link.settled.pop(d.delivery_tag, "requeue") != "requeue":
                continue
            # the quorum queue's x-delivery-limit: a message that never gets through is parked
            m.deliveries += 1
            if m.deliveries > self.settings.delivery_limit:
                headers = {
                    **(m.properties.headers or {}),
                    "x-death": [{"reason": "delivery_limit"}],
                }
                m.properties.headers = headers
                self.broker.queues[addresses.dead_letter_queue(loop.queue)].append(m)
            else:
                requeue.append(m)
        waiting.extendleft(reversed(requeue))

    def _release_retries(self) -> bool:
        moved = False
        for name in self.loops:
            for seconds in self.settings.retry_tiers:
                tier = self.broker.queues.get(addresses.retry_queue(name, seconds))
                while tier:  # dead-lettered back by the broker, to the queue by name
                    m = tier.popleft()
                    self.broker.queues[name].append(Stored("", name, m.body, m.properties))
                    moved = True
        return moved


def _for_queue(ctx: Context, queue: Queue) -> Context:
    """A shard's handler is built with its shard, as ``BIOX_SHARD`` gives a shard worker."""
    if not queue.family:
        return ctx
    shard = int(queue.role.rpartition(".")[2])
    return replace(ctx, settings=ctx.settings.model_copy(update={"shard": shard}))
