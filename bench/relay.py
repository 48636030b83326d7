"""The pipeline's own message pattern with no work in it: the limit the work around the
search is measured against (issue 23, item 4; docs/performance.md, "The relay").

The raw round trip (``bench.run.raw_round_trip``) is one publish and one delivery per
query. The pipeline moves more than that through the broker for every encounter:

    encounter system → submissions → us.intake (+ us.audit)
    us.intake → us outbox → mx arrival queue (+ us.audit out, mx.audit in),
                and the result's first revision (pending) → the reply queue
    mx matcher → mx outbox → us arrival queue (+ mx.audit out, us.audit in)
    us.response → results exchange → the encounter system's reply queue (revision 2)

The relay sends exactly that: the same exchanges, routing keys, queues and audit copies
on the same broker, with the very bodies and headers the pipeline sent (captured by
``tap`` during its warm-up), one process per worker as in the pipeline, each taking
batches the way the consume loop does (``BIOX_BATCH_MAX``, ``BIOX_BATCH_WAIT_MS``),
publishing with confirms and acking after. No decoding, no handler, no database: each hop
republishes the captured message of the next kind, and the audit processes ack what they
are given. What the pipeline spends beyond this is the work biox does per query.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika

from biox.broker.link import Link, take
from biox.broker.publisher import Publisher
from biox.settings import Settings
from biox.wire import addresses
from biox.wire.inbound import read_envelope

SUBMIT, QUERY, RESPONSE, RESULT = "encounter.submit", "query", "response", "encounter.result"
TAP = "bench.tap"


@dataclass(frozen=True)
class Sample:
    """One message the pipeline sent: its body and properties, as they crossed the broker."""

    body: bytes
    properties: dict[str, Any]

    def props(self, user: str, reply_to: str | None = None) -> pika.BasicProperties:
        p = dict(self.properties)
        p.update(message_id=str(uuid.uuid4()), user_id=user, delivery_mode=2)
        if reply_to is not None:
            p["reply_to"] = reply_to
        return pika.BasicProperties(**p)


#: what a hop publishes for each delivery: exchange, routing key (None: the delivery's
#: ``reply_to``, for a result) and the captured message
Output = tuple[str, str | None, Sample]


@contextlib.contextmanager
def tap(url: str, requester: str, provider: str) -> Iterator[dict[str, Sample]]:
    """The first message of each kind the block publishes, kept from a queue bound beside
    the pipeline's own (a passive copy: nothing the workers consume is touched)."""
    samples: dict[str, Sample] = {}
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(TAP, durable=False, arguments={"x-max-length": 20_000})
    sources = (
        addresses.submissions(requester),
        addresses.outbox(requester),
        addresses.outbox(provider),
        addresses.results(requester),
    )
    for exchange in sources:
        ch.queue_bind(TAP, exchange, "#")
    try:
        yield samples
    finally:
        while True:
            method, props, body = ch.basic_get(TAP, auto_ack=True)
            if method is None:
                break
            kind = read_envelope(props).kind
            if kind not in samples:
                samples[kind] = Sample(body, _fields(props))
        ch.queue_delete(TAP)
        conn.close()


def _fields(props: pika.BasicProperties) -> dict[str, Any]:
    names = ("content_type", "content_encoding", "headers", "correlation_id", "type", "app_id")
    return {n: getattr(props, n) for n in names if getattr(props, n) is not None}


def relay(
    url: str,
    samples: dict[str, Sample],
    n: int,
    settings: Settings,
    requester: str = "us",
    provider: str = "mx",
    rounds: int = 3,
) -> dict[str, Any]:
    """``n`` encounters offered at once through the relay: queries/s and CPU per query of
    each process (the broker's too), as ``bench.run.pipeline`` reports them. The median
    of ``rounds`` runs: a run of a few seconds varies by a third from one to the next."""
    from bench.run import broker_pids, cpu_ms_per_query, cpu_seconds, drain, median_round

    missing = [k for k in (SUBMIT, QUERY, RESPONSE, RESULT) if k not in samples]
    if missing:
        raise RuntimeError(f"the tap saw no {', '.join(missing)}: nothing to relay")
    result = (addresses.results(requester), None, samples[RESULT])  # to the reply queue named
    hops: dict[str, tuple[list[str], list[Output]]] = {
        f"{requester}-intake": (  # the query, and the result's first revision (pending)
            [addresses.queue(requester, "intake")],
            [
                (
                    addresses.outbox(requester),
                    addresses.routing_key(provider, QUERY),
                    samples[QUERY],
                ),
                result,
            ],
        ),
        f"{provider}-query": (
            [
                addresses.queue(provider, "query"),
                addresses.arrival_queue(provider, "query", requester),
            ],
            [
                (
                    addresses.outbox(provider),
                    addresses.routing_key(requester, RESPONSE),
                    samples[RESPONSE],
                )
            ],
        ),
        f"{requester}-response": (
            [
                addresses.queue(requester, "response"),
                addresses.arrival_queue(requester, "response", provider),
            ],
            [result],
        ),
        f"{requester}-audit": ([addresses.queue(requester, "audit")], []),
        f"{provider}-audit": ([addresses.queue(provider, "audit")], []),
    }
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    ready = ctx.Semaphore(0)
    procs = {
        name: ctx.Process(
            target=_hop,
            args=(url, name, queues, outputs, settings.batch_max, settings.batch_wait_ms),
            kwargs={"stop": stop, "ready": ready},
            daemon=True,
        )
        for name, (queues, outputs) in hops.items()
    }
    for p in procs.values():
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a relay process did not start")
        _offer(url, samples[SUBMIT], requester, 300)  # warm-up, as the pipeline's
        audits = [addresses.queue(code, "audit") for code in (requester, provider)]
        pids = {name: p.pid for name, p in procs.items() if p.pid is not None}
        pids["encounter system (bench)"] = os.getpid()
        pids.update(broker_pids())
        runs = []
        for _ in range(rounds):
            drain([(url, None, audits)])  # from empty audit queues, as the pipeline's
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            seconds = _offer(url, samples[SUBMIT], requester, n)
            runs.append((n / seconds, cpu_ms_per_query(pids, before, n)))
    finally:
        stop.set()
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    runs.sort(key=lambda run: run[0])  # the rounds are reported lowest first
    rate, cpu_ms = median_round(runs, lambda run: run[0])
    return {
        "messages": n,
        "queries_per_s": round(rate, 1),
        "rounds_queries_per_s": [round(r, 1) for r, _ in runs],
        "body_bytes": {k: len(samples[k].body) for k in (SUBMIT, QUERY, RESPONSE, RESULT)},
        "cpu_ms_per_query": cpu_ms,
    }


def _offer(url: str, submit: Sample, requester: str, n: int) -> float:
    """``n`` submissions in batches of 20 (as the bench's encounter system sends them),
    all offered at once; seconds until the last result is in its reply queue."""
    reply = f"encounters.replies.relay-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(reply, durable=True, arguments={"x-expires": 600_000})
    ch.queue_bind(reply, addresses.results(requester), reply)
    try:
        with Link(url, name="relay-encounter-system", consume=reply, prefetch=2000) as link:
            pub = Publisher(link)
            exchange = addresses.submissions(requester)
            key = addresses.routing_key(requester, SUBMIT)
            started = time.perf_counter()

            def send() -> None:
                for start in range(0, n, 20):
                    count = min(20, n - start)
                    pub.send_raw(
                        [(exchange, key, submit.body, submit.props(link.user, reply))] * count
                    )

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            for _ in range(2 * n):  # two revisions of each result, as the pipeline's
                link.ack(link.deliveries.get(timeout=120))
            took = time.perf_counter() - started
            sender.join()
    finally:
        ch.queue_delete(reply)
        conn.close()
    return took


def _hop(
    url: str,
    name: str,
    queues: Sequence[str],
    outputs: list[Output],
    batch_max: int,
    batch_wait_ms: float,
    *,
    stop: Any,
    ready: Any,
) -> None:
    """One worker of the relay: batches taken as the consume loop takes them; each
    delivery answered by the captured messages of the next kinds (``outputs``), confirmed,
    then acked; an audit process acks only."""
    with Link(url, name=f"relay-{name}", consume=list(queues), prefetch=256) as link:
        pub = Publisher(link)
        ready.release()
        while not stop.is_set():
            batch = take(link.deliveries, batch_max, batch_wait_ms)
            if not batch:
                continue
            if outputs:
                pub.send_raw(
                    [
                        (
                            exchange,
                            key or (d.properties.reply_to or ""),
                            sample.body,
                            sample.props(link.user, d.properties.reply_to),
                        )
                        for d in batch
                        for exchange, key, sample in outputs
                    ]
                )
            link.ack(*batch)
