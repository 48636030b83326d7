"""response → stored as received from the provider (§20) → consolidated result to the
encounter system that submitted the encounter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlmodel import Session, col, select

from biox.agreement.erasures import Erased
from biox.handlers.base import Context, Effects, Handler, Result
from biox.policy.release import ParticipantPolicy
from biox.queries.results import WITHDRAWN, EncounterViews, is_final
from biox.store import Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import Response, utcnow

log = structlog.get_logger("biox.response")


class ResponseHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> ResponseHandler:
        return cls(ctx.participant, ctx.policy, ctx.settings.deadline_check_s)

    def __init__(
        self, participant: str, policy: ParticipantPolicy, deadline_check_s: float = 0.0
    ) -> None:
        self.me = participant
        self.policy = policy
        #: the consume loop calls ``maintain`` this often: answers past their deadline
        self.maintain_every_s = deadline_check_s

    def maintain(self, session: Session, now: datetime, limit: int = 500) -> list[codec.Outgoing]:
        """Queries with no answer by their ``answer_due`` at ``now`` show as ``timed_out``:
        the encounter system is told once (a new revision); a later answer revises it again."""
        late = session.exec(
            select(Transaction)
            .where(
                Transaction.role == "requester",
                Transaction.status == "pending",
                col(Transaction.answer_due) < now,
                col(Transaction.timed_out_at).is_(None),
            )
            .limit(limit)
        ).all()
        if not late:
            return []
        for tx in late:
            tx.timed_out_at = now
            session.add(tx)
        views = EncounterViews.load(session, {tx.encounter_id for tx in late})
        outgoing = []
        for tx in sorted(late, key=lambda t: t.query_id):
            revision = views.updated(self.me, tx.encounter_id, tx.query_id, "timed-out")
            session.add_all(revision.rows)
            outgoing += revision.outgoing
        log.warning("answers_timed_out", queries=[tx.query_id for tx in late])
        return outgoing

    def receive(self, batch: Sequence[Inbound[Response]], session: Session) -> list[Result]:
        query_ids = [inb.message.query_id for inb in batch]
        with session.no_autoflush:  # the batch is written once, at commit
            encounter_ids = set(
                session.exec(
                    select(Transaction.encounter_id).where(
                        Transaction.role == "requester",
                        col(Transaction.query_id).in_(query_ids),
                    )
                )
            )
            views = EncounterViews.load(session, encounter_ids)
            erased = Erased.of_messages(
                session,
                ((i.envelope.sender, i.message.query_id, i.envelope.message_id) for i in batch),
            )
            return [self._one(inb, views, erased) for inb in batch]

    def _one(self, inb: Inbound[Response], views: EncounterViews, erased: Erased) -> Result:
        r = inb.message
        if r.requesting != self.me:
            return PermanentError(Reason.misaddressed, f"response is for {r.requesting!r}")
        tx = views.transaction(r.query_id)
        if tx is not None and (tx.providing != r.providing or r.providing != inb.envelope.sender):
            return PermanentError(
                Reason.misaddressed,
                f"query {r.query_id} was sent to {tx.providing}, not {r.providing}",
            )
        if tx is None:  # not ours, or our record of it is not there (yet): worth retrying
            return TransientError(
                Reason.unknown_query, f"no query {r.query_id} sent to {r.providing}"
            )
        if tx.status == WITHDRAWN or erased.any(r.providing, r.query_id, inb.envelope.message_id):
            # §22: its provider had this answer deleted; a copy that comes back (a retry, a
            # replayed dead letter, an imported one) is neither stored nor passed on
            log.warning(
                "answer_erased",
                query_id=r.query_id,
                partner=r.providing,
                message_id=inb.envelope.message_id,
            )
            if tx.status == WITHDRAWN or not erased.query(r.providing, r.query_id):
                # only this message was named: whatever else the query holds stands
                return Effects(outcome="erased")
            # the whole query's data was named, and this row still holds some of it
            tx.answer, tx.status, tx.reason_code, tx.top_score = None, WITHDRAWN, None, None
            tx.withdrawn_from = r.status.value  # answered so, then deleted (§27 counts it)
            effects = Effects(rows=[tx], outcome="erased")
            revision = views.updated(self.me, tx.encounter_id, inb.envelope.message_id, "erased")
            effects.rows += revision.rows
            effects.outgoing += revision.outgoing
            return effects
        if is_final(tx.status):
            # an interim answer overtaken by the final one, or a second final answer: the
            # first final answer stands (it may already have been acted on)
            log.warning(
                "answer_after_final",
                query_id=r.query_id,
                kept=tx.status,
                ignored=r.status.value,
                message_id=inb.envelope.message_id,
            )
            return Effects(outcome="superseded")
        now = utcnow()
        tx.received_at = now
        tx.answered_at = r.timings.answered_at
        tx.status = r.status.value
        tx.reason_code = r.reason_code.value if r.reason_code else None
        tx.top_score = r.candidates[0].fused_score if r.candidates else None
        tx.answer = r.model_dump(mode="json", exclude={"requesting"})
        tx.conditions = list(r.conditions)
        tx.source = r.providing  # §20: marked as received from the providing participant
        tx.source_message_id = inb.envelope.message_id
        if r.candidates:  # partner data: kept as long as the policy keeps what it receives
            tx.retain_until = self.policy.received_until(now)
        effects = Effects(rows=[tx], outcome=r.status.value)
        revision = views.updated(self.me, tx.encounter_id, inb.envelope.message_id, "result")
        effects.rows += revision.rows
        effects.outgoing += revision.outgoing
        return effects

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None  # nobody to answer a response to: dead-letter with the reason
