"""Declares the whole topology, idempotently, from the route table
(docs/architecture.md, "Topology").

Queue arguments are fixed at declaration (RabbitMQ refuses a redeclaration with other
arguments), so changing a tier or the delivery limit on a live broker means an operator
policy or a migration: see docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from biox.broker.connection import parameters
from biox.registry import Registry
from biox.routes import RouteTable, Sender, routes_for
from biox.settings import Settings
from biox.wire import addresses

#: Dead letters and held results wait for an operator, who looks at them (get, then
#: requeue) as often as needed. Quorum, so that they outlive the loss of a cluster node
#: (a classic queue lives on one node, and what is routed to it while that node is down
#: is lost), with a delivery limit no operator reaches: RabbitMQ 4 gives a quorum queue
#: that names none a limit of 20 and drops what passes it, and the ``-1`` that means "no
#: limit" there drops every message at its first return on RabbitMQ 3.
PARKED_ARGUMENTS: dict[str, object] = {"x-queue-type": "quorum", "x-delivery-limit": 1 << 30}


def work_queue_arguments(
    name: str, delivery_limit: int, dead_letters: str | None = None
) -> dict[str, object]:
    """``dead_letters``: where a message past its delivery limit goes (default: the
    queue's own dead-letter queue; a partner's arrival queue uses its work queue's)."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,  # a message that kills its worker every time
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letters or addresses.dead_letter_queue(name),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def retry_queue_arguments(work_queue: str, seconds: int) -> dict[str, object]:
    """One fixed TTL per tier, expiring back into the work queue (no head-of-line blocking)."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": seconds * 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare_work_queue(
    ch: BlockingChannel,
    name: str,
    tiers: Iterable[int],
    delivery_limit: int,
    arrivals: Iterable[str] = (),
) -> None:
    ch.queue_declare(name, durable=True, arguments=work_queue_arguments(name, delivery_limit))
    dead_letters = addresses.dead_letter_queue(name)
    for arrival in arrivals:
        args = work_queue_arguments(arrival, delivery_limit, dead_letters)
        ch.queue_declare(arrival, durable=True, arguments=args)
    ch.queue_declare(addresses.dead_letter_queue(name), durable=True, arguments=PARKED_ARGUMENTS)
    for seconds in tiers:
        ch.queue_declare(
            addresses.retry_queue(name, seconds),
            durable=True,
            arguments=retry_queue_arguments(name, seconds),
        )


def entrance_exchanges(code: str, partners: Iterable[str]) -> list[str]:
    """Every topic exchange of ``code`` a message enters or leaves by: one ingress per
    partner it has a link with."""
    return [
        addresses.inbox(code),
        *(addresses.ingress(code, p) for p in sorted(partners)),
        addresses.submissions(code),
        addresses.outbox(code),
    ]


def entrances(code: str, senders: Iterable[Sender]) -> list[str]:
    """The exchanges of ``code`` a kind from its own side arrives on: its own workers' and
    operators' inbox, its encounter systems' submissions exchange, each writable by those
    alone (a partner's kinds arrive on that partner's ingress, ``bindings``)."""
    by_sender = {
        Sender.own: addresses.inbox(code),
        Sender.encounter_system: addresses.submissions(code),
    }
    return [by_sender[s] for s in sorted(senders) if s in by_sender]


def arrival_queues(code: str, role: str, partners: Iterable[str], routes: RouteTable) -> list[str]:
    """The queues a worker of ``role`` consumes besides its own: one per partner, when the
    queue takes partner kinds."""
    if not any(k in routes.partner_kinds() for k in routes.kinds_of(role)):
        return []
    return [addresses.arrival_queue(code, role, p) for p in sorted(partners)]


def bindings(
    code: str,
    codes: Iterable[str],
    routes: RouteTable,
    tiers: Iterable[int],
    sovereign: bool = False,
) -> list[tuple[str, str, str]]:
    """Every (queue or exchange, source exchange, routing key) of ``code``'s side.

    A queue or exchange named first is bound to the exchange named second. ``codes``:
    ``code`` and the partners it has a link with. Derived from the route table alone: a
    work queue takes its own kinds from the inbox and submissions from the submissions
    exchange (``entrances``); each partner's kinds wait in that partner's arrival queue
    (``arrival_queue``), bound to that partner's ingress alone; the partner links carry
    the partner kinds only; the audit queue takes every audited kind from wherever it
    arrives or leaves, and every retry and dead-letter hop.

    On one shared broker a partner's outbox is bound to its ingress on ``code``. With
    ``sovereign`` brokers, ``code``'s outbox feeds one link queue per partner instead,
    which a shovel empties into ``code``'s ingress on the partner's broker.
    """
    inbox, outbox = addresses.inbox(code), addresses.outbox(code)
    # results no reply queue took (docs/integration.md)
    out = [(addresses.held_results_queue(code), addresses.held_results_exchange(code), "")]
    for partner in sorted(codes):
        if partner == code:
            continue
        for kind in routes.partner_kinds():
            if sovereign:  # what code sends partner waits in code's link queue
                key = addresses.routing_key(partner, kind)
                out.append((addresses.link_queue(code, partner), outbox, key))
            else:  # what partner sends to code, on partner's outbox
                key = addresses.routing_key(code, kind)
                out.append((addresses.ingress(code, partner), addresses.outbox(partner), key))
        ingress = addresses.ingress(code, partner)
        for q in routes.work_queues():
            for kind in routes.kinds_of(q.role):
                if kind in routes.partner_kinds():
                    arrival = addresses.arrival_queue(code, q.role, partner)
                    out.append((arrival, ingress, addresses.routing_key(code, kind)))
        if routes.audit is not None:
            audit = addresses.queue(code, routes.audit.role)
            for kind in routes.kinds_of(routes.audit.role):
                if kind in routes.partner_kinds():
                    out.append((audit, ingress, addresses.routing_key(code, kind)))
    for q in routes.work_queues():
        name = addresses.queue(code, q.role)
        for kind in routes.kinds_of(q.role):
            for source in entrances(code, routes.routes[kind].senders):
                out.append((name, source, addresses.routing_key(code, kind)))
        # failure hops travel through the inbox too, so the audit trail records them
        for seconds in tiers:
            out.append(
                (
                    addresses.retry_queue(name, seconds),
                    inbox,
                    addresses.retry_key(code, q.role, seconds),
                )
            )
        out.append(
            (addresses.dead_letter_queue(name), inbox, addresses.dead_letter_key(code, q.role))
        )
    for q in routes.queues.values():  # an operator's replay, to the queue by name
        out.append((addresses.queue(code, q.role), inbox, addresses.replay_key(code, q.role)))
    if routes.audit is None:
        return out
    audit = addresses.queue(code, routes.audit.role)
    for seconds in tiers:  # the audit queue's own hops, on keys it does not record
        out.append(
            (
                addresses.retry_queue(audit, seconds),
                inbox,
                addresses.unrecorded_retry_key(code, routes.audit.role, seconds),
            )
        )
    out.append(
        (
            addresses.dead_letter_queue(audit),
            inbox,
            addresses.unrecorded_dead_letter_key(code, routes.audit.role),
        )
    )
    for kind in routes.kinds_of(routes.audit.role):
        for source in entrances(code, routes.routes[kind].senders):
            out.append((audit, source, addresses.routing_key(code, kind)))
    for kind in routes.partner_kinds():
        out.append((audit, outbox, addresses.routing_key("*", kind)))
    out.append((audit, inbox, f"{code}.retry.#"))
    out.append((audit, inbox, f"{code}.dead-letter.#"))
    return out


def results_arguments(code: str) -> dict[str, object]:
    """A result whose reply queue does not exist (or was never named) is not dropped:
    the results exchange passes it to its alternate exchange, into a durable queue an
    operator reads with ``biox encounters held`` (docs/integration.md)."""
    return {"alternate-exchange": addresses.held_results_exchange(code)}


def declare_results(ch: BlockingChannel, code: str) -> None:
    held = addresses.held_results_exchange(code)
    ch.exchange_declare(held, "fanout", durable=True)
    ch.exchange_declare(
        addresses.results(code), "topic", durable=True, arguments=results_arguments(code)
    )
    queue = addresses.held_results_queue(code)
    ch.queue_declare(queue, durable=True, arguments=PARKED_ARGUMENTS)


def declare(
    url: str,
    codes: Iterable[str],
    settings: Settings,
    routes: RouteTable | None = None,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Declare exchanges, exchange-to-exchange links and queues; returns the queue names.

    ``only``: the participants whose queues to declare (every participant's exchanges
    are declared all the same: a partner's outbox must exist to be bound to). ``routes``:
    by default the table for ``settings.shards``.
    """
    routes = routes or routes_for(settings.shards)
    codes = sorted(codes)
    mine = sorted(only) if only is not None else codes
    registry = Registry.load(settings.registry)
    links = {c: [p for p in registry.linked(c) if p in codes] for c in codes}
    queues: list[str] = []
    conn = pika.BlockingConnection(parameters(url, settings.client_tls()))
    try:
        ch = conn.channel()
        for code in codes:
            for exchange in entrance_exchanges(code, links[code]):
                ch.exchange_declare(exchange, "topic", durable=True)
            declare_results(ch, code)
        for code in mine:
            for q in routes.queues.values():
                name = addresses.queue(code, q.role)
                arrivals = arrival_queues(code, q.role, links[code], routes)
                declare_work_queue(
                    ch, name, settings.retry_tiers, settings.delivery_limit, arrivals
                )
                queues += [name, *arrivals]
            linked = [code, *links[code]]
            for destination, source, key in bindings(code, linked, routes, settings.retry_tiers):
                if addresses.is_exchange(destination):
                    ch.exchange_bind(destination=destination, source=source, routing_key=key)
                else:
                    ch.queue_bind(destination, source, key)
    finally:
        conn.close()
    return queues
