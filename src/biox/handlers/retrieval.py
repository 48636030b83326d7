"""Retrieval queries (§10): after answering a query with a match, the provider may ask the
requester for more data elements about the subject.

One worker per participant takes all three messages of the exchange:

* ``retrieval.ask`` (from its own operators or the automatic rule): checks that this
  participant did answer the query with a match, then sends ``retrieval.request``;
* ``retrieval.request`` (from a partner, to the participant that sent the query):
  checks the partner answered that query with a match, applies this participant's own
  release policy, and answers with the elements or a decline; the encounter system's
  consolidated result is updated;
* ``retrieval.response`` (back at the asker): kept with its provenance (§20).

A retrieval's id is the request's message id, so even a request that cannot be read
can be answered ``rejected`` under the id its sender knows.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlmodel import Session

from biox.agreement import participants
from biox.agreement.erasures import Erased
from biox.handlers.base import Context, Effects, Handler, Result
from biox.policy.release import ParticipantPolicy, released_record
from biox.queries.results import EncounterViews
from biox.registry import Purpose, Registry, Status
from biox.store import EncounterRow, RetrievalRow, Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, BioxError, PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    RetrievalAsk,
    RetrievalRequest,
    RetrievalResponse,
    RetrievalStatus,
    utcnow,
)

log = structlog.get_logger("biox.retrieval")


class RetrievalHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> RetrievalHandler:
        return cls(ctx.participant, ctx.registry, ctx.policy, ctx.settings.registry_refresh_s)

    def __init__(
        self,
        participant: str,
        registry: Registry,
        policy: ParticipantPolicy,
        refresh_s: float = 0.0,
    ) -> None:
        self.me = participant
        self.registry = registry
        self.policy = policy
        self._live = participants.Live(refresh_s)

    def _inactive(self, session: Session, partner: str) -> str | None:
        """Who of the two is not active (§34, §36): no retrieval to or from them."""
        registry = self._live.now(self.registry, session)
        for code in (self.me, partner):
            p = registry.get(code)
            if p is None or p.status is not Status.active:
                return code
        return None

    def ask(self, batch: Sequence[Inbound[RetrievalAsk]], session: Session) -> list[Result]:
        return [self._ask(inb, session) for inb in batch]

    def receive(
        self, batch: Sequence[Inbound[RetrievalResponse]], session: Session
    ) -> list[Result]:
        return [self._receive(inb, session) for inb in batch]

    def answer(self, batch: Sequence[Inbound[RetrievalRequest]], session: Session) -> list[Result]:
        with session.no_autoflush:
            txs = [session.get(Transaction, (i.message.query_id, "requester")) for i in batch]
            views = EncounterViews.load(session, {tx.encounter_id for tx in txs if tx})
            return [self._answer(inb, views, session) for inb in batch]

    # --- the asker ----------------------------------------------------------------------------

    def _ask(self, inb: Inbound[RetrievalAsk], session: Session) -> Result:
        ask = inb.message
        tx = session.get(Transaction, (ask.query_id, "provider"))
        if tx is None or tx.status != "match" or not tx.answer:
            return PermanentError(
                Reason.not_matched,
                f"{self.me} did not answer query {ask.query_id} with a match"
                + (f" (it answered {tx.status})" if tx else " (no such query)"),
            )
        inactive = self._inactive(session, tx.requesting)
        if inactive is not None:
            return PermanentError(Reason.inactive_partner, f"{inactive} is not active")
        identity_ref = tx.answer["candidates"][0]["identity_ref"]
        retrieval_id = codec.derived_id(inb.envelope.message_id, "retrieval.request")
        request = RetrievalRequest(
            retrieval_id=retrieval_id,
            query_id=ask.query_id,
            asker=self.me,
            holder=tx.requesting,
            identity_ref=identity_ref,
            elements=ask.elements,
            justification=ask.justification,
            sent_at=utcnow(),
        )
        row = RetrievalRow(
            retrieval_id=retrieval_id,
            role="asker",
            query_id=ask.query_id,
            asker=self.me,
            holder=tx.requesting,
            identity_ref=identity_ref,
            elements=[e.value for e in ask.elements],
            asked_by=ask.asked_by,
            justification=ask.justification,
            asked_at=request.sent_at,
        )
        out = codec.to_partner(
            request,
            sender=self.me,
            recipient=tx.requesting,
            message_id=retrieval_id,
            correlation_id=ask.query_id,
        )
        return Effects(rows=[row], outgoing=[out], outcome="asked")

    def _receive(self, inb: Inbound[RetrievalResponse], session: Session) -> Result:
        r = inb.message
        row = session.get(RetrievalRow, (r.retrieval_id, "asker"))
        if row is None:
            return PermanentError(Reason.unknown_retrieval, r.retrieval_id)
        if inb.envelope.sender != row.holder or r.holder != row.holder or r.asker != self.me:
            return PermanentError(
                Reason.misaddressed,
                f"retrieval {r.retrieval_id} was sent to {row.holder}, "
                f"answered by {inb.envelope.sender}",
            )
        if row.status != "pending":
            log.warning("retrieval_answered_twice", query_id=r.query_id, kept=row.status)
            return Effects(outcome="superseded")
        erased = Erased.of_messages(session, [(row.holder, r.query_id, inb.envelope.message_id)])
        if erased.any(row.holder, r.query_id, inb.envelope.message_id):
            # §22: the holder had what it sends here deleted already: nothing is kept
            log.warning("retrieval_erased", query_id=r.query_id, partner=row.holder)
            row.status, row.answered_at = "withdrawn", r.answered_at
            return Effects(rows=[row], outcome="erased")
        now = utcnow()
        row.status = r.status.value
        row.released = [e.value for e in r.released]
        row.withheld = [e.value for e in r.withheld]
        row.reason_code = r.reason_code.value if r.reason_code else None
        row.answered_at = r.answered_at
        row.data = r.data.model_dump(mode="json", exclude_none=True) if r.data else None
        row.conditions = list(r.conditions)
        row.source = row.holder  # §20: marked as received from the participant that sent it
        row.source_message_id = inb.envelope.message_id
        row.received_at = now
        row.retain_until = self.policy.received_until(now) if r.data else None
        return Effects(rows=[row], outcome=f"received:{r.status.value}")

    # --- the holder -----------------------------------------------------------------------------

    def _answer(
        self, inb: Inbound[RetrievalRequest], views: EncounterViews, session: Session
    ) -> Result:
        req = inb.message
        sender = inb.envelope.sender
        if req.holder != self.me or req.asker != sender:
            return PermanentError(
                Reason.misaddressed, f"request from {sender} names {req.asker} → {req.holder}"
            )
        if req.retrieval_id != inb.envelope.message_id:
            return PermanentError(
                Reason.invalid_message, "retrieval_id must be the request's message_id"
            )
        if session.get(RetrievalRow, (req.retrieval_id, "holder")) is not None:
            # the same id from another partner (duplicates are told apart by sender)
            return PermanentError(Reason.invalid_message, "retrieval_id already in use")
        tx = views.transaction(req.query_id)
        if tx is not None and tx.providing == sender and tx.answer is None:
            # the asker's match answer travels on another queue and may not be in yet
            return TransientError(
                Reason.not_matched, f"no answer from {sender} to {req.query_id} received yet"
            )
        row = RetrievalRow(
            retrieval_id=req.retrieval_id,
            role="holder",
            query_id=req.query_id,
            asker=sender,
            holder=self.me,
            identity_ref=req.identity_ref,
            elements=[e.value for e in req.elements],
            justification=req.justification,
            asked_at=req.sent_at,
        )
        now = utcnow()
        response = RetrievalResponse(
            retrieval_id=req.retrieval_id,
            query_id=req.query_id,
            asker=sender,
            holder=self.me,
            status=RetrievalStatus.declined,
            answered_at=now,
        )
        why = self._refusal(tx, sender)
        inactive = self._inactive(session, sender) if why is None else None
        if inactive is not None:
            why = (Reason.inactive_partner, f"{inactive} is not active (§34, §36)")
        encounter = session.get(EncounterRow, tx.encounter_id) if tx and why is None else None
        if why is None and encounter is None:
            why = (Reason.not_matched, f"no encounter behind query {req.query_id}")
        if why is None:
            assert tx is not None and encounter is not None
            release = self.policy.release_for(sender, Purpose(tx.purpose))
            # §19(i): the elements the release rule allows, and of the encounter's
            # biographic data only what the send rule lets go to this partner
            allowed = (
                None
                if isinstance(release, Reason)
                else release.limit(req.elements).narrowed(
                    self.policy.sent_fields(sender, Purpose(tx.purpose))
                )
            )
            if allowed is None or not allowed.elements:
                why = (Reason.release_not_agreed, REASON_TEXT[Reason.release_not_agreed])
            else:
                response.status = RetrievalStatus.released
                response.released = allowed.elements
                response.withheld = allowed.withheld
                response.conditions = allowed.conditions
                response.data = released_record(
                    encounter.encounter_id,
                    encounter.person_centric_id,
                    encounter.biographic,
                    [encounter.encounter] if encounter.encounter else [],
                    [],
                    allowed,
                )
        if why is not None:
            response.reason_code, response.reason = why
            response.withheld = list(req.elements)
        row.status = response.status.value
        row.released = [e.value for e in response.released]
        row.withheld = [e.value for e in response.withheld]
        row.reason_code = response.reason_code.value if response.reason_code else None
        row.answered_at = now
        effects = Effects(
            rows=[row],
            outgoing=[self._send(response, inb.envelope.message_id)],
            outcome=f"answered:{response.status.value}",
        )
        if tx is not None and tx.providing == sender:  # a retrieval about our encounter
            views.add_retrieval(row)
            revision = views.updated(
                self.me, tx.encounter_id, inb.envelope.message_id, "retrieval-result"
            )
            effects.rows += revision.rows
            effects.outgoing += revision.outgoing
        return effects

    @staticmethod
    def _refusal(tx: Transaction | None, asker: str) -> tuple[Reason, str] | None:
        """§10: only a participant that answered this query with a match may ask."""
        if tx is None or tx.providing != asker:
            return Reason.not_matched, f"no query of ours was answered by {asker}"
        if tx.status != "match":
            return Reason.not_matched, f"{asker} answered this query {tx.status}, not match"
        return None

    def _send(self, response: RetrievalResponse, cause: str) -> codec.Outgoing:
        return codec.to_partner(
            response,
            sender=self.me,
            recipient=response.asker,
            message_id=codec.derived_id(cause, "retrieval.response"),
            correlation_id=response.query_id,
        )

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """An unreadable request from a known partner is answered ``rejected``."""
        if envelope.kind != RetrievalRequest.KIND or envelope.sender == self.me:
            return None
        if self.registry.get(envelope.sender) is None or not envelope.correlation_id:
            return None
        response = RetrievalResponse(
            retrieval_id=envelope.message_id,
            query_id=envelope.correlation_id,
            asker=envelope.sender,
            holder=self.me,
            status=RetrievalStatus.rejected,
            reason_code=error.reason,
            reason=error.detail or REASON_TEXT[error.reason],
            answered_at=utcnow(),
        )
        return Effects(
            outgoing=[self._send(response, envelope.message_id)],
            outcome=f"rejected:{error.reason.value}",
        )
