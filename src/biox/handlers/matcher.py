"""query → checks → gallery search → fused decision → response (§5-9).

Every query of a consume batch is searched in one gallery call, so FAISS reads the
gallery once per batch instead of once per query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlmodel import Session, col, select

from biox.agreement import participants
from biox.agreement.erasures import Erased
from biox.database import session_for
from biox.gallery import gather, snapshot
from biox.gallery.calibration import Calibrated
from biox.gallery.fusion import Decision, decide
from biox.gallery.gallery import Gallery, Hit, Probe
from biox.gallery.shards import Shard
from biox.handlers.base import Context, Effects, Handler, Result
from biox.metrics import Metrics
from biox.policy.eligibility import lacking, provider_refusal
from biox.policy.release import ParticipantPolicy
from biox.queries.answers import Answers, Asked, Found
from biox.queries.enrolment import enrolment
from biox.queries.repeats import Seen
from biox.registry import Registry
from biox.settings import Settings
from biox.store import Record, Transaction, fresh
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, BioxError, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    Biometrics,
    DecidedBy,
    Query,
    ReviewCandidate,
    ReviewCase,
    utcnow,
)
from biox.wire.shards import ShardHits

log = structlog.get_logger("biox.matcher")


class MatcherHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> MatcherHandler:
        """Loads the participant's gallery snapshot; enrolments since come from the
        database (``catch_up``)."""
        if ctx.settings.shards > 1:  # the shard workers hold the gallery; this one gathers
            return cls(ctx.participant, ctx.registry, Gallery(), ctx.settings, ctx.policy)
        gallery, mark = load(ctx.participant, ctx.settings, Shard())
        return cls(ctx.participant, ctx.registry, gallery, ctx.settings, ctx.policy, mark)

    def __init__(
        self,
        participant: str,
        registry: Registry,
        gallery: Gallery,
        settings: Settings,
        policy: ParticipantPolicy,
        mark: snapshot.Mark = snapshot.Mark(),
    ) -> None:
        self.me = participant
        self.registry = registry
        self.gallery = gallery
        self.settings = settings
        self.policy = policy
        self.answers = Answers(participant, policy)
        self._live = participants.Live(settings.registry_refresh_s)
        self.follower = snapshot.Follower(gallery, mark, settings.gallery_sync_s)
        self.metrics: Metrics | None = None  # the worker's, when it runs under one
        self.calibration = Calibrated(
            settings.calibration_file(participant),
            (settings.threshold_high, settings.threshold_low),
        )
        self.high, self.low = self.calibration.fallback

    def observe(self, metrics: Metrics, database_url: str) -> None:
        """Search time and gallery size join the worker's metrics."""
        self.metrics = metrics

    def search(self, batch: Sequence[Inbound[Query]], session: Session) -> list[Result]:
        if self.settings.shards == 1:  # else the shards search, and the gather decides
            self.catch_up(session)
            self.high, self.low = self.calibration.apply(self.gallery)
        registry = self._live.now(self.registry, session)  # statuses as notices left them
        received = utcnow()
        results: list[Result | None] = [None] * len(batch)
        probes: list[Probe] = []
        searchable: list[int] = []
        ids = [inb.message.query_id for inb in batch]
        seen = Seen.of(session, ids, scattered=self.settings.shards > 1)
        for i, inb in enumerate(batch):
            try:
                seen.check(inb)
                declined = self._check(inb, registry)
                bio = inb.message.biometrics
                probe = Probe.from_biometrics(bio) if declined is None else None
            except PermanentError as exc:
                results[i] = exc
                continue
            seen.met(inb)
            if declined is not None:
                results[i] = self._declined(inb, declined, received)
            elif probe is not None:
                probes.append(probe)
                searchable.append(i)
        if self.settings.shards > 1:  # the templates are sound: every shard searches them
            for i in searchable:
                row, out = gather.scatter(batch[i], received, self.settings.shards, self.me)
                results[i] = Effects(rows=[row], outgoing=[out], outcome="scattered")
            return [r for r in results if r is not None]
        started = time.perf_counter()
        hits = (
            self.gallery.search(
                probes, k=self.settings.candidates, top=self.settings.max_candidates_released
            )
            if probes
            else []
        )
        took = time.perf_counter() - started
        search_ms = took * 1000 / max(len(probes), 1)
        if self.metrics is not None and probes:
            self.metrics.searched(took, self.gallery.size)
        low = self.low
        records = self._records(session, {h.record_id for hs in hits for h in hs if h.fused >= low})
        erased = self._erased(session, [batch[i] for i in searchable])
        size = self.gallery.size
        for i, found in zip(searchable, hits, strict=True):
            results[i] = self._answer(batch[i], found, records, received, search_ms, size, erased)
        return [r for r in results if r is not None]

    def gather(self, batch: Sequence[Inbound[ShardHits]], session: Session) -> list[Result]:
        """The shards' candidates for each scattered query; the last shard's in makes the
        answer, as ``search`` makes it from one gallery (docs/architecture.md, "Shards")."""
        gathered = gather.gather(session, batch, self.settings.max_candidates_released, self.me)
        done = [g for g in gathered if isinstance(g, gather.Gathered)]
        if not done:
            return [Effects(outcome=f"gathered:{g}") for g in gathered]
        results: list[Result] = []
        calibration = self.calibration.now()  # one look at the file for the batch
        low = min(self.calibration.thresholds_at(g.gallery_size, calibration)[1] for g in done)
        ids = {h.record_id for g in done for h in g.hits if h.fused >= low}
        records = self._records(session, ids)
        erased = self._erased(session, [g.query for g in done])
        answered = Seen.of(session, [g.query.message.query_id for g in done])
        for g in gathered:
            if not isinstance(g, gather.Gathered):
                results.append(Effects(outcome=f"gathered:{g}"))
                continue
            try:  # another matcher answered a copy scattered at the same time
                answered.check(g.query)
            except PermanentError as exc:
                results.append(exc)
                continue
            answered.met(g.query)
            self.high, self.low = self.calibration.thresholds_at(g.gallery_size, calibration)
            results.append(
                self._answer(
                    g.query, g.hits, records, g.received, g.search_ms, g.gallery_size, erased
                )
            )
        return results

    def _check(self, inb: Inbound[Query], registry: Registry) -> Reason | None:
        """Raises for a query that cannot be processed (``rejected``); returns the reason
        to decline one that can be but will not be answered (§9, §34-36). The sender is a
        partner of the registry (checked by the consume loop against the route table)."""
        q = inb.message
        if q.providing != self.me:
            raise PermanentError(Reason.misaddressed, f"query is for {q.providing!r}")
        if q.requesting != inb.envelope.sender:
            raise PermanentError(
                Reason.misaddressed,
                f"body says requester {q.requesting!r}, envelope {inb.envelope.sender!r}",
            )
        if q.biometrics.is_empty():
            raise PermanentError(Reason.no_biometrics)
        missing = lacking(registry, self.me, q.requesting, q.biometrics)
        if missing:  # §5a: a query the agreement says must carry it
            raise PermanentError(Reason.biometrics_required, f"no {missing}")
        why = provider_refusal(
            registry, self.me, q.requesting, q.purpose, q.subject_status, q.encounter
        )
        if why is None:
            release = self.policy.release_for(q.requesting, q.purpose)
            why = release if isinstance(release, Reason) else None
        return why

    def _records(self, session: Session, ids: set[int]) -> dict[int, Record]:
        if not ids:
            return {}
        rows = session.exec(
            select(Record).where(col(Record.id).in_(ids), col(Record.blocked_at).is_(None))
        )
        return {r.id: r for r in rows}  # a blocked record (§23) is as if not found

    def _erased(self, session: Session, batch: Sequence[Inbound[Query]]) -> Erased:
        """Queries of this batch whose data their requester had deleted already (a copy
        replayed after the deletion notice): answered, but never enrolled (§22). Read only
        when this participant enrols query data at all."""
        if not self.policy.enrol:
            return Erased(frozenset())
        return Erased.of_messages(
            session,
            ((i.message.requesting, i.message.query_id, i.envelope.message_id) for i in batch),
        )

    @staticmethod
    def _asked(inb: Inbound[Query], received: datetime) -> Asked:
        q = inb.message
        return Asked(q.query_id, q.requesting, q.purpose, received, inb.envelope.message_id)

    def _declined(self, inb: Inbound[Query], reason: Reason, received: datetime) -> Effects:
        asked = self._asked(inb, received)
        response = self.answers.declined(
            asked,
            reason,
            f"{REASON_TEXT[reason]}: requester {asked.requesting}, purpose {asked.purpose.value}",
        )
        answered = self.answers.conclude(asked, response, self._transaction(inb, received, None))
        return Effects(
            rows=[answered.transaction],
            outgoing=answered.outgoing,
            outcome=f"declined:{reason.value}",
        )

    def _answer(
        self,
        inb: Inbound[Query],
        hits: list[Hit],
        records: dict[int, Record],
        received: datetime,
        search_ms: float,
        size: int,
        erased: Erased | None = None,
    ) -> Effects:
        asked = self._asked(inb, received)
        best = hits[0].fused if hits else 0.0
        decision = decide(best, self.high, self.low)
        found = [
            Found(
                records[h.record_id],
                h.fused,
                h.scores,
                self.calibration.evidence(h, size),
            )
            for h in hits
            if h.fused >= self.high and h.record_id in records
        ]
        case: list[codec.Outgoing] = []
        if found:  # a candidate at or above the match threshold: the decision is match
            response = self.answers.matched(asked, found, DecidedBy.automatic, search_ms)
        elif decision is Decision.review and hits[0].record_id in records:
            response = self.answers.pending_review(asked, search_ms)
            case = [self._case(inb, hits, records, received, size)]
        else:
            response = self.answers.no_match(asked, search_ms=search_ms)
        best_record = found[0].record if found else None
        answered = self.answers.conclude(
            asked, response, self._transaction(inb, received, best), best_record
        )
        effects = Effects(
            rows=[answered.transaction],
            outgoing=[*answered.outgoing, *case],
            outcome=response.status.value,
        )
        if erased is not None and erased.any(
            inb.message.requesting, inb.message.query_id, inb.envelope.message_id
        ):
            effects.outcome += ":erased"
        else:
            self._enrol(inb, effects)
        return effects

    def _case(
        self,
        inb: Inbound[Query],
        hits: list[Hit],
        records: dict[int, Record],
        received: datetime,
        size: int,
    ) -> codec.Outgoing:
        """A gray-zone query becomes a case for this participant's examiners (§8)."""
        q = inb.message
        low = self.low
        case = ReviewCase(
            case_id=q.query_id,
            query_id=q.query_id,
            requesting=q.requesting,
            purpose=q.purpose,
            probe_biographic=q.biographic,
            probe_modalities=_modalities(q.biometrics),
            encounter=q.encounter,
            candidates=[
                ReviewCandidate(
                    identity_ref=records[h.record_id].identity_ref,
                    fused_score=h.fused,
                    scores=h.scores,
                    evidence=self.calibration.evidence(h, size),
                )
                for h in hits
                if h.fused >= low and h.record_id in records
            ],
            opened_at=received,
        )
        return codec.to_own_inbox(
            case,
            participant=self.me,
            message_id=codec.derived_id(inb.envelope.message_id, "review.case"),
            correlation_id=q.query_id,
        )

    def _transaction(
        self, inb: Inbound[Query], received: datetime, best: float | None
    ) -> Transaction:
        """The provider's row of this query; ``Answers.conclude`` settles it."""
        q = inb.message
        return fresh(
            Transaction,
            query_id=q.query_id,
            role="provider",
            encounter_id=q.references.encounter_id,
            requesting=q.requesting,
            providing=self.me,
            purpose=q.purpose.value,
            created_at=q.created_at,
            sent_at=q.sent_at,
            received_at=received,
            top_score=best,
            source=q.requesting,
            source_message_id=inb.envelope.message_id,
            retain_until=self.policy.received_until(received),
        )

    # --- enrolment of query data (§21) -------------------------------------------------------

    def _enrol(self, inb: Inbound[Query], effects: Effects) -> None:
        """Keep the query's data in the gallery when this participant's policy says so for
        the requester and purpose, stamped with where it came from and until when."""
        q = inb.message
        if not self.policy.enrols(q.requesting, q.purpose):
            return
        now = utcnow()
        effects.rows.extend(
            enrolment(
                participant=self.me,
                key=q.query_id,
                biometrics=q.biometrics,
                biographic=q.biographic,
                encounter=q.encounter,
                person_centric_id=q.references.person_centric_id,
                source=q.requesting,
                source_query_id=q.query_id,
                source_message_id=inb.envelope.message_id,
                received_at=now,
                retain_until=self.policy.enrolled_until(now),
            )
        )
        effects.outcome += ":enrolled"

    def catch_up(self, session: Session) -> int:
        """The query data enrolled and the records deleted since this matcher looked."""
        return self.follower.catch_up(session)

    # --- rejection ----------------------------------------------------------------------------

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """A ``rejected`` response goes back when we know who asked and about which query."""
        if self.registry.get(envelope.sender) is None or envelope.sender == self.me:
            return None  # nobody to tell: a dead letter with the reason
        if error.reason is Reason.duplicate_query:
            return None  # the first copy's answer stands; a second answer could overturn it
        if not envelope.correlation_id:
            return None
        response = self.answers.rejected(envelope, error)
        return Effects(
            outgoing=[self.answers.send(response, envelope.message_id)],
            outcome=f"rejected:{error.reason}",
        )


def _modalities(bio: Biometrics) -> list[str]:
    out: list[str] = []
    if bio.face is not None:
        out.append("face")
    out += [f"finger.{f.position}" for f in bio.fingerprints]
    out += [f"iris.{i.eye}" for i in bio.irises]
    return out


def load(participant: str, settings: Settings, shard: Shard) -> tuple[Gallery, snapshot.Mark]:
    """The snapshot a worker searching ``shard`` of the gallery starts from, and its mark;
    FAISS's threads set for the searches to come (``BIOX_SEARCH_THREADS``). Without one it
    starts empty only where the database holds every template it would miss."""
    if settings.search_threads:
        import faiss

        faiss.omp_set_num_threads(settings.search_threads)
    directory = shard.directory(settings.gallery_dir(participant))
    if Gallery.exists(directory):
        gallery = Gallery.load(directory, settings.ivf_nprobe)
    else:
        with session_for(settings.database_for(participant)) as session:
            alone = snapshot.templates_only_there(session, participant, shard)
        if alone:
            log.error("gallery_snapshot_missing", directory=str(directory), identities=alone)
            raise SystemExit(snapshot.missing(participant, settings, shard, alone))
        log.warning("empty_gallery", participant=participant, directory=str(directory))
        gallery = Gallery()
    return gallery, snapshot.mark_of(directory)
