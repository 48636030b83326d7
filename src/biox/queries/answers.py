"""How a providing participant words its answer to a query (§6-9), in one place.

The matcher answers automatically; the review worker answers after an examiner decided
(§8). Both go through here, so a match released by a person carries exactly the elements
and conditions an automatic one would, and the automatic retrieval rule (§10) fires the
same way after either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from biox.policy.eligibility import national_of
from biox.policy.release import ParticipantPolicy, released_record
from biox.registry import Purpose
from biox.store import Record, Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, BioxError, Reason
from biox.wire.messages import (
    Candidate,
    DecidedBy,
    Evidence,
    Response,
    ResponseStatus,
    RetrievalAsk,
    Timings,
    utcnow,
)

#: declines that can only follow a search that found someone: they say a record exists
RECORD_DECLINES = frozenset({Reason.excluded_citizen, Reason.record_not_releasable})


@dataclass(frozen=True)
class Asked:
    """What the provider knows of the query it is answering."""

    query_id: str
    requesting: str
    purpose: Purpose
    received_at: datetime
    message_id: str  # of the message that causes this answer: output ids derive from it


def may_release(record: Record, me: str, requester: str) -> bool:
    """Data a participant received from another goes only back to its source: passing it
    to a third participant is onward disclosure, which needs the source's consent (§15).
    Data its source blocked (§23) goes nowhere."""
    return record.releasable and record.blocked_at is None and record.source in (me, requester)


def _national(record: Record, *codes: str) -> str | None:
    return national_of((record.biographic or {}).get("claimed_nationality"), *codes)


@dataclass(frozen=True)
class Found:
    """A record the search scored at or above the match threshold, or the candidate an
    examiner chose, with the scores the answer reports: the domain's view of a hit, with
    nothing of the index that found it."""

    record: Record
    fused: float
    scores: dict[str, float]
    evidence: Evidence | None = None


@dataclass(frozen=True)
class Answered:
    """An answer as it leaves: the messages that carry it (to the requester first, then
    the automatic retrieval ask), and the provider's transaction row, settled."""

    outgoing: list[codec.Outgoing]
    transaction: Transaction | None


class Answers:
    def __init__(self, me: str, policy: ParticipantPolicy) -> None:
        self.me = me
        self.policy = policy

    def matched(
        self,
        q: Asked,
        found: list[Found],
        decided_by: DecidedBy,
        search_ms: float = 0.0,
    ) -> Response:
        """A match on ``found`` (best first), under the release policy: the releasable
        elements with their conditions, or a decline with the reason (§9)."""
        release = self.policy.release_for(q.requesting, q.purpose)
        if isinstance(release, Reason):
            return self.declined(q, release, decided_by=decided_by)
        best = found[0].record
        if not may_release(best, self.me, q.requesting):
            return self.declined(
                q, Reason.record_not_releasable, decided_by=decided_by, search_ms=search_ms
            )
        national = _national(best, self.me, q.requesting)
        if national:  # §6a: only a third country national, compared by country code
            return self.declined(
                q,
                Reason.excluded_citizen,
                f"the matched record is a national of {national} (§1(ii), §6a)",
                decided_by,
                search_ms,
            )
        candidates = [
            Candidate(
                identity_ref=f.record.identity_ref,
                fused_score=f.fused,
                scores=f.scores,
                evidence=f.evidence,
                record=released_record(
                    f.record.identity_ref,
                    f.record.person_centric_id,
                    f.record.biographic,
                    f.record.encounters,
                    f.record.derogatory,
                    release,
                ),
            )
            for f in found
            # §6a holds for every candidate, not only the best: a national of either
            # participant is never released, whatever place the search gave it
            if may_release(f.record, self.me, q.requesting)
            and not _national(f.record, self.me, q.requesting)
        ][: release.max_records]  # §19(i): as many records as the rule allows, best first
        return self._response(
            q,
            ResponseStatus.match,
            decided_by,
            search_ms,
            candidates=candidates,
            conditions=release.conditions,
            withheld=release.withheld,
        )

    def no_match(
        self, q: Asked, decided_by: DecidedBy = DecidedBy.automatic, search_ms: float = 0.0
    ) -> Response:
        return self._response(q, ResponseStatus.no_match, decided_by, search_ms)

    def pending_review(self, q: Asked, search_ms: float) -> Response:
        return self._response(
            q,
            ResponseStatus.pending_review,
            DecidedBy.examiner,
            search_ms,
            reason="a candidate scored between the thresholds: an examiner decides (§8)",
        )

    def declined(
        self,
        q: Asked,
        reason: Reason,
        detail: str = "",
        decided_by: DecidedBy = DecidedBy.automatic,
        search_ms: float = 0.0,
    ) -> Response:
        """A decline; ``search_ms`` is 0 unless the decline came after a search (a record
        that may not be released)."""
        return self._response(
            q,
            ResponseStatus.declined,
            decided_by,
            search_ms,
            reason_code=reason,
            reason=detail or REASON_TEXT[reason],
        )

    def rejected(self, envelope: Envelope, error: BioxError) -> Response:
        """A query that could not be read, answered ``rejected`` with the reason: its
        requester and query id are the envelope's (the body is what failed)."""
        now = utcnow()
        return Response(
            query_id=envelope.correlation_id or "",
            requesting=envelope.sender,
            providing=self.me,
            status=ResponseStatus.rejected,
            reason_code=error.reason,
            reason=error.detail or REASON_TEXT[error.reason],
            timings=Timings(received_at=now, answered_at=now),
        )

    def conclude(
        self,
        q: Asked,
        response: Response,
        tx: Transaction | None,
        best: Record | None = None,
    ) -> Answered:
        """The one way an answer leaves: sent to the requester, followed by the automatic
        retrieval ask after a released match on ``best`` (§10), and settled on the
        provider's transaction (§27 reads it). A decline that would tell the requester a
        record exists goes as the no-match it is worded as (``worded``); the provider's
        own row keeps the truth."""
        sent = self.worded(response, best)
        outgoing = [self.send(sent, q.message_id), *self.follow_up(q, sent, best)]
        if tx is None:
            return Answered(outgoing, None)
        settled = self.settle(tx, response)
        if sent is not response:  # the row keeps what was sent, and why it was not that
            settled.answer = sent.model_dump(mode="json", exclude={"requesting"})
        return Answered(outgoing, settled)

    def worded(self, response: Response, found: Record | None) -> Response:
        """The answer as the requester may see it. A decline because of the record found
        (its subject a national of either party, §6a; a record not releasable, §9; one
        its source blocked, §23) says that a record exists: where the policy conceals
        such declines (``conceal_record_declines``, the default), it goes as a no-match
        with the same decider and timings, indistinguishable from one. Only a decline
        about a record ``found`` is worded so: one before any search (the requester's own
        data says its subject is a citizen, §4a) reveals nothing and says why."""
        if (
            found is None
            or response.status is not ResponseStatus.declined
            or response.reason_code not in RECORD_DECLINES
            or not self.policy.conceal_record_declines
        ):
            return response
        return response.model_copy(
            update={"status": ResponseStatus.no_match, "reason_code": None, "reason": None}
        )

    def _response(
        self,
        q: Asked,
        status: ResponseStatus,
        decided_by: DecidedBy,
        search_ms: float,
        **fields: object,
    ) -> Response:
        return Response(
            query_id=q.query_id,
            requesting=q.requesting,
            providing=self.me,
            status=status,
            decided_by=decided_by,
            timings=Timings(
                received_at=q.received_at, answered_at=utcnow(), search_ms=round(search_ms, 3)
            ),
            **fields,
        )

    def send(self, response: Response, cause_message_id: str) -> codec.Outgoing:
        return codec.to_partner(
            response,
            sender=self.me,
            recipient=response.requesting,
            message_id=codec.derived_id(cause_message_id, "response"),
            correlation_id=response.query_id,
        )

    def follow_up(self, q: Asked, response: Response, best: Record | None) -> list[codec.Outgoing]:
        """The automatic retrieval rule (§10): after a released match, maybe ask for more."""
        if response.status is not ResponseStatus.match or best is None:
            return []
        elements = self.policy.asks_after(derogatory=bool(best.derogatory))
        if not elements:
            return []
        ask = RetrievalAsk(
            query_id=q.query_id,
            elements=elements,
            asked_by=f"rule:{self.policy.retrieval.on}",
            justification="automatic rule of the release policy",
        )
        return [
            codec.to_own_inbox(
                ask,
                participant=self.me,
                message_id=codec.derived_id(q.message_id, "retrieval.ask"),
                correlation_id=q.query_id,
            )
        ]

    @staticmethod
    def settle(tx: Transaction, response: Response) -> Transaction:
        """The provider's record of its answer (§27 review reads these)."""
        tx.status = response.status.value
        tx.reason_code = response.reason_code.value if response.reason_code else None
        tx.answered_at = response.timings.answered_at
        tx.answer = response.model_dump(mode="json", exclude={"requesting"})
        if response.candidates:
            tx.top_score = response.candidates[0].fused_score
        return tx
