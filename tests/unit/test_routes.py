"""The route table is the one place a kind is declared (docs/architecture.md, "The route
table"): everything else about a kind is derived from its line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from sqlmodel import Session

from biox.broker.memory import InMemoryExchange
from biox.broker.topology import bindings
from biox.database import session_for
from biox.handlers.base import Context, Effects, Handler, Result
from biox.routes import QUEUES, ROUTES, Queue, Route, RouteTable, Sender, route
from biox.schemas import contract
from biox.settings import Settings
from biox.store import ParticipantRow
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import Message, RetrievalAsk


class Ping(Message):
    """A throwaway kind, declared here only."""

    KIND: ClassVar[str] = "ping"
    text: str


class PingHandler(Handler):
    seen: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def build(cls, ctx: Context) -> PingHandler:
        return cls()

    def ping(self, batch: Sequence[Inbound[Ping]], session: Session) -> list[Result]:
        out: list[Result] = []
        for inb in batch:
            self.seen.append((inb.envelope.sender, inb.message.text))
            row = ParticipantRow(code=inb.envelope.message_id[:8], agency="ping", status="x")
            out.append(Effects(rows=[row], outcome="pong"))
        return out

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None


def with_ping() -> RouteTable:
    return RouteTable(
        [*QUEUES, Queue("ping", PingHandler)],
        [*ROUTES.routes.values(), route(Ping, "ping", PingHandler.ping, Sender.partner)],
    )


def test_a_kind_declared_in_one_line_gets_its_queue_binding_and_schema(tmp_path):
    table = with_ping()
    assert table.kinds_of("ping") == ("ping",)
    assert "ping" in table.partner_kinds()
    assert "ping" in table.kinds_of("audit")
    bound = bindings("us", ["us", "mx"], table, [1, 5])
    # mx's arrival queue for it, on mx's way in; not on the inbox
    assert ("us.ping.from.mx", "biox.us.partners.mx", "us.ping") in bound
    assert ("us.ping", "biox.us", "us.ping") not in bound
    assert ("biox.us.partners.mx", "biox.mx.out", "us.ping") in bound  # the link carries it
    assert ("us.audit", "biox.us.partners.mx", "us.ping") in bound  # the audit records it
    assert ("us.ping.retry.1", "biox.us", "us.retry.ping.1") in bound
    assert ("us.ping.dlq", "biox.us", "us.dead-letter.ping") in bound
    docs = contract.documents(table)
    assert json.loads(docs["ping.v1.json"])["x-biox-kind"] == "ping"
    routing = json.loads(docs["routing.json"])
    assert routing["queues"]["<code>.ping"] == ["ping"]
    assert routing["senders"]["ping"] == ["partner"]
    assert "`ping`" in docs["README.md"]

    # and it runs: mx's ping reaches us's handler through the real loop and topology
    settings = Settings(data_dir=tmp_path)
    exchange = InMemoryExchange(settings, routes=table)
    PingHandler.seen.clear()
    exchange.publish(
        codec.to_partner(
            Ping(text="hello"), sender="mx", recipient="us", message_id="p-1", correlation_id="p"
        )
    )
    exchange.run()
    assert PingHandler.seen == [("mx", "hello")]
    with session_for(settings.database_for("us")) as s:
        assert s.get(ParticipantRow, "p-1") is not None


def test_a_handler_that_is_not_a_method_of_its_queues_class_is_refused():
    with pytest.raises(ValueError, match="not a method"):
        RouteTable(QUEUES, [route(Ping, "intake", PingHandler.ping, Sender.partner)])
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable(QUEUES, [ROUTES.routes["query"], ROUTES.routes["query"]])
    with pytest.raises(ValueError, match="no queue"):
        RouteTable(QUEUES, [route(Ping, "nowhere", PingHandler.ping, Sender.partner)])


@pytest.mark.parametrize(
    ("kind", "sender", "reason"),
    [
        ("query", "mx", None),  # a partner's kind from a partner
        ("query", "us", Reason.misaddressed),  # nobody queries itself
        ("query", "zz", Reason.unknown_participant),  # not in the registry
        ("review.decision", "us", None),  # an own kind from oneself
        ("review.decision", "mx", Reason.misaddressed),  # a partner posing as an examiner
        ("retrieval.ask", "sv", Reason.misaddressed),
        ("retrieval.request", "mx", None),
        ("retrieval.request", "us", Reason.misaddressed),
        ("encounter.submit", "us", None),  # encounter systems: by routing alone
    ],
)
def test_the_sender_check_follows_each_routes_senders(kind, sender, reason):
    known = {"us", "mx", "sv"}.__contains__
    if reason is None:
        ROUTES.check_sender(kind, sender, "us", known)
        return
    with pytest.raises(PermanentError) as info:
        ROUTES.check_sender(kind, sender, "us", known)
    assert info.value.reason is reason
    # the dead letter names who it came from
    said = (
        f"sender {sender!r}" if reason is Reason.unknown_participant else f"{kind} from {sender!r}"
    )
    assert info.value.detail == said


def test_partners_reach_only_the_partner_kinds():
    assert ROUTES.partner_kinds() == (
        "audit.checkpoint",
        "notice",
        "query",
        "response",
        "retrieval.request",
        "retrieval.response",
    )
    own = {k for k, r in ROUTES.routes.items() if Sender.partner not in r.senders}
    assert {"review.case", "review.decision", "retrieval.ask", "encounter.submit"} <= own


def test_every_queue_of_the_table_has_a_worker_and_a_handler_method_per_kind():
    for role, queue in ROUTES.queues.items():
        kinds = ROUTES.kinds_of(role)
        assert kinds, role
        if queue.decodes:
            for kind in kinds:
                r: Route = ROUTES.routes[kind]
                assert r.handler is not None
                assert getattr(queue.handler, r.handler.__name__) is r.handler
        script = Path(__file__).parents[2] / "workers" / f"{role}.py"
        assert f'run_worker("{role}"' in script.read_text(), script  # python workers/<queue>.py


def test_a_kind_its_queue_does_not_take_is_refused_unknown_kind(tmp_path):
    exchange = InMemoryExchange(Settings(data_dir=tmp_path))
    ask = RetrievalAsk(query_id="q", elements=["biographic"], asked_by="x")  # type: ignore[list-item]
    out = codec.to_submissions(ask, participant="us", message_id="m-1", correlation_id="q")
    out.routing_key = "us.encounter.submit"  # onto the intake queue
    exchange.publish(out)
    exchange.run()
    [dead] = exchange.dead_letters("us", "intake")
    assert dead.properties.headers["biox-reason"] == "unknown_kind"
    assert "encounter.submit" in dead.properties.headers["biox-error"]


def test_results_to_encounter_systems_are_the_only_kind_the_audit_does_not_take():
    """An encounter.result goes to an encounter system's queue; the audit queue takes every
    other kind (each with the binding that brings it) but the hops between a participant's
    query worker and its own shards: the query they carry is recorded as it arrives, and
    its answer as it leaves."""
    unaudited = [k for k, r in ROUTES.routes.items() if not r.audited]
    assert unaudited == ["shard.search", "shard.hits", "encounter.result"]
    assert "encounter.result" not in ROUTES.kinds_of("audit")
    assert {"query", "response", "audit.checkpoint", "ops.dlq.replay"} <= set(
        ROUTES.kinds_of("audit")
    )
