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
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from biox.metrics import Metrics
from biox.policy.release import ParticipantPolicy
from biox.registry import Registry
from biox.settings import Settings
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import BioxError


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
    """The handler object of one queue; its per-kind methods are named in the route table.

    Besides its batches, the consume loop calls ``maintain`` between batches every
    ``maintain_every_s`` seconds (0: never) with its clock's ``now``, commits the rows it
    added and publishes what it returns (the retention purge, answers past their deadline,
    the audit checkpoints); and ``observe`` once at start, when the worker serves metrics.
    A handler class subclasses this protocol and keeps the defaults it has no use for.
    """

    #: seconds between two ``maintain`` calls; 0 or less: the handler has no schedule
    maintain_every_s: float = 0.0
    #: set by the handler when its schedule should run at once (after a deletion notice)
    maintenance_due: bool = False
    #: its schedule also removes, from the broker, the dead letters and held results that
    #: carry erased data (``deadletters.erased_letters``): the notice worker's
    sweeps_dead_letters: bool = False

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """The ``rejected`` answer to the sender when it can be identified, else None."""
        return None

    def maintain(self, session: Session, now: datetime) -> list[Outgoing]:
        """Scheduled work at ``now``: rows added to ``session``, messages returned."""
        return []

    def observe(self, metrics: Metrics, database_url: str) -> None:
        """Adds the handler's own figures to the worker's metrics (served by the worker)."""
        return None  # a body, so that the protocol's default is not abstract


class HandlerClass(Handler, Protocol):
    """What the route table names for a queue: a handler class that builds its object."""

    @classmethod
    def build(cls, ctx: Context) -> Handler: ...
