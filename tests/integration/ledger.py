"""Counting every message each side sends, by message id, to check "exactly once" where it
can break, instead of reading it off the consolidated view.

A ``Tap`` is a durable queue of the test's own bound to the same exchange and routing key
as a worker's queue: the broker routes it a copy of every message published there,
copies of a republished message included, and keeps them across a broker restart. The
helpers below compare what was sent with what each receiver recorded.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pika
from sqlmodel import select

from biox.database import session_for
from biox.routes import ROUTES
from biox.sim.encounters import EncounterSystem
from biox.store import ProcessedMessage, Transaction, marker_key
from biox.trust.sealing import load_ring
from biox.wire import codec
from biox.wire.inbound import read_envelope
from biox.wire.messages import OutcomeStatus


@dataclass(frozen=True)
class Tapped:
    message_id: str
    kind: str
    correlation_id: str
    routing_key: str
    body: bytes

    @property
    def status(self) -> str | None:
        data = msgpack.unpackb(self.body, timestamp=3)
        return data.get("status") if isinstance(data, dict) else None


def opened(keys: Path | None, props: pika.BasicProperties, body: bytes) -> bytes:
    """A sealed partner message as its recipient reads it (others as they are), when the
    recipient's keys are at hand."""
    env = read_envelope(props)
    if not (keys and env.recipient and (keys / env.recipient).is_dir()):
        return body
    if not ROUTES.sealed(env.kind, env.sender, env.recipient):
        return body
    return load_ring(keys, env.recipient).open(env, body)


class Tap:
    def __init__(self, url: str, bindings: list[tuple[str, str]], keys: Path | None = None) -> None:
        """``keys``: to read sealed partner messages (their status) as the recipient."""
        self.url = url
        self.keys = keys
        self.name = f"test.tap.{uuid.uuid4().hex[:10]}"
        self.seen: list[Tapped] = []
        self._connect()
        self._ch.queue_declare(self.name, durable=True, arguments={"x-expires": 3_600_000})
        for exchange, key in bindings:
            self._ch.queue_bind(self.name, exchange, key)

    def _connect(self) -> None:
        params = pika.URLParameters(self.url)
        params.heartbeat = 0  # the test may not look at the tap for minutes
        self._conn = pika.BlockingConnection(params)
        self._ch = self._conn.channel()

    def drain(self, quiet: float = 0.3, timeout: float = 30.0) -> list[Tapped]:
        """Everything copied so far: reads until nothing new comes for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            try:
                method, props, body = self._ch.basic_get(self.name, auto_ack=True)
            except pika.exceptions.AMQPError:  # the broker restarted: connect again
                time.sleep(0.5)
                with contextlib.suppress(pika.exceptions.AMQPError):
                    self._connect()
                continue
            if method is None:
                time.sleep(0.05)
                continue
            last = time.monotonic()
            self.seen.append(
                Tapped(
                    props.message_id or "",
                    props.type or "",
                    props.correlation_id or "",
                    method.routing_key,
                    opened(self.keys, props, body),
                )
            )
        return self.seen

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):  # else it expires by itself
            if not self._conn.is_open:
                self._connect()
            self._ch.queue_delete(self.name)
            self._conn.close()


def distinct_by(tapped: list[Tapped], key: str) -> dict[str, set[str]]:
    """Distinct message ids per ``key`` (e.g. per correlation id, i.e. per query)."""
    out: dict[str, set[str]] = defaultdict(set)
    for t in tapped:
        out[getattr(t, key)].add(t.message_id)
    return out


def copies(tapped: list[Tapped]) -> int:
    """How many deliveries were copies of a message already seen (at-least-once, absorbed)."""
    return sum(n - 1 for n in Counter(t.message_id for t in tapped).values())


def check_each_query_answered_once(
    queries: list[Tapped],
    responses: list[Tapped],
    provider: str,
    requester: str,
    requester_db: str,
    provider_db: str,
) -> None:
    """Every query the requester sent has exactly one final answer from the provider, with
    the id derived from the query message; the requester recorded it once; the provider
    handled each query message once."""
    sent = {t.correlation_id: t.message_id for t in queries}
    assert len(sent) == len({t.message_id for t in queries}), "a query id under two messages"
    finals = [t for t in responses if t.status != "pending_review"]
    answers = distinct_by(finals, "correlation_id")
    missing = sorted(set(sent) - set(answers))
    assert missing == [], f"{len(missing)} queries to {provider} never answered: {missing[:5]}"
    twice = {q: ids for q, ids in answers.items() if len(ids) > 1}
    assert twice == {}, f"answered more than once: {list(twice.items())[:3]}"
    for query_id, ids in answers.items():
        assert ids == {codec.derived_id(sent[query_id], "response")}, query_id
    response_ids = {i for ids in answers.values() for i in ids}
    with session_for(requester_db) as s:
        markers = s.exec(
            select(ProcessedMessage).where(
                ProcessedMessage.consumer == f"{requester}.response",  # type: ignore[arg-type]
                ProcessedMessage.message_id.in_(  # type: ignore[attr-defined]
                    [marker_key(provider, i) for i in response_ids]
                ),  # type: ignore[attr-defined]
            )
        ).all()
        assert len(markers) == len(response_ids), "the requester missed or repeated answers"
        txs = {
            tx.query_id: tx
            for tx in s.exec(
                select(Transaction).where(
                    Transaction.query_id.in_(list(sent)),  # type: ignore[attr-defined]
                    Transaction.role == "requester",  # type: ignore[arg-type]
                )
            )
        }
        assert set(txs) == set(sent)
        for qid, tx in txs.items():
            assert tx.source_message_id in answers[qid], qid  # the one answer, stored
    with session_for(provider_db) as s:
        handled = s.exec(
            select(ProcessedMessage).where(
                ProcessedMessage.consumer == f"{provider}.query",  # type: ignore[arg-type]
                ProcessedMessage.message_id.in_(  # type: ignore[attr-defined]
                    [marker_key(requester, i) for i in sent.values()]
                ),  # type: ignore[attr-defined]
            )
        ).all()
        assert len(handled) == len(sent), "the provider lost or repeated a query"


def check_results_once(system: EncounterSystem) -> None:
    """At the encounter system, every copy of every result: each revision of an encounter
    came under one message id, and a partner's final answer never changed afterwards."""
    by_encounter: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for mid, result in system.results.items():
        by_encounter[result.encounter_id][result.revision].add(mid)
    for eid, revisions in by_encounter.items():
        reused = {r: ids for r, ids in revisions.items() if len(ids) > 1}
        assert reused == {}, f"{eid}: one revision under several messages: {reused}"
    final: dict[tuple[str, str], str] = {}
    ordered = sorted(system.results.values(), key=lambda r: (r.encounter_id, r.revision))
    for result in ordered:
        for o in result.outcomes:
            if o.status in (OutcomeStatus.pending, OutcomeStatus.pending_review):
                assert (result.encounter_id, o.partner) not in final, (
                    f"{result.encounter_id}: {o.partner} final, then {o.status.value} again"
                )
                continue
            before = final.setdefault((result.encounter_id, o.partner), o.status.value)
            assert before == o.status.value, f"{result.encounter_id}: {o.partner} changed answer"
    assert set(system.copies) == set(system.results)
