"""A message as a handler receives it, and how a delivery's envelope is read (once).

The consume loop reads each delivery's AMQP properties into an ``Envelope`` as it takes
the delivery, and hands handlers ``Inbound[M]``: the envelope with the body decoded to the
kind's model ``M`` (the audit queue's handler gets the body undecoded, ``M = None``).
Nothing here knows pika: properties are read by attribute, so any AMQP client's (or the
in-memory exchange's) properties will do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from biox.wire import addresses
from biox.wire.codec import (
    H_ATTEMPT,
    H_FROM,
    H_ORIGINAL_USER,
    H_SCHEMA,
    H_TO,
    SIGNED_HEADERS,
    Envelope,
)

M = TypeVar("M", covariant=True)


@dataclass(frozen=True)
class Inbound(Generic[M]):
    envelope: Envelope
    message: M
    body: bytes = b""
    exchange: str = ""
    routing_key: str = ""


class Properties(Protocol):
    """The AMQP basic properties biox reads (pika's ``BasicProperties`` has them all)."""

    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    type: str | None
    user_id: str | None
    timestamp: int | None
    headers: dict[str, Any] | None


def read_envelope(p: Properties) -> Envelope:
    """Broker-neutral view of a delivery's properties; what is missing is left empty."""
    headers = dict(p.headers or {})
    attempt = headers.get(H_ATTEMPT, 0)
    return Envelope(
        message_id=p.message_id or "",
        kind=p.type or "",
        schema=header_text(headers.get(H_SCHEMA)) or "",
        sender=header_text(headers.get(H_FROM)) or "",
        recipient=header_text(headers.get(H_TO)) or "",
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        user_id=p.user_id,
        timestamp=datetime.fromtimestamp(p.timestamp, UTC) if p.timestamp else None,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
        headers=headers,
    )


def header_text(value: object) -> str | None:
    """A header's value as text: AMQP may hand a string header over as bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


#: the ``biox-*`` headers a message may carry from its sender; every other one (where a
#: failure happened, replay counts, the person behind an operator's action) only biox
#: itself writes, on its own copies
SENDER_HEADERS = frozenset({H_SCHEMA, H_FROM, H_TO, *SIGNED_HEADERS})


def arrived(env: Envelope, exchange: str, routing_key: str, me: str) -> Envelope:
    """The envelope as far as it can be trusted, given where the delivery came from.

    Back from one of our own retry tiers (the broker dead-letters it by the default
    exchange, which nobody may write to) or replayed by our operators (a replay key, which
    only they may publish): the broker identity to check is the first sender's, which the
    copy carries in ``biox-original-user-id``. Fresh from another participant: its internal
    headers are dropped, so that it cannot choose where a replay goes or which tier it
    climbs (docs/architecture.md, "Identities"). Our own hops through the inbox (the
    retry and dead-letter keys, which no partner may publish) keep theirs, for the audit.
    """
    own_hop = addresses.hop(routing_key) if addresses.owner(routing_key) == me else ""
    if exchange == "" or own_hop == "replay":  # our own copies
        first = header_text(env.headers.get(H_ORIGINAL_USER))
        return replace(env, user_id=first or env.user_id)
    if env.sender == me or own_hop in ("retry", "dead-letter"):
        return env
    kept = {
        k: v for k, v in env.headers.items() if not k.startswith("biox-") or k in SENDER_HEADERS
    }
    return replace(env, headers=kept, attempt=0)
