"""response → stored as received from the provider (§20) → result to the encounter system."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from biox import codec
from biox.codec import Envelope
from biox.errors import BioxError, PermanentError, Reason, TransientError
from biox.handlers.base import Effects, Inbound, Result
from biox.messages import (
    EncounterResult,
    EncounterResultStatus,
    PartnerOutcome,
    Response,
    utcnow,
)
from biox.store import Transaction


class ResponseHandler:
    kinds = (Response.KIND,)

    def __init__(self, participant: str) -> None:
        self.me = participant

    def handle(self, batch: Sequence[Inbound], session: Session) -> list[Result]:
        """Loads the batch's transactions and their encounters' partners in two queries."""
        query_ids = [inb.message.query_id for inb in batch]  # type: ignore[attr-defined]
        with session.no_autoflush:  # the batch is written once, at commit
            txs = {
                tx.query_id: tx
                for tx in session.exec(
                    select(Transaction).where(
                        Transaction.role == "requester",
                        Transaction.query_id.in_(query_ids),  # type: ignore[attr-defined]
                    )
                )
            }
            encounters = {tx.encounter_id for tx in txs.values()}
            partners: dict[str, set[str]] = {}
            for encounter_id, providing in session.exec(
                select(Transaction.encounter_id, Transaction.providing).where(
                    Transaction.role == "requester",
                    Transaction.encounter_id.in_(encounters),  # type: ignore[attr-defined]
                )
            ):
                partners.setdefault(encounter_id, set()).add(providing)
            return [self._one(inb, txs, partners) for inb in batch]

    def _one(
        self, inb: Inbound, txs: dict[str, Transaction], partners: dict[str, set[str]]
    ) -> Result:
        r = inb.message
        assert isinstance(r, Response)
        if r.requesting != self.me:
            return PermanentError(Reason.misaddressed, f"response is for {r.requesting!r}")
        tx = txs.get(r.query_id)
        if tx is not None and (tx.providing != r.providing or r.providing != inb.envelope.sender):
            return PermanentError(
                Reason.misaddressed,
                f"query {r.query_id} was sent to {tx.providing}, not {r.providing}",
            )
        if tx is None:  # not ours, or our record of it is not there (yet): worth retrying
            return TransientError(
                Reason.unknown_query, f"no query {r.query_id} sent to {r.providing}"
            )
        now = utcnow()
        tx.received_at = now
        tx.answered_at = r.timings.answered_at
        tx.status = r.status.value
        tx.reason_code = r.reason_code.value if r.reason_code else None
        tx.top_score = r.candidates[0].fused_score if r.candidates else None
        tx.answer = r.model_dump(mode="json", exclude={"requesting"})
        tx.source = r.providing  # §20: marked as received from the providing participant
        tx.source_message_id = inb.envelope.message_id
        effects = Effects(rows=[tx], outcome=r.status.value)
        if tx.reply_to:
            result = EncounterResult(
                encounter_id=tx.encounter_id,
                requesting=self.me,
                status=EncounterResultStatus.answered,
                partners=sorted(partners.get(tx.encounter_id, {r.providing})),
                outcome=PartnerOutcome(
                    partner=r.providing,
                    query_id=r.query_id,
                    status=r.status,
                    candidates=r.candidates,
                    conditions=r.conditions,
                    reason_code=r.reason_code,
                    reason=r.reason,
                    sent_at=tx.sent_at,
                    answered_at=r.timings.answered_at,
                ),
            )
            effects.outgoing.append(
                codec.to_reply_queue(
                    result,
                    participant=self.me,
                    reply_to=tx.reply_to,
                    message_id=codec.derived_id(inb.envelope.message_id, "result"),
                )
            )
        return effects

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None  # nobody to answer a response to: dead-letter with the reason
