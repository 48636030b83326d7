"""query → checks → gallery search → fused decision → response (DESIGN §5.3-5.4, §6-9).

Every query of a consume batch is searched in one gallery call, so FAISS reads the
gallery once per batch instead of once per query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlmodel import Session, select

from biox import codec
from biox.codec import Envelope
from biox.errors import REASON_TEXT, BioxError, PermanentError, Reason
from biox.gallery.fusion import Decision, decide
from biox.gallery.gallery import Gallery, Hit, Probe
from biox.handlers.base import Effects, Inbound, Result
from biox.messages import (
    Biographic,
    Candidate,
    EncounterRecord,
    Query,
    ReleasedRecord,
    Response,
    ResponseStatus,
    Timings,
    utcnow,
)
from biox.policy.eligibility import provider_refusal
from biox.registry import Registry
from biox.settings import Settings
from biox.store import Record, Transaction

INCONCLUSIVE = (
    "inconclusive: best candidate between the review and match thresholds; "
    "no automatic match is reported"
)


class MatcherHandler:
    kinds = (Query.KIND,)

    def __init__(
        self, participant: str, registry: Registry, gallery: Gallery, settings: Settings
    ) -> None:
        self.me = participant
        self.registry = registry
        self.gallery = gallery
        self.settings = settings

    def handle(self, batch: Sequence[Inbound], session: Session) -> list[Result]:
        received = utcnow()
        results: list[Result | None] = [None] * len(batch)
        probes: list[Probe] = []
        searchable: list[int] = []
        for i, inb in enumerate(batch):
            try:
                probes.append(self._check(inb))
                searchable.append(i)
            except PermanentError as exc:
                results[i] = exc
        started = time.perf_counter()
        hits = (
            self.gallery.search(
                probes, k=self.settings.candidates, top=self.settings.max_candidates_released
            )
            if probes
            else []
        )
        search_ms = (time.perf_counter() - started) * 1000 / max(len(probes), 1)
        high = self.settings.threshold_high
        matched = {h.record_id for hs in hits for h in hs if h.fused >= high}
        records = self._records(session, matched)
        for i, found in zip(searchable, hits, strict=True):
            results[i] = self._answer(batch[i], found, records, received, search_ms)
        return [r for r in results if r is not None]

    def _check(self, inb: Inbound) -> Probe:
        q = inb.message
        assert isinstance(q, Query)
        if self.registry.get(inb.envelope.sender) is None:
            raise PermanentError(Reason.unknown_participant, f"sender {inb.envelope.sender!r}")
        if q.providing != self.me:
            raise PermanentError(Reason.misaddressed, f"query is for {q.providing!r}")
        if q.requesting != inb.envelope.sender:
            raise PermanentError(
                Reason.misaddressed,
                f"body says requester {q.requesting!r}, envelope {inb.envelope.sender!r}",
            )
        why = provider_refusal(self.registry, self.me, q.requesting, q.purpose)
        if why is not None:
            raise PermanentError(why, f"requester {q.requesting}, purpose {q.purpose.value}")
        if q.biometrics.is_empty():
            raise PermanentError(Reason.no_biometrics)
        return Probe.from_biometrics(q.biometrics)

    def _records(self, session: Session, ids: set[int]) -> dict[int, Record]:
        if not ids:
            return {}
        rows = session.exec(select(Record).where(Record.id.in_(ids)))  # type: ignore[union-attr]
        return {r.id: r for r in rows}

    def _answer(
        self,
        inb: Inbound,
        hits: list[Hit],
        records: dict[int, Record],
        received: object,
        search_ms: float,
    ) -> Effects:
        q = inb.message
        assert isinstance(q, Query)
        high, low = self.settings.threshold_high, self.settings.threshold_low
        best = hits[0].fused if hits else 0.0
        decision = decide(best, high, low)
        candidates = []
        if decision is Decision.match:
            for hit in hits:
                record = records.get(hit.record_id)
                if hit.fused >= high and record is not None:
                    candidates.append(
                        Candidate(
                            identity_ref=record.identity_ref,
                            fused_score=hit.fused,
                            scores=hit.scores,
                            record=_released(record),
                        )
                    )
        status = ResponseStatus.match if candidates else ResponseStatus.no_match
        now = utcnow()
        response = Response(
            query_id=q.query_id,
            requesting=q.requesting,
            providing=self.me,
            status=status,
            candidates=candidates,
            reason=INCONCLUSIVE if decision is Decision.review else None,
            timings=Timings(received_at=received, answered_at=now, search_ms=round(search_ms, 3)),
        )
        row = Transaction(
            query_id=q.query_id,
            role="provider",
            encounter_id=q.references.encounter_id,
            requesting=q.requesting,
            providing=self.me,
            purpose=q.purpose.value,
            created_at=q.created_at,
            sent_at=q.sent_at,
            received_at=response.timings.received_at,
            answered_at=now,
            status=status.value if decision is not Decision.review else "inconclusive",
            top_score=best,
        )
        return Effects(
            rows=[row], outgoing=[self._send(inb.envelope, response)], outcome=status.value
        )

    def _send(self, env: Envelope, response: Response) -> codec.Outgoing:
        return codec.to_partner(
            response,
            sender=self.me,
            recipient=response.requesting,
            message_id=codec.derived_id(env.message_id, "response"),
            correlation_id=response.query_id,
        )

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """A ``rejected`` response goes back when we know who asked and about which query."""
        if self.registry.get(envelope.sender) is None or envelope.sender == self.me:
            return None
        if not envelope.correlation_id:
            return None
        now = utcnow()
        response = Response(
            query_id=envelope.correlation_id,
            requesting=envelope.sender,
            providing=self.me,
            status=ResponseStatus.rejected,
            reason_code=error.reason,
            reason=error.detail or REASON_TEXT[error.reason],
            timings=Timings(received_at=now, answered_at=now),
        )
        return Effects(
            outgoing=[self._send(envelope, response)], outcome=f"rejected:{error.reason}"
        )


def _released(record: Record) -> ReleasedRecord:
    """The §7 elements of a record. Issue #4 narrows this by release policy and purpose."""
    return ReleasedRecord(
        identity_ref=record.identity_ref,
        person_centric_id=record.person_centric_id,
        biographic=Biographic.model_validate(record.biographic) if record.biographic else None,
        encounters=[EncounterRecord.model_validate(e) for e in record.encounters],
        derogatory=list(record.derogatory),
    )
