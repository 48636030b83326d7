"""What every handler is: messages in, effects out, no broker in sight
(docs/architecture.md, "Layers").

A handler method takes a batch of one kind (``Inbound[M]``, the body already decoded and
the sender already checked against the route table) and reads what it needs through the
session it is given, but writes nothing itself: it returns the rows to store and the
messages to send. The consume loop commits the rows together with the idempotency marker,
then publishes, then acks, so an effect is never half done and a message is never acked
before its effect is durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from biox.codec import Envelope, Outgoing
from biox.errors import BioxError
from biox.policy.release import ParticipantPolicy
from biox.registry import Registry
from biox.settings import Settings


@dataclass
class Effects:
    rows: list[Any] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    outcome: str = "done"  # one word for logs and counters


Result = Effects | BioxError


@dataclass(frozen=True)
class Context:
    """What a worker's handler is built from: every handler class has ``build(ctx)``."""

    participant: str
    registry: Registry
    policy: ParticipantPolicy
    settings: Settings


class Handler(Protocol):
    """The handler object of one queue; its per-kind methods are named in the route table."""

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """The ``rejected`` answer to the sender when it can be identified, else None."""
        ...


class HandlerClass(Handler, Protocol):
    """What the route table names for a queue: a handler class that builds its object."""

    @classmethod
    def build(cls, ctx: Context) -> Handler: ...
