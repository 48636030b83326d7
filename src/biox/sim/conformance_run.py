"""``biox conformance``, the run: every case's submissions published on one connection
as an encounter system would (plain AMQP properties), and the results collected from its
own reply queue, or found held when the case names no queue (``conformance.py`` holds the
cases and what each expects).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pika
from pika.exceptions import ChannelClosedByBroker

from biox.broker.connection import parameters
from biox.sim.conformance import Case, Outcome, Result, Submission
from biox.trust.tls import ClientTLS
from biox.wire import addresses


class Runner:
    """Publishes every case's submissions on one connection and collects the results."""

    def __init__(
        self,
        url: str,
        me: str,
        tls: ClientTLS | None = None,
        user: str | None = None,
        operator: ClientTLS | None = None,
    ) -> None:
        """``operator``: an operator's certificate to look into the held results with; on
        a participant's own broker an encounter system's login may not."""
        self.url, self.me, self.tls, self.user = url, me, tls, user
        self.operator = operator
        self.reply = f"{me}.replies.conformance.{uuid.uuid4().hex[:8]}"

    def run(
        self,
        cases: list[Case],
        timeout: float = 90.0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Outcome]:
        conn = pika.BlockingConnection(parameters(self.url, self.tls))
        try:
            ch = conn.channel()
            ch.queue_declare(self.reply, durable=True, arguments={"x-expires": 3_600_000})
            ch.queue_bind(self.reply, addresses.results(self.me), self.reply)
            ch.confirm_delivery()
            for case in cases:
                for sub in case.submissions:
                    self._publish(ch, sub)
            results = self._collect(conn, ch, cases, timeout, progress)
            outcomes = []
            for case in cases:
                got = [results.get(s.encounter_id, []) for s in case.submissions[:1]]
                checked = True
                if case.needs_operator_view:
                    wrong, checked = self._held(conn, case.submissions[0])
                    seen = f"held in {addresses.held_results_queue(self.me)}"
                else:
                    wrong = case.check(got)
                    seen = _summary(got[0])
                outcomes.append(Outcome(case, wrong is None, wrong or seen, checked))
            ch.queue_delete(self.reply)
            return outcomes
        finally:
            conn.close()

    def _publish(self, ch: Any, sub: Submission) -> None:
        ch.basic_publish(
            addresses.submissions(self.me),
            addresses.routing_key(self.me, "encounter.submit"),
            sub.body,
            pika.BasicProperties(
                message_id=sub.message_id,
                correlation_id=sub.encounter_id if sub.correlation_id == "same" else None,
                reply_to=self.reply if sub.reply_to == "own" else sub.reply_to,
                type="encounter.submit",
                content_type="application/msgpack",
                delivery_mode=2,
                user_id=self.user,
                headers={
                    "biox-schema": "encounter.submit/1",
                    "biox-from": self.me,
                    "biox-to": self.me,
                },
            ),
            mandatory=True,
        )

    def _collect(
        self,
        conn: Any,
        ch: Any,
        cases: list[Case],
        timeout: float,
        progress: Callable[[int], None] | None,
    ) -> dict[str, list[Result]]:
        wanted = {c.submissions[0].encounter_id: c for c in cases if not c.needs_operator_view}
        results: dict[str, list[Result]] = {}
        deadline = time.monotonic() + timeout
        quiet_until = 0.0
        while time.monotonic() < deadline:
            method, props, body = ch.basic_get(self.reply, auto_ack=True)
            if method is None:
                if _done(wanted, results) and time.monotonic() > quiet_until:
                    break
                conn.sleep(0.2)
                continue
            r = msgpack.unpackb(body, raw=False, timestamp=3)
            results.setdefault(props.correlation_id, []).append(r)
            quiet_until = time.monotonic() + 1.5  # a late duplicate or refusal still counts
            if progress:
                progress(sum(1 for e in wanted if _finished(results.get(e, []))))
        return results

    def _held(self, conn: Any, sub: Submission) -> tuple[str | None, bool]:
        """Whether ``sub``'s result is in the held results (what was wrong, or None), and
        whether the kit could look at all."""
        look = (
            pika.BlockingConnection(parameters(self.url, self.operator)) if self.operator else conn
        )
        try:
            return self._look(look, sub)
        finally:
            if look is not conn:
                look.close()

    def _look(self, conn: Any, sub: Submission) -> tuple[str | None, bool]:
        deadline = time.monotonic() + 30
        queue = addresses.held_results_queue(self.me)
        while time.monotonic() < deadline:
            ch = conn.channel()
            try:
                total = ch.queue_declare(queue, passive=True).method.message_count
                seen = [ch.basic_get(queue, auto_ack=False) for _ in range(total)]
                ch.close()  # unacked: back in the queue for the operator
            except ChannelClosedByBroker as exc:
                if exc.reply_code != 403 or self.operator:  # an on-call login must see it
                    return f"cannot look into {queue} ({exc.reply_text})", True
                return (
                    f"not checked: {queue} is for on-call operators to read ({exc.reply_text});"
                    " give --operator-cert and --operator-key",
                    False,
                )
            if any(m is not None and p.correlation_id == sub.encounter_id for m, p, _ in seen):
                return None, True
            conn.sleep(0.5)
        return f"not in {queue}", True


def _finished(results: list[Result]) -> bool:
    return any(r["status"] in ("complete", "refused") for r in results)


def _done(wanted: dict[str, Case], results: dict[str, list[Result]]) -> bool:
    return all(_finished(results.get(e, [])) for e in wanted)


def _summary(results: list[Result]) -> str:
    if not results:
        return "no result"
    last = max(results, key=lambda r: r.get("revision", 0))
    parts = [last["status"], last.get("reason_code", "")]
    parts += [f"{o['partner']}={o['status']}" for o in last.get("outcomes", [])]
    return " ".join(p for p in parts if p)
