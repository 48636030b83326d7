"""Declares the whole topology of DESIGN §2, idempotently, from one place.

Queue arguments are fixed at declaration (RabbitMQ refuses a redeclaration with other
arguments), so changing a tier or the delivery limit on a live broker means an operator
policy or a migration: see docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterable

import pika

from biox import addresses
from biox.settings import Settings


def work_queue_arguments(name: str, delivery_limit: int) -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,  # a message that kills its worker every time
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": addresses.dead_letter_queue(name),
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


def declare_work_queue(ch: object, name: str, tiers: Iterable[int], delivery_limit: int) -> None:
    ch.queue_declare(name, durable=True, arguments=work_queue_arguments(name, delivery_limit))  # type: ignore[attr-defined]
    ch.queue_declare(  # type: ignore[attr-defined]
        addresses.dead_letter_queue(name), durable=True, arguments={"x-queue-type": "quorum"}
    )
    for seconds in tiers:
        ch.queue_declare(  # type: ignore[attr-defined]
            addresses.retry_queue(name, seconds),
            durable=True,
            arguments=retry_queue_arguments(name, seconds),
        )


def declare(url: str, codes: Iterable[str], settings: Settings) -> list[str]:
    """Declare exchanges, exchange-to-exchange links and queues; returns the queue names."""
    codes = sorted(codes)
    queues: list[str] = []
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for code in codes:
            ch.exchange_declare(addresses.inbox(code), "topic", durable=True)
            ch.exchange_declare(addresses.outbox(code), "topic", durable=True)
        for sender in codes:
            for recipient in codes:
                if sender == recipient:
                    continue
                for kind in addresses.PARTNER_KINDS:
                    ch.exchange_bind(
                        destination=addresses.inbox(recipient),
                        source=addresses.outbox(sender),
                        routing_key=addresses.routing_key(recipient, kind),
                    )
        for code in codes:
            for role, kinds in addresses.WORK_QUEUES.items():
                name = addresses.queue(code, role)
                declare_work_queue(ch, name, settings.retry_tiers, settings.delivery_limit)
                for kind in kinds:
                    ch.queue_bind(name, addresses.inbox(code), addresses.routing_key(code, kind))
                # failure hops travel through the inbox too, so the audit trail records them
                for seconds in settings.retry_tiers:
                    ch.queue_bind(
                        addresses.retry_queue(name, seconds),
                        addresses.inbox(code),
                        addresses.retry_key(code, role, seconds),
                    )
                ch.queue_bind(
                    addresses.dead_letter_queue(name),
                    addresses.inbox(code),
                    addresses.dead_letter_key(code, role),
                )
                queues.append(name)
            audit = addresses.audit_queue(code)
            declare_work_queue(ch, audit, settings.retry_tiers, settings.delivery_limit)
            ch.queue_bind(audit, addresses.inbox(code), "#")
            ch.queue_bind(audit, addresses.outbox(code), "#")
            queues.append(audit)
    finally:
        conn.close()
    return queues
