"""The one consume loop every worker runs (DESIGN §8).

For each batch of deliveries: decode, drop what was already processed (republishing what
it caused), run the handler, commit its rows together with the idempotency markers,
publish what it produced and wait for the confirms, and only then ack. Failures are
routed, never swallowed:

* permanent (undecodable, schema-invalid, refused): a ``rejected`` answer to the sender
  when the handler can identify one, otherwise the dead-letter queue with the reason;
* transient (or an unexpected exception): the next retry tier with ``biox-attempt``
  raised, the dead-letter queue after the last tier;
* publishing trouble (connection lost, unroutable output): the input is requeued; it is
  already marked processed, so the redelivery only republishes. The quorum queue's
  ``delivery-limit`` dead-letters a message that can never get through.
"""

from __future__ import annotations

import os
import queue as queue_mod
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import insert, update
from sqlalchemy.orm.exc import StaleDataError

from biox import addresses
from biox.broker.link import ConnectionLost, Delivery, Link, Nacked, Unroutable
from biox.broker.publisher import (
    Publisher,
    envelope_of,
    pack_outgoing,
    republish_properties,
    unpack_outgoing,
)
from biox.codec import H_ATTEMPT, Envelope, Outgoing, decode_body
from biox.errors import BioxError, PermanentError, Reason, TransientError
from biox.handlers.base import Effects, Handler, Inbound
from biox.settings import Settings
from biox.store import ProcessedMessage, processed, session_for

log = structlog.get_logger("biox.consumer")

H_ERROR = "biox-error"
H_ERROR_CLASS = "biox-error-class"
H_REASON = "biox-reason"
H_PERMANENT = "biox-permanent"
H_WORKER = "biox-worker"
H_FAILED_AT = "biox-failed-at"
H_FIRST_FAILED_AT = "biox-first-failed-at"
H_ORIGINAL_EXCHANGE = "biox-original-exchange"
H_ORIGINAL_ROUTING_KEY = "biox-original-routing-key"
H_ORIGINAL_USER = "biox-original-user-id"


class ConsumeLoop:
    def __init__(
        self,
        *,
        url: str,
        queue: str,
        handler: Handler,
        database_url: str,
        settings: Settings,
        participant: str | None = None,
        role: str | None = None,
        link: Link | None = None,
    ) -> None:
        """``participant`` and ``role``: send retry hops and dead letters through the
        participant's inbox (where the audit consumer sees them); without, straight to
        the tier and DLQ queues by the default exchange (the audit consumer itself, tools).
        ``link``: the transport, when not a fresh connection to ``url`` (unit tests drive
        the loop through an in-memory one).
        """
        self.queue = queue
        self.participant = participant
        self.role = role
        self.handler = handler
        self.database_url = database_url
        self.settings = settings
        self.worker = f"{queue}@{socket.gethostname()}:{os.getpid()}"
        self.link = link or Link(
            url,
            name=self.worker,
            consume=queue,
            prefetch=settings.prefetch,
            heartbeat=settings.heartbeat,
        )
        self.publisher = Publisher(self.link, settings.publish_timeout)
        self.stats: Counter[str] = Counter()

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info("worker_started", worker=self.worker, queue=self.queue)
        try:
            while not stop.is_set():
                batch = self._take()
                batch = self._without_ids_parked(batch)
                if batch:
                    self.process(batch)
        finally:
            self.link.close()
            log.info("worker_stopped", worker=self.worker, **self.stats)

    def _take(self) -> list[Delivery]:
        try:
            first = self.link.deliveries.get(timeout=0.2)
        except queue_mod.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.batch_max:
            left = deadline - time.monotonic()
            try:
                batch.append(
                    self.link.deliveries.get(timeout=left)
                    if left > 0
                    else self.link.deliveries.get_nowait()
                )
            except queue_mod.Empty:
                break
        return [d for d in batch if d.generation == self.link.generation]

    # --- one batch ------------------------------------------------------------------------

    def process(self, batch: Sequence[Delivery], conflicts: int = 3) -> None:
        try:
            self._process(batch)
        except StaleDataError as exc:
            # another worker committed a change to a row this batch read (an encounter's
            # result revision): nothing was committed or published, so run it again now
            # on fresh state rather than wait in a retry tier
            if conflicts > 0:
                log.info("conflict_rerun", worker=self.worker, error=str(exc), batch=len(batch))
                self.process(batch, conflicts - 1)
            else:
                self._fail(batch, exc)
        except (ConnectionLost, Unroutable, Nacked) as exc:
            log.warning("publish_failed", worker=self.worker, error=str(exc), batch=len(batch))
            time.sleep(0.5)
            for d in batch:
                self.link.nack(d, requeue=True)
        except Exception as exc:
            self._fail(batch, exc)

    def _fail(self, batch: Sequence[Delivery], exc: BaseException) -> None:
        if len(batch) > 1:  # isolate the message that breaks the handler
            for d in batch:
                self.process([d])
            return
        self._retry(batch[0], exc)

    def _without_ids_parked(self, batch: Sequence[Delivery]) -> list[Delivery]:
        """A delivery without a message_id cannot be deduplicated: dead-letter it once,
        here, so that re-running a batch (conflict, isolation) never acks it twice."""
        keep = []
        for d in batch:
            env = envelope_of(d)
            if env.message_id:
                keep.append(d)
                continue
            try:
                self._dead(d, env, PermanentError(Reason.invalid_message, "no message_id"))
                self.link.ack(d)
            except (ConnectionLost, Unroutable, Nacked) as exc:
                log.warning("publish_failed", worker=self.worker, error=str(exc), batch=1)
                self.link.nack(d, requeue=True)
        return keep

    def _process(self, batch: Sequence[Delivery]) -> None:
        parsed: list[tuple[Delivery, Envelope, str, Inbound | BioxError]] = []
        for d in batch:
            env = envelope_of(d)
            parsed.append((d, env, self._key(d, env), self._decode(d, env)))

        publish: list[Outgoing] = []
        dead: list[tuple[Delivery, Envelope, BioxError]] = []
        later: list[tuple[Delivery, TransientError]] = []
        with session_for(self.database_url) as session:
            done = processed(session, self.queue, [key for _, _, key, _ in parsed])
            fresh: list[tuple[Delivery, Envelope, str, Inbound]] = []
            failed: list[tuple[Delivery, Envelope, str, BioxError]] = []
            seen: set[str] = set()
            unconfirmed: list[str] = []  # processed before, outputs maybe never confirmed
            for d, env, key, item in parsed:
                if key in done:
                    if not done[key].published:
                        publish.extend(unpack_outgoing(done[key].outputs))
                        unconfirmed.append(key)
                    self.stats["duplicate"] += 1
                elif key in seen:
                    self.stats["duplicate"] += 1
                elif isinstance(item, BioxError):
                    failed.append((d, env, key, item))
                else:
                    fresh.append((d, env, key, item))
                seen.add(key)

            markers: list[dict[str, Any]] = []
            results = self.handler.handle([inb for *_, inb in fresh], session) if fresh else []
            for (d, env, key, _), result in zip(fresh, results, strict=True):
                if isinstance(result, TransientError):
                    later.append((d, result))
                elif isinstance(result, BioxError):
                    failed.append((d, env, key, result))
                else:
                    self._record(session, env, key, result, publish, markers)
            for d, env, key, error in failed:
                answer = self.handler.reject(env, error)
                if answer is None:
                    dead.append((d, env, error))
                else:
                    self._record(session, env, key, answer, publish, markers)
            if markers:  # one multi-row insert for the batch's idempotency markers
                session.execute(insert(ProcessedMessage), markers)
            session.commit()

        if publish:
            self.publisher.send(publish)
            self._mark_published([m["message_id"] for m in markers] + unconfirmed)
        for d, env, error in dead:
            self._dead(d, env, error)
        retried = {id(d) for d, _ in later}
        for d, exc in later:
            self._retry(d, exc)  # acks once the copy sits in its retry tier
        for d in batch:
            if id(d) not in retried:
                self.link.ack(d)

    def _mark_published(self, message_ids: list[str]) -> None:
        """Confirmed: a redelivery of these need not republish (and cascade) their outputs.

        Best effort: if this write is lost, a redelivery republishes under the same ids
        and the receivers' idempotency absorbs the copies.
        """
        try:
            with session_for(self.database_url) as session:
                session.execute(
                    update(ProcessedMessage)
                    .where(
                        ProcessedMessage.consumer == self.queue,  # type: ignore[arg-type]
                        ProcessedMessage.message_id.in_(message_ids),  # type: ignore[attr-defined]
                    )
                    .values(published=True)
                )
                session.commit()
        except Exception as exc:
            log.warning("mark_published_failed", worker=self.worker, error=str(exc))

    def _key(self, d: Delivery, env: Envelope) -> str:
        """Idempotency key: the message id, unless the handler sees hops of one message
        as distinct events (the audit consumer records each retry hop)."""
        if self.handler.kinds:
            return env.message_id
        return f"{env.message_id}|{d.exchange}|{d.routing_key}|{env.attempt}"

    def _decode(self, d: Delivery, env: Envelope) -> Inbound | BioxError:
        if not self.handler.kinds:
            return Inbound(env, None, d.body, d.exchange, d.routing_key)
        if env.kind not in self.handler.kinds:
            return PermanentError(
                Reason.unknown_kind,
                f"{env.kind!r} on {self.queue}, which takes {self.handler.kinds}",
            )
        try:
            message = decode_body(env.kind, env.schema, d.body)
            return Inbound(env, message, d.body, d.exchange, d.routing_key)
        except BioxError as exc:
            return exc

    def _record(
        self,
        session: Any,
        env: Envelope,
        key: str,
        effects: Effects,
        publish: list[Outgoing],
        markers: list[dict[str, Any]],
    ) -> None:
        session.add_all(effects.rows)  # new rows, or rows the handler loaded and changed
        markers.append(
            {
                "consumer": self.queue,
                "message_id": key,
                "processed_at": datetime.now(UTC),
                "outputs": pack_outgoing(effects.outgoing),
            }
        )
        publish.extend(effects.outgoing)
        self.stats[effects.outcome.split(":")[0]] += 1
        log.info(
            "handled",
            query_id=env.correlation_id,
            message_id=env.message_id,
            kind=env.kind,
            sender=env.sender,
            outcome=effects.outcome,
            attempt=env.attempt,
        )

    # --- failure routing ------------------------------------------------------------------

    def _retry(self, d: Delivery, exc: BaseException) -> None:
        env = envelope_of(d)
        attempt = env.attempt + 1
        tiers = self.settings.retry_tiers
        log.warning(
            "handler_failed",
            query_id=env.correlation_id,
            message_id=env.message_id,
            error=f"{type(exc).__name__}: {exc}",
            attempt=attempt,
            transient=isinstance(exc, TransientError),
        )
        try:
            if attempt > len(tiers):
                self._dead(d, env, exc, attempt=attempt)
            else:
                seconds = tiers[attempt - 1]
                if self.participant and self.role:
                    target = (
                        addresses.inbox(self.participant),
                        addresses.retry_key(self.participant, self.role, seconds),
                    )
                else:
                    target = ("", addresses.retry_queue(self.queue, seconds))
                self._republish(d, env, target, exc, attempt)
                self.stats["retried"] += 1
            self.link.ack(d)
        except Exception as publish_exc:
            log.warning("retry_publish_failed", error=str(publish_exc))
            self.link.nack(d, requeue=True)

    def _dead(
        self, d: Delivery, env: Envelope, exc: BaseException, attempt: int | None = None
    ) -> None:
        if self.participant and self.role:
            target = (
                addresses.inbox(self.participant),
                addresses.dead_letter_key(self.participant, self.role),
            )
        else:
            target = ("", addresses.dead_letter_queue(self.queue))
        self._republish(d, env, target, exc, attempt if attempt is not None else env.attempt)
        self.stats["dead_lettered"] += 1
        log.warning(
            "dead_lettered",
            query_id=env.correlation_id,
            message_id=env.message_id,
            route="/".join(target),
            error=str(exc),
        )

    def _republish(
        self,
        d: Delivery,
        env: Envelope,
        target: tuple[str, str],
        exc: BaseException,
        attempt: int,
    ) -> None:
        """Copy of the original (body untouched) to a retry tier or the DLQ, with the why."""
        now = datetime.now(UTC).isoformat()
        headers = dict(env.headers)
        headers.setdefault(H_ORIGINAL_EXCHANGE, d.exchange)
        headers.setdefault(H_ORIGINAL_ROUTING_KEY, d.routing_key)
        headers.setdefault(H_FIRST_FAILED_AT, now)
        if d.properties.user_id:
            headers.setdefault(H_ORIGINAL_USER, d.properties.user_id)
        permanent = bool(getattr(exc, "permanent", False))
        headers.update(
            {
                H_ATTEMPT: attempt,
                H_ERROR: str(exc)[:1000],
                H_ERROR_CLASS: type(exc).__name__,
                H_REASON: exc.reason.value if isinstance(exc, BioxError) else "handler_error",
                H_PERMANENT: permanent,
                H_WORKER: self.worker,
                H_FAILED_AT: now,
            }
        )
        props = republish_properties(d.properties, headers, self.link.user)
        self.publisher.send_raw([(*target, d.body, props)])
