"""What every handler is: messages in, effects out, no broker in sight (DESIGN §8).

A handler reads what it needs through the session it is given but writes nothing itself:
it returns the rows to store and the messages to send. The consume loop commits the rows
together with the idempotency marker, then publishes, then acks, so an effect is never
half done and a message is never acked before its effect is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import Session

from biox.codec import Envelope, Outgoing
from biox.errors import BioxError
from biox.messages import Message


@dataclass
class Inbound:
    envelope: Envelope
    message: Message | None  # None for handlers that take bodies undecoded (audit)
    body: bytes = b""
    exchange: str = ""
    routing_key: str = ""


@dataclass
class Effects:
    rows: list[Any] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    outcome: str = "done"  # one word for logs and counters


Result = Effects | BioxError


class Handler(Protocol):
    #: message kinds this handler accepts; anything else is ``unknown_kind`` for it.
    #: Empty: every kind, bodies left undecoded (the audit consumer digests, never reads).
    kinds: tuple[str, ...]

    def handle(self, batch: Sequence[Inbound], session: Session) -> list[Result]:
        """One result per inbound message, in order. Raise only for transient trouble."""
        ...

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """The ``rejected`` answer to the sender when it can be identified, else None."""
        ...
