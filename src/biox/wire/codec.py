"""The wire format: msgpack bodies and the envelope of AMQP properties around them.

Kept free of pika so handlers and tests can build and read messages without a broker;
``biox.broker`` turns an ``Outgoing`` into a publish and a delivery into an ``Envelope``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from biox.wire import addresses
from biox.wire.errors import PermanentError, Reason
from biox.wire.messages import EncounterResult, Message

CONTENT_TYPE = "application/msgpack"
APP_ID = "biox"
_ID_NAMESPACE = uuid.UUID("6f0b8f5e-0c1c-4d7e-9a53-3d1f1f6b2a10")
MessageT = TypeVar("MessageT", bound=Message)

# header names (docs/architecture.md, "The envelope")
H_SCHEMA = "biox-schema"
H_FROM = "biox-from"
H_TO = "biox-to"
H_ATTEMPT = "biox-attempt"
H_ACTOR = "biox-actor"  # the person behind an operator's message (examiner, on-call)
H_ORIGINAL_USER = "biox-original-user-id"  # the first sender's broker user, on our copies
H_REASON = "biox-reason"  # the reason code of a retry or dead-letter hop
# a partner message's signature and seal (trust/sealing.py makes and checks them)
H_SIGNATURE = "biox-signature"
H_SIGNING_KEY = "biox-signing-key"
H_SEALED_TO = "biox-sealed-to"
H_SIGNED_AT = "biox-signed-at"
SIGNED_HEADERS = (H_SIGNATURE, H_SIGNING_KEY, H_SEALED_TO, H_SIGNED_AT)


#: what msgpack may allocate for one body, checked as it reads (docs/security.md): the
#: largest template is a few KiB, the longest text 2 000 characters, the longest list a
#: released record's encounters
LIMITS = {
    "max_bin_len": 64 * 1024,
    "max_str_len": 8 * 1024,
    "max_array_len": 1_000,
    "max_map_len": 256,
    "max_ext_len": 16,
}
#: and for the whole body, lists and maps together: the per-container limits alone let a
#: 1 MB body of nested small containers decode to some 70 MB of objects
MAX_ITEMS = 50_000


class _Budget:
    """Counts the items of every list and map as msgpack builds them, and stops the
    decoding once the body holds more than ``MAX_ITEMS``: memory stays proportional to
    the body whatever its shape."""

    def __init__(self) -> None:
        self.left = MAX_ITEMS

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError(f"more than {MAX_ITEMS} items exceeds max_items")

    def list_hook(self, items: list[Any]) -> list[Any]:
        self.spend(len(items))
        return items

    def object_hook(self, items: dict[Any, Any]) -> dict[Any, Any]:
        self.spend(len(items))
        return items


@dataclass(frozen=True)
class Envelope:
    """What the AMQP properties say about a message, broker-neutral."""

    message_id: str
    kind: str
    schema: str
    sender: str
    recipient: str
    correlation_id: str | None = None
    reply_to: str | None = None
    user_id: str | None = None
    timestamp: datetime | None = None
    attempt: int = 0
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outgoing:
    """A message a handler wants sent. Published only after its effects are committed."""

    exchange: str
    routing_key: str
    body: bytes
    envelope: Envelope


def with_actor(out: Outgoing, actor: str) -> Outgoing:
    """The same message, naming the person who caused it (the audit trail keeps it)."""
    headers = {**out.envelope.headers, H_ACTOR: actor}
    return Outgoing(out.exchange, out.routing_key, out.body, replace(out.envelope, headers=headers))


def derived_id(parent_message_id: str, *parts: str) -> str:
    """Deterministic id of a message caused by another.

    A redelivered input reproduces the same output ids, so the receiver's idempotency
    check absorbs the duplicate publish that at-least-once delivery can cause.
    """
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join((parent_message_id, *parts))))


def encode_body(message: Message) -> bytes:
    data = message.model_dump(mode="python", exclude_none=True)
    body: bytes = msgpack.packb(data, use_bin_type=True, datetime=True)
    return body


def _unreadable(exc: Exception) -> str:
    """msgpack's own messages can be empty (``FormatError``): say what failed anyway."""
    said = str(exc).strip()
    return f"not msgpack ({type(exc).__name__}{': ' + said if said else ''})"


def decode_body(model: type[MessageT], schema: str | None, body: bytes) -> MessageT:
    """Parse and validate a body as ``model``; every failure names its reason."""
    if schema != model.schema_id():
        raise PermanentError(
            Reason.unknown_schema, f"got {schema!r}, this participant reads {model.schema_id()}"
        )
    try:
        budget = _Budget()
        data = msgpack.unpackb(
            body,
            raw=False,
            timestamp=3,
            strict_map_key=True,
            list_hook=budget.list_hook,
            object_hook=budget.object_hook,
            **LIMITS,
        )
    except ValueError as exc:
        if "exceeds max" in str(exc):  # msgpack's own limit checks, before allocating
            raise PermanentError(Reason.too_large, str(exc)) from exc
        raise PermanentError(Reason.undecodable, _unreadable(exc)) from exc
    except Exception as exc:  # msgpack raises several unrelated classes
        raise PermanentError(Reason.undecodable, _unreadable(exc)) from exc
    if not isinstance(data, dict):
        raise PermanentError(Reason.undecodable, f"top level is {type(data).__name__}, not a map")
    try:
        return model.model_validate(data, context={"wire": True})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise PermanentError(Reason.invalid_message, problems) from exc


def to_partner(
    message: Message,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    correlation_id: str,
    reply_to: str | None = None,
) -> Outgoing:
    """A message for a participant: published on the sender's outbox, which the links
    carry to the partner's inbox (docs/architecture.md, "Topology")."""
    return _outgoing(
        message,
        exchange=addresses.outbox(sender),
        routing_key=addresses.routing_key(recipient, message.KIND),
        sender=sender,
        recipient=recipient,
        message_id=message_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )


def to_own_inbox(
    message: Message,
    *,
    participant: str,
    message_id: str,
    correlation_id: str,
    reply_to: str | None = None,
) -> Outgoing:
    """A message to one's own participant, straight to its inbox: a case for its
    examiners, an examiner's decision, an operator's request."""
    return _to_own(
        message, addresses.inbox(participant), participant, message_id, correlation_id, reply_to
    )


def from_person(message: Message, *, participant: str, actor: str) -> Outgoing:
    """A person's request or record to their own participant (a notice to send, a read, a
    purge): a fresh id, correlated to itself, naming who caused it."""
    mid = str(uuid.uuid4())
    out = to_own_inbox(message, participant=participant, message_id=mid, correlation_id=mid)
    return with_actor(out, actor)


def to_submissions(
    message: Message,
    *,
    participant: str,
    message_id: str,
    correlation_id: str,
    reply_to: str | None = None,
) -> Outgoing:
    """An encounter system's submission, on its participant's submissions exchange (the
    only one an encounter system may write to, docs/integration.md)."""
    return _to_own(
        message,
        addresses.submissions(participant),
        participant,
        message_id,
        correlation_id,
        reply_to,
    )


def _to_own(
    message: Message,
    exchange: str,
    participant: str,
    message_id: str,
    correlation_id: str,
    reply_to: str | None,
) -> Outgoing:
    """From a participant to itself, on one of its own ways in."""
    return _outgoing(
        message,
        exchange=exchange,
        routing_key=addresses.routing_key(participant, message.KIND),
        sender=participant,
        recipient=participant,
        message_id=message_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )


def to_reply_queue(
    message: EncounterResult, *, participant: str, reply_to: str, message_id: str
) -> Outgoing:
    """A result for an encounter system, on the participant's results exchange to the queue
    it named (bound there by its name); correlated by encounter id."""
    return _outgoing(
        message,
        exchange=addresses.results(participant),
        routing_key=reply_to,
        sender=participant,
        recipient=participant,
        message_id=message_id,
        correlation_id=message.encounter_id,
    )


def _outgoing(
    message: Message,
    *,
    exchange: str,
    routing_key: str,
    sender: str,
    recipient: str,
    message_id: str,
    correlation_id: str,
    reply_to: str | None = None,
) -> Outgoing:
    envelope = Envelope(
        message_id=message_id,
        kind=message.KIND,
        schema=message.schema_id(),
        sender=sender,
        recipient=recipient,
        correlation_id=correlation_id,
        reply_to=reply_to,
        attempt=0,
    )
    return Outgoing(exchange, routing_key, encode_body(message), envelope)
