"""A simulated upstream encounter system: submits encounters and collects results.

It talks to biox exactly as a real one would (``encounter.submit`` to its participant's
inbox with a ``reply_to`` queue, results correlated by encounter id) and knows, from the
synthetic population, what each answer should be, so the demo and tests can check them.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pika

from biox.broker.connection import nodes, parameters
from biox.broker.link import Delivery, Link
from biox.broker.publisher import Publisher
from biox.sim import synth
from biox.sim.plans import Planned
from biox.trust.tls import ClientTLS
from biox.wire import addresses, codec
from biox.wire.codec import Outgoing
from biox.wire.inbound import read_envelope
from biox.wire.messages import (
    EncounterResult,
    EncounterResultStatus,
    OutcomeStatus,
    PartnerOutcome,
    RetrievalNote,
)


@dataclass
class Answer:
    partner: str
    query_id: str
    status: str
    identity_ref: str | None
    latency_s: float
    reason_code: str | None
    correct: bool
    decided_by: str | None = None
    conditions: list[str] = field(default_factory=list)
    reviewed: bool = False  # the partner first said pending_review


@dataclass
class Outcome:
    planned: Planned
    refused: str | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    latency_s: float | None = None
    revision: int = -1
    final: bool = False
    in_review: set[str] = field(default_factory=set)
    retrievals: dict[str, list[RetrievalNote]] = field(default_factory=dict)
    result: EncounterResult | None = None  # the newest consolidated result
    skipped: dict[str, str] = field(default_factory=dict)  # partner -> reason, not asked

    @property
    def complete(self) -> bool:
        if self.refused is not None:
            return True
        return self.final and set(self.answers) >= set(self.planned.expected_partners)


class EncounterSystem:
    """Publishes planned encounters and gathers every result addressed to it."""

    def __init__(
        self,
        url: str,
        gallery_sizes: dict[str, int],
        publish_timeout: float = 300.0,
        tls: ClientTLS | None = None,
        reply_prefix: str = "encounters.replies.",
        results_of: list[str] | None = None,
    ) -> None:
        """``publish_timeout``: how long a submission is retried until the broker confirms
        it. Longer than a worker's: an upstream system keeps its encounters until the
        broker takes them, and a restarting broker on a busy host can take minutes to
        accept publishes to its quorum queues again."""
        self.url = url
        self.tls = tls
        self.gallery_sizes = gallery_sizes
        self.reply_queue = f"{reply_prefix}{uuid.uuid4().hex[:12]}"
        conn = pika.BlockingConnection(parameters(url, tls))
        ch = conn.channel()
        # on a cluster, a quorum queue, on every node: a classic one lives and dies with the
        # node that declared it (docs/integration.md, "Your reply queue")
        quorum = {"x-queue-type": "quorum"} if len(nodes(url)) > 1 else {}
        ch.queue_declare(
            self.reply_queue, durable=True, arguments={**quorum, "x-expires": 3_600_000}
        )
        # results come by each requester's results exchange, to the queue by its name
        for code in results_of or sorted(gallery_sizes):
            ch.queue_bind(self.reply_queue, addresses.results(code), self.reply_queue)
        conn.close()
        self.link = Link(
            url, name="encounter-system", consume=self.reply_queue, prefetch=2000, tls=tls
        )
        self.publisher = Publisher(self.link, publish_timeout)
        self.outcomes: dict[str, Outcome] = {}
        self.duplicates = 0  # a second, distinct answer for the same encounter and partner
        self.redeliveries = 0  # the same result message again (absorbed by its message_id)
        self.unexpected = 0
        self.stale = 0  # an older revision arriving after a newer one (ignored)
        # who submitted each person: a partner may have enrolled one requester's query
        # data (§21) and match it, or decline it to another requester (§15), later
        self.requesters_of: dict[int, list[str]] = {}
        self.completed = 0  # kept as results arrive: a scan per delivery is quadratic
        # every result message as it arrived, copies included, for exactly-once checks
        self.copies: list[str] = []
        self.results: dict[str, EncounterResult] = {}

    def __enter__(self) -> EncounterSystem:
        self.link.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.link.close()
        try:
            conn = pika.BlockingConnection(parameters(self.url, self.tls))
            conn.channel().queue_delete(self.reply_queue)
            conn.close()
        except Exception:  # the broker may already be gone; the queue expires on its own
            pass

    def encode(self, planned: list[Planned]) -> list[Outgoing]:
        """The messages for ``planned``, built ahead so a load test times only the sending."""
        return [
            codec.to_submissions(
                p.submit,
                participant=p.requester,
                message_id=str(uuid.uuid4()),
                correlation_id=p.encounter_id,
                reply_to=self.reply_queue,
            )
            for p in planned
        ]

    def submit(
        self,
        planned: list[Planned],
        batch: int = 50,
        rate: float = 0.0,
        encoded: list[Outgoing] | None = None,
        arrivals: Sequence[float] | None = None,
        window: int = 0,
    ) -> None:
        """Publish encounters (confirmed), in batches; paced to ``rate`` per second if set.

        ``arrivals``: instead, each encounter's own time, in seconds from the start, as
        people reach a border post (``poisson_arrivals``): an open load, in which whatever
        is due is sent at once (at most ``batch``) and nothing waits for an answer. Bursts
        of ``batch`` at ``rate`` put a whole burst into the queues at one instant, so
        latency measured that way includes the burst's own queueing. ``window``: never more
        than this many encounters without their final result (a system that holds back
        when biox falls behind); 0, no limit."""
        encoded = encoded or self.encode(planned)
        started = time.monotonic()
        start = 0
        while start < len(planned):
            end = min(start + batch, len(planned))
            if arrivals is not None:
                time.sleep(max(0.0, started + arrivals[start] - time.monotonic()))
                due = time.monotonic() - started
                end = start + 1
                while end < min(start + batch, len(planned)) and arrivals[end] <= due:
                    end += 1
            elif rate > 0:
                time.sleep(max(0.0, started + start / rate - time.monotonic()))
            if window:
                while len(self.outcomes) - self.completed >= window:
                    time.sleep(0.001)  # ``collect``, on another thread, counts the completed
                end = min(end, start + window - (len(self.outcomes) - self.completed))
            now = time.monotonic()
            for i, p in enumerate(planned[start:end], start):
                self.outcomes[p.encounter_id] = Outcome(p)
                self.requesters_of.setdefault(p.person, []).append(p.requester)
                # from the person's arrival, not from when the sender got to it: a sender
                # that fell behind must not hide the wait (coordinated omission)
                p.submitted_at = now if arrivals is None else started + arrivals[i]
            self.publisher.send(encoded[start:end])
            start = end

    def collect(
        self,
        timeout: float = 120.0,
        idle_timeout: float = 60.0,
        on_progress: Callable[[int, int], None] | None = None,
        expect: int = 0,
        until: Callable[[], object] | None = None,
    ) -> bool:
        """Take results until every encounter is complete (or ``until()`` holds), or
        nothing arrives for a while; returns whether the goal was reached.

        ``expect``: how many encounters will have been submitted in all, when another
        thread is still submitting. ``until``: another goal, for updates that follow the
        final answers (a retrieval, say).
        """
        deadline = time.monotonic() + timeout
        last_seen = time.monotonic()

        def done() -> bool:
            if until is not None:
                return bool(until())
            return len(self.outcomes) >= expect and self.completed >= len(self.outcomes)

        while time.monotonic() < deadline and time.monotonic() - last_seen < idle_timeout:
            if done():
                return True
            try:
                delivery = self.link.deliveries.get(timeout=0.2)
            except Exception:
                continue
            last_seen = time.monotonic()
            self._take(delivery)
            self.link.ack(delivery)
            if on_progress:
                on_progress(self.completed, max(expect, len(self.outcomes)))
        return done()

    def _take(self, delivery: Delivery) -> None:
        env = read_envelope(delivery.properties)
        self.copies.append(env.message_id)
        if env.message_id in self.results:
            self.redeliveries += 1
            return
        result = codec.decode_body(EncounterResult, env.schema, delivery.body)
        self.results[env.message_id] = result
        outcome = self.outcomes.get(result.encounter_id)
        if outcome is None:
            self.unexpected += 1
            return
        was_complete = outcome.complete
        self._record(outcome, result)
        self.completed += int(outcome.complete) - int(was_complete)

    def _record(self, outcome: Outcome, result: EncounterResult) -> None:
        """Results are whole snapshots: keep the newest, note each partner's first final
        answer, and count a final answer that later changed as a duplicate."""
        elapsed = time.monotonic() - outcome.planned.submitted_at
        if result.status is EncounterResultStatus.refused:
            outcome.refused = result.reason_code.value if result.reason_code else "refused"
            outcome.latency_s = elapsed
            return
        if result.revision <= outcome.revision:
            self.stale += 1
            return
        outcome.revision = result.revision
        outcome.result = result
        outcome.final = result.status is EncounterResultStatus.complete
        asked = [o for o in result.outcomes if o.status is not OutcomeStatus.skipped]
        outcome.skipped = {
            o.partner: o.reason_code.value if o.reason_code else "skipped"
            for o in result.outcomes
            if o.status is OutcomeStatus.skipped
        }
        outcome.planned.expected_partners = sorted(  # a partner skipped answers nothing
            (set(outcome.planned.expected_partners) | {o.partner for o in asked})
            - set(outcome.skipped)
        )
        for o in asked:
            outcome.retrievals[o.partner] = list(o.retrievals)
            if o.status is OutcomeStatus.pending_review:
                outcome.in_review.add(o.partner)
            if o.status in (
                OutcomeStatus.pending,
                OutcomeStatus.pending_review,
                OutcomeStatus.timed_out,  # not an answer: a later result may carry one
            ):
                continue
            known = outcome.answers.get(o.partner)
            if known is not None:
                if known.status != o.status.value:
                    self.duplicates += 1
                continue
            outcome.answers[o.partner] = self._answer(outcome, o, elapsed)

    def _answer(self, outcome: Outcome, o: PartnerOutcome, elapsed: float) -> Answer:
        person = outcome.planned.person
        top = o.candidates[0].identity_ref if o.candidates else None
        mated = synth.in_gallery(o.partner, self.gallery_sizes[o.partner], person)
        want = synth.identity_ref(o.partner, person) if mated else None
        status = o.status.value
        if status == "match":
            correct = top == want or self._enrolled_same_person(o, outcome.planned)
        elif status == "no_match":
            # a decline about the record found goes as a no-match where the provider
            # conceals such declines (its policy's default): a sealed record, or query
            # data another participant sent (docs/lifecycle.md, §6a)
            onward = len(set(self.requesters_of.get(person, ()))) > 1
            correct = (
                not mated or outcome.planned.scenario == "poor" or synth.sealed(person) or onward
            )
        elif status == "declined":
            onward = len(set(self.requesters_of.get(person, ()))) > 1  # enrolled from another
            correct = (mated and synth.sealed(person)) or (
                onward
                and o.reason_code is not None
                and o.reason_code.value == "record_not_releasable"
            )
        else:
            correct = True  # rejected: not a matching question
        return Answer(
            o.partner,
            o.query_id or "",
            status,
            top,
            elapsed,
            o.reason_code.value if o.reason_code else None,
            correct,
            o.decided_by.value if o.decided_by else None,
            list(o.conditions),
            o.partner in outcome.in_review,
        )

    def _enrolled_same_person(self, o: PartnerOutcome, planned: Planned) -> bool:
        """A match on query data the partner enrolled from an earlier encounter (§21) is
        right when that encounter was of the same person: same name and date of birth,
        or, when the partner released no biographic data, the person was submitted twice."""
        top = o.candidates[0]
        if synth.number_of(o.partner, top.identity_ref) is not None:
            return False  # another person of the partner's gallery
        bio = top.record.biographic if top.record else None
        if bio is None:
            return len(self.requesters_of.get(planned.person, ())) > 1
        mine = planned.submit.biographic
        return (bio.family_name, bio.given_names, bio.date_of_birth) == (
            mine.family_name,
            mine.given_names,
            mine.date_of_birth,
        )


@dataclass
class PairStats:
    queries: int = 0
    match: int = 0
    no_match: int = 0
    declined: int = 0
    rejected: int = 0
    reviewed: int = 0  # answered by an examiner after pending_review (§8)
    wrong: int = 0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else None


def summarise(
    outcomes: Iterable[Outcome],
) -> tuple[dict[tuple[str, str], PairStats], dict[str, dict[str, int]], int]:
    """Per (requester, provider) pair statistics, refusals per requester, and missing answers."""
    pairs: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
    refused: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    missing = 0
    for o in outcomes:
        if o.refused is not None:
            refused[o.planned.requester][o.refused] += 1
            continue
        for partner in o.planned.expected_partners:
            stats = pairs[(o.planned.requester, partner)]
            stats.queries += 1
            answer = o.answers.get(partner)
            if answer is None:
                missing += 1
                continue
            setattr(stats, answer.status, getattr(stats, answer.status) + 1)
            stats.wrong += 0 if answer.correct else 1
            stats.reviewed += int(answer.reviewed)
            if not answer.reviewed:  # a person took its time: not a latency of the system
                stats.latencies.append(answer.latency_s)
    return dict(pairs), {k: dict(v) for k, v in refused.items()}, missing


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> np.ndarray:
    """Times of ``n`` independent arrivals at ``rate`` per second on average (exponential
    gaps), from 0: the offered load of a latency measurement (``EncounterSystem.submit``)."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    times: np.ndarray = np.cumsum(gaps) - gaps[0]
    return times
