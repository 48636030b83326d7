"""The route table: every message kind, the queue that takes it, its handler, who may send it.

One line per kind. Everything else is derived from here: the topology (which routing
keys each queue is bound to, which kinds the partner links carry, what the audit queue
records), the consume loop's sender check and dispatch, the worker kinds and the CLI's
choices, ``schemas/`` (JSON Schemas, ``routing.json``, the index) and the in-memory
exchange. Adding a kind means a model in the wire contract (``wire/messages.py``; a notice
type in ``wire/notices.py``; an on-call record in ``wire/operations.py``), a handler
method on the queue's handler class, and one line below (docs/architecture.md, "The route
table").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlmodel import Session

from biox.handlers.audit import AuditHandler
from biox.handlers.base import HandlerClass, Result
from biox.handlers.intake import IntakeHandler
from biox.handlers.matcher import MatcherHandler
from biox.handlers.notice import NoticeHandler
from biox.handlers.response import ResponseHandler
from biox.handlers.retrieval import RetrievalHandler
from biox.handlers.review import ReviewHandler
from biox.handlers.shard import ShardHandler
from biox.trust import audit
from biox.trust.identity import ENCOUNTER_ROLES, OWN_ROLES, PARTNER_ROLES, Role
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    AuditCheckpoint,
    EncounterResult,
    EncounterSubmit,
    Message,
    Query,
    Response,
    RetrievalAsk,
    RetrievalRequest,
    RetrievalResponse,
    ReviewCase,
    ReviewDecision,
)
from biox.wire.notices import Notice, NoticeSend
from biox.wire.operations import (
    DeadLettersExported,
    DeadLettersImported,
    DeadLettersPurged,
    DeadLettersReplayed,
    PersonalDataRead,
    RetentionPurged,
)
from biox.wire.shards import ShardHits, ShardSearch

#: a handler method, called on the queue's handler object with a batch of one kind
HandlerMethod = Callable[[Any, Sequence[Inbound[Any]], Session], list[Result]]


class Sender(StrEnum):
    """Who may send a kind to a participant."""

    encounter_system = "encounter_system"  # its own upstream systems, on its inbox
    own = "own"  # the participant itself: its workers, examiners and operators
    partner = "partner"  # another participant of the registry, over the partner links


@dataclass(frozen=True)
class Queue:
    """A work queue ``<code>.<role>`` and the handler class its workers run.

    ``undecoded``: set for the audit queue only. It takes every audited kind, and every
    retry and dead-letter hop, undecoded, with this one method; it counts each hop of a
    message as its own event; and it sends its own failures straight to its tiers, not
    through the inbox it records (which would feed it).

    ``recorded``: the queue keeps its idempotency in its own rows, and this names which
    of a batch's keys they already hold (the audit trail, whose entries carry their hop);
    the consume loop then writes it no marker (docs/architecture.md, "Consume loop").
    """

    role: str
    handler: type[HandlerClass]
    undecoded: HandlerMethod | None = None
    recorded: Callable[[Session, Sequence[str]], set[str]] | None = None
    doc: str = ""
    #: one queue per shard of the gallery, ``<role>.<i>``, when ``BIOX_SHARDS`` is above 1,
    #: and none at all when it is 1 (docs/architecture.md, "Shards")
    sharded: bool = False
    family: str = ""  # a shard's queue: the role the route table names for it

    @property
    def takes(self) -> str:
        """The role its kinds' routes name."""
        return self.family or self.role

    @property
    def decodes(self) -> bool:
        """Whether its workers decode each body into its kind's model (all but the audit)."""
        return self.undecoded is None


@dataclass(frozen=True)
class Route:
    model: type[Message]
    queue: str | None  # the role of the queue that takes it; None: not consumed by biox
    handler: HandlerMethod | None
    senders: frozenset[Sender]
    audited: bool = True

    @property
    def kind(self) -> str:
        return self.model.KIND


def route(
    model: type[Message],
    queue: str | None,
    handler: HandlerMethod | None,
    *senders: Sender,
    audited: bool = True,
) -> Route:
    return Route(model, queue, handler, frozenset(senders), audited)


@dataclass
class RouteTable:
    queues: dict[str, Queue]
    routes: dict[str, Route] = field(default_factory=dict)

    def __init__(self, queues: Iterable[Queue], routes: Iterable[Route], shards: int = 1) -> None:
        """``shards``: how many queues each sharded queue is (``sharded``)."""
        self.specs = {q.role: q for q in queues}  # as written, a sharded queue once
        self.shards = shards
        self.queues = {}
        for q in self.specs.values():
            if not q.sharded:
                self.queues[q.role] = q
            elif shards > 1:
                for i in range(shards):
                    role = f"{q.role}.{i}"
                    self.queues[role] = replace(q, role=role, sharded=False, family=q.role)
        self.routes = {}
        for r in routes:
            if r.kind in self.routes:
                raise ValueError(f"{r.kind}: declared twice")
            if r.queue is not None:
                queue = self.specs.get(r.queue)
                if queue is None:
                    raise ValueError(f"{r.kind}: no queue {r.queue!r}")
                if r.handler is None or getattr(queue.handler, r.handler.__name__, None) is not (
                    r.handler
                ):
                    raise ValueError(f"{r.kind}: its handler is not a method of {queue.handler}")
            self.routes[r.kind] = r

    # --- lookups ---------------------------------------------------------------------------

    def get(self, kind: str) -> Route | None:
        return self.routes.get(kind)

    def model(self, kind: str) -> type[Message] | None:
        r = self.routes.get(kind)
        return r.model if r else None

    @property
    def kinds(self) -> list[str]:
        return sorted(self.routes)

    def queue_named(self, role: str) -> Queue | None:
        """The queue ``role`` names, a shard's (``shard.3``) whatever this table's split:
        a dead letter from a shard's queue stays readable after a change of shards."""
        if role in self.queues:
            return self.queues[role]
        family, _, shard = role.rpartition(".")
        spec = self.specs.get(family)
        if spec is None or not spec.sharded or not shard.isdigit():
            return None
        return replace(spec, role=role, sharded=False, family=family)

    def kinds_of(self, role: str) -> tuple[str, ...]:
        """The kinds a queue takes (the audit queue: every audited kind; each shard's
        queue: every kind routed to its family)."""
        queue = self.queue_named(role)
        if queue is None:
            raise KeyError(role)
        if not queue.decodes:
            return tuple(sorted(k for k, r in self.routes.items() if r.audited))
        return tuple(sorted(k for k, r in self.routes.items() if r.queue == queue.takes))

    def sharded(self, shards: int) -> RouteTable:
        """The same table with each sharded queue split ``shards`` ways."""
        return RouteTable(self.specs.values(), self.routes.values(), shards)

    def queue_for(self, role: str, shard: int) -> Queue:
        """The queue a worker of ``role`` consumes: of a sharded role, shard ``shard``'s."""
        spec = self.specs.get(role)
        if spec is None:
            raise ValueError(f"no queue {role!r}")
        if not spec.sharded:
            return spec
        if self.shards == 1:
            raise ValueError(f"{role}: the gallery is not sharded (BIOX_SHARDS=1)")
        return self.queues[f"{role}.{shard}"]

    def work_queues(self) -> list[Queue]:
        return [q for q in self.queues.values() if q.decodes]

    @property
    def audit(self) -> Queue | None:
        """The queue that records everything (none in a table built for a test)."""
        return next((q for q in self.queues.values() if not q.decodes), None)

    def partner_kinds(self) -> tuple[str, ...]:
        """What the links between participants carry: nothing else reaches a partner."""
        return tuple(sorted(k for k, r in self.routes.items() if Sender.partner in r.senders))

    # --- the consume loop's checks, before and after decoding --------------------------------

    def check_sender(self, kind: str, sender: str, me: str, known: Callable[[str], object]) -> None:
        """Refuses a sender the route does not allow, before the body is read.

        ``known``: whether a code is a participant of the registry.
        """
        r = self.routes[kind]
        if Sender.partner in r.senders and sender != me:
            if not known(sender):
                raise PermanentError(Reason.unknown_participant, f"sender {sender!r}")
            return
        if Sender.own in r.senders and sender == me:
            return
        if Sender.encounter_system in r.senders:
            return  # its own upstream systems reach the inbox by routing alone
        raise PermanentError(Reason.misaddressed, f"{kind} from {sender!r}")

    def sender_roles(self, kind: str) -> dict[str, frozenset[Role]]:
        """The broker roles that may send ``kind``, from the partner's side and from one's
        own (docs/architecture.md, "Identities")."""
        senders = self.routes[kind].senders
        own: frozenset[Role] = frozenset()
        if Sender.own in senders:
            own |= OWN_ROLES
        if Sender.encounter_system in senders:
            own |= ENCOUNTER_ROLES
        partner = PARTNER_ROLES if Sender.partner in senders else frozenset()
        return {"own": own, "partner": partner}

    def sealed(self, kind: str, sender: str, recipient: str) -> bool:
        """Whether a message crosses between participants, so travels signed and sealed."""
        r = self.routes.get(kind)
        return r is not None and Sender.partner in r.senders and sender != recipient

    def decode(self, kind: str, schema: str | None, body: bytes) -> Message:
        from biox.wire.codec import decode_body

        model = self.model(kind)
        if model is None:
            raise PermanentError(Reason.unknown_kind, f"type={kind!r}")
        return decode_body(model, schema, body)


QUEUES = (
    Queue("intake", IntakeHandler, doc="eligibility (§2-4), one query per agreed partner"),
    Queue("query", MatcherHandler, doc="the gallery search and the answer (§5-9)"),
    Queue(
        "shard",
        ShardHandler,
        doc="one shard of the gallery searched, when BIOX_SHARDS > 1 (Shards)",
        sharded=True,
    ),
    Queue("response", ResponseHandler, doc="answers kept with their source (§20)"),
    Queue("review", ReviewHandler, doc="human review of gray-zone scores (§8)"),
    Queue("retrieval", RetrievalHandler, doc="retrieval queries after a match (§10)"),
    Queue(
        "notice",
        NoticeHandler,
        doc="notices between participants (§12-36) and the partners' audit checkpoints",
    ),
    Queue(
        "audit",
        AuditHandler,
        undecoded=AuditHandler.chain,
        recorded=audit.recorded,
        doc="the hash-chained audit trail",
    ),
)

E, OWN, P = Sender.encounter_system, Sender.own, Sender.partner

ROUTES = RouteTable(
    QUEUES,
    (
        route(EncounterSubmit, "intake", IntakeHandler.submit, E),
        route(Query, "query", MatcherHandler.search, P),
        # within a participant only, and none of them a decision: the query's arrival and
        # its response are what the audit trail records
        route(ShardSearch, "shard", ShardHandler.search, OWN, audited=False),
        route(ShardHits, "query", MatcherHandler.gather, OWN, audited=False),
        route(Response, "response", ResponseHandler.receive, P),
        route(EncounterResult, None, None, OWN, audited=False),  # to the encounter system
        route(ReviewCase, "review", ReviewHandler.open, OWN),
        route(ReviewDecision, "review", ReviewHandler.decide, OWN),
        route(RetrievalAsk, "retrieval", RetrievalHandler.ask, OWN),
        route(RetrievalRequest, "retrieval", RetrievalHandler.answer, P),
        route(RetrievalResponse, "retrieval", RetrievalHandler.receive, P),
        route(AuditCheckpoint, "notice", NoticeHandler.checkpoint, P),
        route(Notice, "notice", NoticeHandler.receive, P),
        route(NoticeSend, "notice", NoticeHandler.send, OWN),
        route(DeadLettersReplayed, None, None, OWN),  # on-call actions: the audit records them
        route(DeadLettersPurged, None, None, OWN),
        route(DeadLettersExported, None, None, OWN),
        route(DeadLettersImported, None, None, OWN),
        route(RetentionPurged, None, None, OWN),
        route(PersonalDataRead, None, None, OWN),
    ),
)


@lru_cache(maxsize=8)
def routes_for(shards: int) -> RouteTable:
    """The table a participant runs with ``BIOX_SHARDS`` = ``shards``."""
    return ROUTES if shards == 1 else ROUTES.sharded(shards)
