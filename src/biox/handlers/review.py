"""review.case → the examiners' work list; review.decision → the final answer (§8).

Cases are rows, not unacked deliveries: an examiner may take an hour, and a case must
survive worker and broker restarts. The decision travels as a message to this worker so
the answer goes out under the consume loop's guarantees (committed, then published,
then acked) like every other answer, and the audit trail records who decided.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import func
from sqlmodel import Session, col, select

from biox.agreement.erasures import Erased
from biox.database import session_for
from biox.handlers.base import Context, Effects, Handler, Result
from biox.metrics import Metrics
from biox.policy.release import ParticipantPolicy
from biox.queries.answers import Answers, Asked, Found
from biox.registry import Purpose
from biox.store import Record, ReviewCaseRow, Transaction
from biox.trust.staff import person_of
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    DecidedBy,
    Evidence,
    ReviewCase,
    ReviewDecision,
    ReviewVerdict,
    utcnow,
)

log = structlog.get_logger("biox.review")


class ReviewHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> ReviewHandler:
        return cls(ctx.participant, ctx.policy)

    def __init__(self, participant: str, policy: ParticipantPolicy) -> None:
        self.me = participant
        self.policy = policy
        self.answers = Answers(participant, policy)

    def observe(self, metrics: Metrics, database_url: str) -> None:
        """The backlog joins the worker's metrics, counted when scraped."""
        metrics.collect_with(
            "biox_review_backlog", "Undecided review cases (§8)", lambda: backlog(database_url)
        )

    def open(self, batch: Sequence[Inbound[ReviewCase]], session: Session) -> list[Result]:
        return [self._open(inb, session) for inb in batch]

    def decide(self, batch: Sequence[Inbound[ReviewDecision]], session: Session) -> list[Result]:
        return [self._decide(inb, session) for inb in batch]

    def _open(self, inb: Inbound[ReviewCase], session: Session) -> Result:
        case = inb.message
        if session.get(ReviewCaseRow, case.case_id) is not None:
            return Effects(outcome="case_exists")
        erased = Erased.of_messages(session, [(case.requesting, case.query_id, None)])
        if erased.query(case.requesting, case.query_id):
            # §22: the requester had this query's data deleted before the case opened; the
            # answer already said pending_review, and the examiners never see the data
            log.warning("case_erased", query_id=case.query_id, partner=case.requesting)
            return Effects(outcome="case_erased")
        row = ReviewCaseRow(
            case_id=case.case_id,
            query_id=case.query_id,
            requesting=case.requesting,
            purpose=case.purpose.value,
            opened_at=case.opened_at,
            candidates=[c.model_dump(mode="json") for c in case.candidates],
            probe_biographic=case.probe_biographic.model_dump(mode="json", exclude_none=True),
            probe_modalities=case.probe_modalities,
            encounter=case.encounter.model_dump(mode="json", exclude_none=True),
            source=case.requesting,
            source_message_id=inb.envelope.message_id,
            retain_until=self.policy.received_until(case.opened_at),
        )
        return Effects(rows=[row], outcome="case_opened")

    def _decide(self, inb: Inbound[ReviewDecision], session: Session) -> Result:
        decision = inb.message
        person = person_of(inb.envelope.user_id)
        if person is not None and person[1] != decision.examiner:
            # the broker vouches for who sent it (docs/security.md, "People and roles")
            return PermanentError(
                Reason.forged_sender,
                f"a decision by {decision.examiner!r} sent as {inb.envelope.user_id}",
            )
        case = session.get(ReviewCaseRow, decision.case_id)
        if case is None:  # the case message may still be on its way: worth a retry
            return TransientError(Reason.unknown_case, decision.case_id)
        if case.status == "decided":
            log.warning(
                "case_already_decided",
                query_id=case.query_id,
                examiner=decision.examiner,
                decided_by=case.examiner,
            )
            return Effects(outcome="already_decided")
        asked = Asked(
            case.query_id,
            case.requesting,
            Purpose(case.purpose),
            case.opened_at,
            inb.envelope.message_id,
        )
        best: Record | None = None
        if decision.verdict is ReviewVerdict.match:
            chosen = next(
                (c for c in case.candidates if c["identity_ref"] == decision.identity_ref), None
            )
            record = session.exec(
                select(Record).where(Record.identity_ref == decision.identity_ref)
            ).first()
            if chosen is None or record is None:
                return PermanentError(
                    Reason.not_a_candidate, f"{decision.identity_ref!r} in case {case.case_id}"
                )
            evidence = chosen.get("evidence")
            found = Found(
                record,
                chosen["fused_score"],
                chosen["scores"],
                Evidence.model_validate(evidence) if evidence else None,
            )
            response = self.answers.matched(asked, [found], DecidedBy.examiner)
            best = record
        else:
            response = self.answers.no_match(asked, DecidedBy.examiner)
        case.status = "decided"
        case.verdict = decision.verdict.value
        case.identity_ref = decision.identity_ref
        case.examiner = decision.examiner
        case.note = decision.note
        case.decided_at = decision.decided_at
        tx = session.get(Transaction, (case.query_id, "provider"))
        answered = self.answers.conclude(asked, response, tx, best)
        rows: list[object] = [case]
        if answered.transaction is not None:
            rows.append(answered.transaction)
        return Effects(
            rows=rows,
            outgoing=answered.outgoing,
            outcome=f"decided:{response.status.value}",
        )

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None  # own messages only: a bad one is a bug to look at in the DLQ


def backlog(database_url: str) -> dict[str, float]:
    """Undecided cases and the age of the oldest, in seconds (metrics, not personal data)."""
    with session_for(database_url) as session:
        count, oldest = session.exec(
            select(func.count(), func.min(ReviewCaseRow.opened_at)).where(
                col(ReviewCaseRow.status) != "decided"
            )
        ).one()
    age = 0.0
    if oldest is not None:
        age = (utcnow() - oldest).total_seconds()
    return {"cases": float(count), "oldest_seconds": max(0.0, age)}
