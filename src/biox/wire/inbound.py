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
    H_ACTOR,
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

    @property
    def hop(self) -> str:
        """This hop of the message (``hop_key``): what the audit trail records it under."""
        return hop_key(self.envelope, self.exchange, self.routing_key)


def hop_key(env: Envelope, exchange: str, routing_key: str) -> str:
    """One hop of a message: its id under the broker user that sent it, where it was
    published and at which attempt. The audit queue records every hop as its own event
    (a retry, a dead letter), so this, not the message id, is what it must see only once."""
    return f"{env.user_id}|{env.message_id}|{exchange}|{routing_key}|{env.attempt}"


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

#: and what our own users may add on a fresh message: the person behind an operator's
#: action (never the identity a replay is checked against)
OWN_HEADERS = frozenset({H_ACTOR})


def arrived(
    env: Envelope, exchange: str, routing_key: str, me: str, shared_broker: bool = False
) -> Envelope:
    """The envelope as far as it can be trusted, given where the delivery came from and
    which broker user the broker stamped on it (docs/security.md, "Identity").

    "Ours or theirs" is the stamped ``user_id``'s, never ``biox-from``'s, which a sender
    writes itself. Back from one of our own retry tiers (the broker dead-letters it by the
    default exchange, which nobody may write to) or replayed by our operators (our replay
    key on our inbox, from one of our users): the broker identity to check is the first
    sender's, which the copy carries in ``biox-original-user-id``. Our own hops through
    the inbox (our retry and dead-letter keys, which no one else may publish) keep their
    headers, for the audit. Anything else is a first arrival: every internal header is
    dropped (and a partner's attempt counter reset), so that no sender, ours or a
    partner's, can choose the identity a later replay is checked against, where a replay
    goes or which tier it climbs.

    ``shared_broker``: the development broker, where everyone is ``guest`` (a user outside
    the ``<code>.<role>`` names): there ``biox-from`` is all there is, as the identity
    check is off too.
    """
    anonymous = "." not in (env.user_id or "")
    ours = _ours(env.user_id, me) or (shared_broker and anonymous and env.sender == me)
    own_hop = addresses.hop(routing_key) if addresses.owner(routing_key) == me else ""
    if _own_copy(exchange, own_hop, ours):
        first = header_text(env.headers.get(H_ORIGINAL_USER))
        return replace(env, user_id=first or env.user_id)
    if own_hop in ("retry", "dead-letter") and ours:
        return env
    kept = {
        k: v
        for k, v in env.headers.items()
        if not k.startswith("biox-") or k in SENDER_HEADERS or (ours and k in OWN_HEADERS)
    }
    return replace(env, headers=kept, attempt=0)


def first_arrival(exchange: str, routing_key: str, me: str, p: Properties) -> bool:
    """Whether this delivery is a message's first arrival here, not one of our own
    copies of it (a retry tier's, a replay): the freshness of a partner's signature is
    checked on first arrival only, so an operator may replay a dead letter a month on."""
    own_hop = addresses.hop(routing_key) if addresses.owner(routing_key) == me else ""
    return not _own_copy(exchange, own_hop, _ours(p.user_id, me))


def _own_copy(exchange: str, own_hop: str, ours: bool) -> bool:
    """Back from our retry tier (the default exchange, which only the broker's own
    dead-lettering writes to), or replayed by one of our users on our replay key."""
    return exchange == "" or (own_hop == "replay" and ours)


def _ours(user_id: str | None, me: str) -> bool:
    """Stamped by the broker as one of our own users (``<me>.<role>``)."""
    return bool(user_id) and addresses.owner(user_id or "") == me
