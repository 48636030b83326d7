"""The one consume loop every worker runs (docs/architecture.md, "One consume loop").

For each batch of deliveries: read each envelope once, check the sender against the route
table and decode the body with the kind's model, drop what was already processed
(republishing what it caused), run the kind's handler, commit its rows together with the
idempotency markers (the audit's entries are their own), publish what it produced and wait
for the confirms, and only then ack. Failures are routed, never swallowed:

* permanent (undecodable, schema-invalid, a sender the route does not allow, refused): a
  ``rejected`` answer to the sender when the handler can identify one, otherwise the
  dead-letter queue with the reason;
* transient (or an unexpected exception): the next retry tier with ``biox-attempt``
  raised, the dead-letter queue after the last tier;
* publishing trouble (connection lost, unroutable output): the input is requeued; it is
  already marked processed, so the redelivery only republishes. The quorum queue's
  ``delivery-limit`` dead-letters a message that can never get through.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session

from biox.broker import failures, sweeps
from biox.broker.admission import Admission
from biox.broker.link import ConnectionLost, Delivery, Link, Nacked, Transport, Unroutable, take
from biox.broker.publisher import (
    Publisher,
    pack_outgoing,
    republish_properties,
    unpack_outgoing,
)
from biox.broker.topology import arrival_queues
from biox.database import add_markers, add_rows, handled, mark_published, session_for
from biox.handlers.base import Effects, Handler, Result
from biox.handlers.notice import purge_event
from biox.metrics import Metrics
from biox.routes import Queue, RouteTable
from biox.settings import Settings
from biox.trust.sealing import KeyRing
from biox.wire import addresses
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import UNPROVEN, BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound, arrived, read_envelope
from biox.wire.messages import utcnow

log = structlog.get_logger("biox.consumer")


@dataclass(frozen=True)
class Taken:
    """A delivery and its envelope, read once when the loop takes it."""

    delivery: Delivery
    envelope: Envelope


class ConsumeLoop:
    def __init__(
        self,
        *,
        url: str,
        participant: str,
        queue: Queue,
        routes: RouteTable,
        handler: Handler,
        database_url: str,
        settings: Settings,
        keys: KeyRing,
        known: Callable[[str], bool] = lambda _code: False,
        link: Transport | None = None,
        partners: Sequence[str] = (),
    ) -> None:
        """One worker of ``queue`` for ``participant``. ``keys``: its private keys and the
        partners' public keys (partner messages are signed and sealed). ``known``: whether
        a code is a participant of the registry (the sender check of partner kinds).
        ``link``: the transport, when not a fresh connection to ``url`` (unit tests and the
        in-memory exchange drive the loop through their own). ``partners``: those with a
        link to us, whose arrival queues this worker consumes besides its own."""
        self.participant = participant
        self.spec = queue
        self.routes = routes
        self.queue = addresses.queue(participant, queue.role)
        self.handler = handler
        self.keys = keys
        self.admission = Admission(participant, queue, routes, settings, keys, known)
        self.database_url = database_url
        self.settings = settings
        self.worker = f"{self.queue}@{socket.gethostname()}:{os.getpid()}"
        #: its own queue, then each partner's arrival queue (docs/security.md, "Quotas")
        self.consumed = [self.queue, *arrival_queues(participant, queue.role, partners, routes)]
        self.url = url
        self.link: Transport = link or Link.consuming(url, self.worker, self.consumed, settings)
        self.publisher = Publisher(self.link, settings.publish_timeout)
        self.stats: Counter[str] = Counter()
        self.metrics = Metrics(participant, self.queue)  # served by run_worker, if asked
        #: a broker that refused our outputs gets a moment before the requeued inputs come back
        self.requeue_pause = 0.5  # (none in memory, where nothing is waiting to recover)
        wait_ms = settings.batch_wait_ms if queue.decodes else settings.audit_batch_wait_ms
        self.batch_wait_ms = wait_ms  # the audit's (undecoded) is longer: no query waits for it
        self._maintained_at = time.monotonic()  # the first maintenance: one interval in
        self.confirmed: set[str] = set()  # outputs confirmed, marked with the next commit

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info("worker_started", worker=self.worker, queue=self.queue)
        try:
            while not stop.is_set():
                self.consume(self._take())
                self.maintain()
        finally:
            self._mark_published()
            self.link.close()
            log.info("worker_stopped", worker=self.worker, **self.stats)

    def maintain(self) -> None:
        """A handler's scheduled work between batches (``Handler.maintain``): rows committed,
        then events published; a failure is logged and tried at the next interval."""
        every = self.handler.maintain_every_s
        due = self.handler.maintenance_due
        if every <= 0 or (time.monotonic() - self._maintained_at < every and not due):
            return
        self._maintained_at = time.monotonic()
        self.handler.maintenance_due = False
        try:
            with session_for(self.database_url) as session:
                outgoing = [self._sealed(o) for o in self.handler.maintain(session, utcnow())]
                session.commit()
                if self.handler.sweeps_dead_letters and self.url.startswith("amqp"):
                    outgoing += self._sweep(session)
            self.publisher.send(outgoing)
        except Exception as exc:
            log.error(
                "maintenance_failed",
                worker=self.worker,
                error=f"{type(exc).__name__}: {failures.describe(exc)}",
            )

    def _sweep(self, session: Session) -> list[Outgoing]:
        """Dead letters and held results that carry erased data leave the broker
        (``broker.sweeps``); the audit trail gets the counts."""
        counts = sweeps.sweep(
            self.url, self.settings.client_tls(), self.participant, session, self.settings.shards
        )
        if not counts:
            return []
        log.info("broker_swept", counts=counts)
        return [self._sealed(purge_event(self.participant, counts, "sweep"))]

    def consume(self, deliveries: Sequence[Delivery]) -> None:
        """One batch, start to end: every delivery is acked, requeued or parked after."""
        if not deliveries:  # idle: the outputs confirmed since the last commit are marked
            return self._mark_published()
        # a delivery of a connection that died was requeued by the broker: never touch it
        batch = [
            Taken(
                d,
                arrived(
                    read_envelope(d.properties),
                    d.exchange,
                    d.routing_key,
                    self.participant,
                    self.settings.dev_shared_broker,
                ),
            )
            for d in deliveries
            if d.generation == self.link.generation
        ]
        batch = self._without_ids_parked(batch)
        if batch:
            self.metrics.batch(len(batch))
            self.process(batch)

    def _take(self) -> list[Delivery]:
        return take(self.link.deliveries, self.settings.batch_max, self.batch_wait_ms)

    # --- one batch ------------------------------------------------------------------------

    def process(self, batch: Sequence[Taken], conflicts: int = 3) -> None:
        try:
            self._process(batch)
        except StaleDataError as exc:
            # another worker changed a row this batch read (an encounter's revision): nothing
            # was committed or published, so run again on fresh state, not via a retry tier
            if conflicts > 0:
                log.info("conflict_rerun", worker=self.worker, error=str(exc), batch=len(batch))
                self.process(batch, conflicts - 1)
            else:
                self._fail(batch, exc)
        except (ConnectionLost, Unroutable, Nacked) as exc:
            log.warning("publish_failed", worker=self.worker, error=str(exc), batch=len(batch))
            time.sleep(self.requeue_pause)
            for t in batch:
                self.link.nack(t.delivery, requeue=True)
        except Exception as exc:
            self._fail(batch, exc)

    def _fail(self, batch: Sequence[Taken], exc: BaseException) -> None:
        if len(batch) > 1:  # isolate the message that breaks the handler
            for t in batch:
                self.process([t])
            return
        self._retry(batch[0], exc)

    def _without_ids_parked(self, batch: Sequence[Taken]) -> list[Taken]:
        """A delivery without a message_id cannot be deduplicated: dead-letter it once,
        here, so that re-running a batch (conflict, isolation) never acks it twice."""
        keep = []
        for t in batch:
            if t.envelope.message_id:
                keep.append(t)
                continue
            try:
                self._dead(t, PermanentError(Reason.invalid_message, "no message_id"))
                self.link.ack(t.delivery)
            except (ConnectionLost, Unroutable, Nacked) as exc:
                log.warning("publish_failed", worker=self.worker, error=str(exc), batch=1)
                self.link.nack(t.delivery, requeue=True)
        return keep

    def _process(self, batch: Sequence[Taken]) -> None:
        keyed, admit = self.admission.key, self.admission.admit
        parsed = [(t, keyed(t.envelope, t.delivery), admit(t.envelope, t.delivery)) for t in batch]
        publish: list[Outgoing] = []
        dead: list[tuple[Taken, BioxError]] = []
        later: list[tuple[Taken, TransientError]] = []
        with session_for(self.database_url) as session:
            asked = [(key, t.delivery.redelivered) for t, key, _ in parsed]
            done = handled(session, self.queue, asked, self.spec.recorded)
            fresh: list[tuple[Taken, str, Inbound[Any]]] = []
            failed: list[tuple[Taken, str, BioxError]] = []
            seen: set[str] = set()
            unconfirmed: list[str] = []  # processed before, outputs maybe never confirmed
            for t, key, item in parsed:
                if key in done:
                    if (m := done[key]) and not (m.published or key in self.confirmed):
                        publish.extend(unpack_outgoing(m.outputs))
                        unconfirmed.append(key)
                    self.stats["duplicate"] += 1
                    self.metrics.duplicate()
                elif key in seen:
                    self.stats["duplicate"] += 1
                    self.metrics.duplicate()
                elif isinstance(item, BioxError):
                    failed.append((t, key, item))
                else:
                    fresh.append((t, key, item))
                seen.add(key)

            markers: list[dict[str, Any]] = []
            rows: list[Any] = []  # the effects' rows, written together (``database.add_rows``)
            results = self._dispatch([inb for *_, inb in fresh], session)
            for (t, key, _), result in zip(fresh, results, strict=True):
                if isinstance(result, TransientError):
                    later.append((t, result))
                elif isinstance(result, BioxError):
                    failed.append((t, key, result))
                else:
                    self._stage(rows, t.envelope, key, result, publish, markers)
            for t, key, error in failed:
                # never answer whoever biox-from names before the broker and the signature
                # have proven that it is the one speaking
                unproven = error.reason in UNPROVEN or not error.answerable
                answer = None if unproven else self.handler.reject(t.envelope, error)
                rows.append(failures.refusal(self.queue, t.envelope, error, answer is not None))
                if answer is None:
                    dead.append((t, error))
                else:
                    self._stage(rows, t.envelope, key, answer, publish, markers)
            add_rows(session, rows)
            if markers:  # one multi-row insert for the batch's idempotency markers
                add_markers(session, markers)
            marking = sorted(self.confirmed)  # earlier batches' confirmed outputs
            if marking:
                mark_published(session, self.queue, marking)
            session.commit()
            self.confirmed.difference_update(marking)

        if publish:
            self.publisher.send(publish)
            self.confirmed.update([m["message_id"] for m in markers] + unconfirmed)
        for t, error in dead:
            self._dead(t, error)
        retried = {id(t) for t, _ in later}
        for t, exc in later:
            self._retry(t, exc)  # acks once the copy sits in its retry tier
        self.link.ack(*[t.delivery for t in batch if id(t) not in retried])

    def _dispatch(self, fresh: Sequence[Inbound[Any]], session: Session) -> list[Result]:
        """Each kind's sub-batch to its handler method; results back in delivery order."""
        if not fresh:
            return []
        if self.spec.undecoded is not None:
            return self.spec.undecoded(self.handler, fresh, session)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, inb in enumerate(fresh):
            by_kind[inb.envelope.kind].append(i)
        results: list[Result | None] = [None] * len(fresh)
        for kind, positions in by_kind.items():
            method = self.routes.routes[kind].handler
            assert method is not None  # admitted were only kinds this queue takes
            started = time.perf_counter()
            out = method(self.handler, [fresh[i] for i in positions], session)
            self.metrics.handler(kind, time.perf_counter() - started)
            for i, result in zip(positions, out, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _mark_published(self) -> None:
        """Confirmed: a redelivery need not republish (and cascade) their outputs. Written
        with the next batch's commit, here only when idle or stopping (a commit of its own
        per batch was 13 % of intake's time, docs/performance.md). Best effort: if lost, a
        redelivery republishes under the same ids, which the receivers absorb."""
        marking = sorted(self.confirmed)
        try:
            if marking:
                with session_for(self.database_url) as session:
                    mark_published(session, self.queue, marking)
                    session.commit()
                self.confirmed.difference_update(marking)
        except Exception as exc:
            log.warning("mark_published_failed", worker=self.worker, error=str(exc))

    def _stage(
        self,
        rows: list[Any],
        env: Envelope,
        key: str,
        effects: Effects,
        publish: list[Outgoing],
        markers: list[dict[str, Any]],
    ) -> None:
        rows.extend(effects.rows)  # new rows, or rows the handler loaded and changed
        # sealed before they are stored: a redelivery republishes these very bytes
        outgoing = [self._sealed(o) for o in effects.outgoing]
        if self.spec.recorded is None:  # else its rows are its markers
            markers.append(
                {"consumer": self.queue, "message_id": key, "outputs": pack_outgoing(outgoing)}
            )
        publish.extend(outgoing)
        self.stats[effects.outcome.split(":")[0]] += 1
        self.metrics.handled(
            env.kind, effects.outcome, env.timestamp, [o.envelope.kind for o in outgoing]
        )
        log.info(
            "handled",
            query_id=env.correlation_id,
            message_id=env.message_id,
            kind=env.kind,
            sender=env.sender,
            outcome=effects.outcome,
            attempt=env.attempt,
        )

    def _sealed(self, out: Outgoing) -> Outgoing:
        env = out.envelope
        sealed = self.routes.sealed(env.kind, env.sender, env.recipient)
        return self.keys.seal(out) if sealed else out

    # --- failure routing (broker/failures.py says where and with what) ---------------------

    def _retry(self, t: Taken, exc: BaseException) -> None:
        env = t.envelope
        attempt = env.attempt + 1
        tiers = self.settings.retry_tiers
        log.warning(
            "handler_failed",
            query_id=env.correlation_id,
            message_id=env.message_id,
            reason=failures.reason_of(exc),
            error=f"{type(exc).__name__}: {failures.describe(exc)}",
            attempt=attempt,
            transient=isinstance(exc, TransientError),
        )
        try:
            if attempt > len(tiers):
                self._dead(t, exc, attempt=attempt)
            else:
                target = failures.retry_target(
                    self.participant, self.spec.role, tiers[attempt - 1], self.spec.decodes
                )
                self._republish(t, target, exc, attempt)
                self.stats["retried"] += 1
                self.metrics.failed("retry", failures.reason_of(exc))
            self.link.ack(t.delivery)
        except Exception as publish_exc:
            log.warning("retry_publish_failed", error=str(publish_exc))
            self.link.nack(t.delivery, requeue=True)

    def _dead(self, t: Taken, exc: BaseException, attempt: int | None = None) -> None:
        target = failures.dead_letter_target(self.participant, self.spec.role, self.spec.decodes)
        env = t.envelope
        self._republish(t, target, exc, attempt if attempt is not None else env.attempt)
        self.stats["dead_lettered"] += 1
        self.metrics.failed("dead_letter", failures.reason_of(exc))
        log.warning(
            "dead_lettered",
            query_id=env.correlation_id,
            message_id=env.message_id,
            route="/".join(target),
            error=str(exc),
        )

    def _republish(self, t: Taken, target: tuple[str, str], exc: BaseException, n: int) -> None:
        """Copy of the original (body untouched) to a retry tier or the DLQ, with the why."""
        d = t.delivery
        headers = failures.headers(t.envelope, d, exc, n, self.worker)
        props = republish_properties(d.properties, headers, self.link.user)
        self.publisher.send_raw([(*target, d.body, props)])
