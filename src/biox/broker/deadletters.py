"""Dead-letter queues for on-call staff: look, show, replay, purge, export, import.

Messages are taken with manual acks on a private channel: what is not acted on is never
acked and goes back to the queue when the channel closes, so a listing or a dry run
changes nothing, and a replay removes a message from its DLQ only after the broker has
confirmed the republished copy. Safe while workers and publishers are live: nothing but
these tools consumes a DLQ, and workers are idempotent by ``message_id``.
"""

from __future__ import annotations

import base64
import getpass
import json
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pika

from biox.broker import failures
from biox.broker.connection import parameters, user_of
from biox.broker.exports import expired, export_line
from biox.broker.link import Link
from biox.broker.publisher import Publisher, republish_properties
from biox.routes import ROUTES, routes_for
from biox.trust.tls import ClientTLS
from biox.wire import addresses, codec
from biox.wire.codec import H_ATTEMPT, H_FROM, H_ORIGINAL_USER, H_TO
from biox.wire.errors import UNPROVEN
from biox.wire.operations import OpsEvent

H_REPLAYS = "biox-replays"


@dataclass
class DeadLetter:
    """A message in a dead-letter queue, or a result no reply queue took (``held_results``)."""

    queue: str
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes
    routing_key: str = ""  # as it was published: a held result's is its reply queue

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def id(self) -> str:
        return self.properties.message_id or f"tag-{self.delivery_tag}"

    @property
    def kind(self) -> str:
        return self.properties.type or "?"

    @property
    def reason_code(self) -> str:
        """The reason code our worker wrote when it dead-lettered this ("" if none)."""
        return _text(self.headers.get("biox-reason", ""))

    @property
    def reason(self) -> str:
        h = self.headers
        if "biox-reason" in h:
            code, error = self.reason_code, _text(h.get("biox-error", ""))
            return error if error.startswith(f"{code}:") else f"{code}: {error}"
        deaths = h.get("x-death") or []
        if deaths:  # dead-lettered by the broker itself (delivery limit)
            return f"broker: {_text(deaths[0].get('reason', '?'))}"
        return "?"

    @property
    def failed_at(self) -> datetime | None:
        value = self.headers.get("biox-failed-at")
        if value:
            return datetime.fromisoformat(_text(value))
        if self.properties.timestamp:
            return datetime.fromtimestamp(self.properties.timestamp, UTC)
        return None

    @property
    def attempts(self) -> int:
        value = self.headers.get(H_ATTEMPT, 0)
        return value if isinstance(value, int) else 0

    @property
    def work_queue(self) -> str:
        """The queue this dead letter failed in: its dead-letter queue says so, whatever
        its headers (which a partner may have written) say."""
        return addresses.work_queue_of(self.queue)

    def summary(self) -> dict[str, Any]:
        failed = self.failed_at
        return {
            "id": self.id,
            "queue": self.queue,
            "kind": self.kind,
            "from": _text(self.headers.get(H_FROM, "")),
            "to": _text(self.headers.get(H_TO, "")),
            "age_s": round((datetime.now(UTC) - failed).total_seconds()) if failed else None,
            "attempts": self.attempts,
            "replays": self.headers.get(H_REPLAYS, 0),
            "reason": self.reason,
        }


@dataclass
class Filters:
    participant: str | None = None
    queue: str | None = None
    kind: str | None = None
    reason: str | None = None
    older_than_s: float | None = None
    ids: tuple[str, ...] = ()

    def match(self, d: DeadLetter) -> bool:
        if self.ids and d.id not in self.ids:
            return False
        if self.kind and d.kind != self.kind:
            return False
        if self.reason and self.reason.lower() not in d.reason.lower():
            return False
        if self.older_than_s is not None:
            failed = d.failed_at
            if failed is None or (datetime.now(UTC) - failed).total_seconds() < self.older_than_s:
                return False
        return True


def parse_age(text: str) -> float:
    """'90s', '10m', '2h', '1d' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def dlq_names(
    codes: Iterable[str], participant: str | None, queue: str | None, shards: int = 1
) -> list[str]:
    if queue:
        return [addresses.dead_letter_queue(addresses.work_queue_of(queue))]
    roles = list(routes_for(shards).queues)
    chosen = [participant] if participant else list(codes)
    return [addresses.dead_letter_queue(addresses.queue(c, r)) for c in chosen for r in roles]


class DeadLetterQueues:
    """Reads dead letters on a channel of its own (manual acks), and publishes through the
    one publisher every worker uses (confirms, retries under the same message id)."""

    def __init__(self, url: str, tls: ClientTLS | None = None, actor: str | None = None) -> None:
        self.url = url
        self.tls = tls
        #: the person the on-call actions are recorded under (``cli.common.acting``)
        self.actor = actor or operator()
        self.conn = pika.BlockingConnection(parameters(url, tls))
        self._link: Link | None = None

    @property
    def publisher(self) -> Publisher:
        if self._link is None:
            self._link = Link(self.url, name="biox-dlq", tls=self.tls).start()
        return Publisher(self._link)

    @property
    def user(self) -> str:
        return user_of(self.url, self.tls)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        if self.conn.is_open:
            self.conn.close()

    def counts(self, queues: Iterable[str]) -> dict[str, int]:
        ch = self.conn.channel()
        out = {}
        for q in queues:
            try:
                out[q] = ch.queue_declare(q, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                ch = self.conn.channel()  # queue does not exist
        if ch.is_open:
            ch.close()
        return out

    def visit(
        self,
        queues: Iterable[str],
        filters: Filters,
        action: Callable[[pika.adapters.blocking_connection.BlockingChannel, DeadLetter], bool],
    ) -> int:
        """Offer each matching dead letter to ``action``; ack it when the action says so.

        Everything else is left unacked and returns to its queue when the channel closes.
        """
        done = 0
        for q, count in self.counts(queues).items():
            if count == 0:
                continue
            ch = self.conn.channel()
            ch.confirm_delivery()
            acked = 0
            try:
                for d in self._take(ch, q, count):
                    if filters.match(d) and action(ch, d):
                        ch.basic_ack(d.delivery_tag)
                        acked += 1
            finally:
                ch.close()  # unacked messages go back to the queue
                self._until_back(q, count - acked)
            done += acked
        return done

    def _until_back(self, queue: str, ready: int, timeout: float = 5.0) -> None:
        """Wait until what was taken and not acked is ready in ``queue`` again. A quorum
        queue returns a closed channel's messages after the close is confirmed, so a look
        straight after another (the same operator's, or a script's) would otherwise count
        them as gone and report nothing held. Bounded: another tool taking messages
        meanwhile must not hold this one up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.counts([queue]).get(queue, ready) >= ready:
                return
            self.conn.sleep(0.05)

    def _take(self, ch: Any, queue: str, count: int) -> Iterator[DeadLetter]:
        for _ in range(count):
            method, props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                return
            yield DeadLetter(queue, method.delivery_tag, props, body, method.routing_key or "")

    def find(self, queues: Iterable[str], filters: Filters) -> list[DeadLetter]:
        """The matching dead letters, left where they are."""
        found: list[DeadLetter] = []

        def keep(_ch: Any, d: DeadLetter) -> bool:
            found.append(d)
            return False  # not acked: back to its queue when the channel closes

        self.visit(queues, filters, keep)
        return found

    def replay(
        self,
        queues: Iterable[str],
        filters: Filters,
        *,
        dry_run: bool = False,
        rate: float = 0.0,
        to_queue: str | None = None,
        on_each: Callable[[DeadLetter], None] | None = None,
        on_refused: Callable[[DeadLetter, str], None] | None = None,
        erased: Callable[[DeadLetter], bool] = lambda _d: False,
    ) -> int:
        """Republish to the queue it failed in (or ``to_queue``, of the same participant
        and taking its kind) by its replay key on the inbox, confirmed, same
        ``message_id``, attempt counter reset, replay counter raised; then remove.

        The destination never comes from the message's headers, and a kind goes only to
        a queue the route table gives it (``replay_target``): a crafted dead letter
        cannot be replayed into a queue that takes only one's own kinds. A dead letter
        refused because its sender was not proven (``UNPROVEN``: a forged identity, a bad
        signature, a stale one) is never replayed, by id or by ``--all``: replaying it
        cannot make it true (docs/security.md, "Identity").
        """
        last = [0.0]

        def act(ch: Any, d: DeadLetter) -> bool:
            try:
                if d.reason_code in {r.value for r in UNPROVEN}:
                    raise ValueError(f"refused as {d.reason_code}: never replayed")
                if erased(d):
                    raise ValueError("carries data its source had deleted (§22): never replayed")
                target = replay_target(d.queue, d.kind, to_queue)
            except ValueError as exc:
                if on_refused:
                    on_refused(d, str(exc))
                return False  # stays where it is
            if on_each:
                on_each(d)
            if dry_run:
                return False
            if rate > 0:
                time.sleep(max(0.0, last[0] + 1 / rate - time.monotonic()))
                last[0] = time.monotonic()
            headers = d.headers
            headers[H_ATTEMPT] = 0
            headers[H_REPLAYS] = int(headers.get(H_REPLAYS, 0)) + 1
            headers["biox-replayed-at"] = datetime.now(UTC).isoformat()
            headers["biox-replayed-by"] = self.actor
            props = republish_properties(d.properties, headers, self.user)
            code, role = addresses.work_queue(target)
            key = addresses.replay_key(code, role)
            self.publisher.send_raw([(addresses.inbox(code), key, d.body, props)])
            return True  # confirmed: send_raw raises if the broker refused or returned it

        return self.visit(queues, filters, act)

    def sweep(
        self, queues: Iterable[str], doomed: Callable[[list[DeadLetter]], set[tuple[str, str]]]
    ) -> dict[str, int]:
        """Removes the dead letters and held results ``doomed`` names by (queue, id), after
        reading them all once (``broker.sweeps``); counts by queue."""
        queues = list(queues)
        drop = doomed(self.find(queues, Filters()))
        removed: dict[str, int] = defaultdict(int)

        def remove(_ch: Any, d: DeadLetter) -> bool:
            removed[d.queue] += (d.queue, d.id) in drop
            return (d.queue, d.id) in drop

        if drop:
            self.visit(queues, Filters(), remove)
        return dict(removed)

    def purge(self, queues: Iterable[str], filters: Filters) -> int:
        return self.visit(queues, filters, lambda _ch, _d: True)

    def export(self, queues: Iterable[str], filters: Filters, out: Any, keep_days: int) -> int:
        """One JSON line per message, lossless (body base64), left in the queue; each line
        expires when its dead letter would (``keep_days`` after it failed)."""
        n = 0
        now = datetime.now(UTC)
        for d in self.find(queues, filters):
            expires = (d.failed_at or now) + timedelta(days=keep_days)
            out.write(json.dumps(export_line(d, expires)) + "\n")
            n += 1
        return n

    def import_(
        self,
        lines: Iterable[str],
        allowed: Iterable[str],
        refused: Callable[[DeadLetter], str | None] = lambda _d: None,
        now: datetime | None = None,
    ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Exported dead letters back into dead-letter queues, and nowhere else: a record
        naming any queue outside ``allowed`` (the participants' dead-letter queues) stops
        the import before anything is published. Returns the imported ids by queue.

        A file is whatever its editor wrote: the identity a replay is checked against
        (``biox-original-user-id``) becomes the importing operator's own broker user, so
        an import can never pose as an encounter system or a partner; what only an
        operator may send can be replayed from it, nothing else.

        A line past its ``expires_at`` (or without one), or one ``refused`` names (data a
        partner had deleted, §22), is left out with the reason: the second value."""
        allowed = set(allowed)
        now = now or datetime.now(UTC)
        messages, ids_by_queue = [], defaultdict(list)
        left_out: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            queue = record.get("queue")
            if queue not in allowed:
                raise ValueError(f"line {n}: {queue!r} is not a dead-letter queue of biox")
            props = pika.BasicProperties(**record["properties"])
            body = base64.b64decode(record["body"])
            why = expired(record, now) or refused(DeadLetter(queue, n, props, body))
            if why:
                left_out[f"line {n}: {props.message_id}"] = why
                continue
            props.user_id = self.user
            props.headers = {**(props.headers or {}), H_ORIGINAL_USER: self.user}
            props.headers["biox-imported-by"] = self.actor
            code, role = addresses.work_queue(addresses.work_queue_of(queue))
            spec = ROUTES.queue_named(role)
            recorded = spec is None or spec.decodes  # the audit's own dead letters are not
            target = failures.dead_letter_target(code, role, recorded)
            messages.append((*target, body, props))
            ids_by_queue[queue].append(str(props.message_id))
        if messages:
            self.publisher.send_raw(messages)
        return dict(ids_by_queue), left_out

    def record_action(
        self, participant: str, event: type[OpsEvent], ids: list[str], detail: str
    ) -> None:
        """An on-call action on the participant's inbox: its audit chains it, with the actor."""
        out = codec.to_own_inbox(
            event(ids=ids, detail=detail),
            participant=participant,
            message_id=str(uuid.uuid4()),
            correlation_id=event.KIND,
        )
        self.publisher.send([codec.with_actor(out, self.actor)])


def replay_target(dead_letter_queue: str, kind: str, to_queue: str | None = None) -> str:
    """Where a dead letter of ``kind`` from ``dead_letter_queue`` may be replayed: its own
    work queue, or ``to_queue`` when that is a queue of the same participant whose
    route-table kinds include ``kind`` (the audit queue records any)."""
    home = addresses.work_queue_of(dead_letter_queue)
    target = to_queue or home
    code, role = addresses.work_queue(target)
    queue = ROUTES.queue_named(role)
    if queue is None or code != addresses.owner(home):
        raise ValueError(f"{target!r} is not a work queue of {addresses.owner(home)!r}")
    if queue.decodes and kind not in ROUTES.kinds_of(role):
        raise ValueError(f"{target!r} does not take {kind!r}")
    return target


def operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
