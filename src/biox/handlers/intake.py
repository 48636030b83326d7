"""encounter.submit → eligibility (§2-4) → one query per agreed partner (§5)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session, col, select

from biox.agreement import participants
from biox.gallery import templates
from biox.handlers.base import Context, Effects, Handler, Result
from biox.policy.eligibility import lacking, refusal
from biox.policy.release import ParticipantPolicy
from biox.queries.enrolment import enrolment
from biox.queries.results import EncounterViews
from biox.registry import Registry
from biox.store import EncounterRow, Transaction, fresh
from biox.trust.identity import encounter_system
from biox.wire import addresses, codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, BioxError, NoPartner, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    EncounterResult,
    EncounterResultStatus,
    EncounterSubmit,
    OutcomeStatus,
    PartnerOutcome,
    Query,
    References,
    utcnow,
)


class IntakeHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> IntakeHandler:
        return cls(
            ctx.participant,
            ctx.registry,
            ctx.policy,
            ctx.settings.registry_refresh_s,
            ctx.settings.answer_deadline_s,
        )

    def __init__(
        self,
        participant: str,
        registry: Registry,
        policy: ParticipantPolicy | None = None,
        refresh_s: float = 0.0,
        answer_deadline_s: float = 600.0,
    ) -> None:
        self.me = participant
        self.registry = registry
        self.policy = policy or ParticipantPolicy()
        self._live = participants.Live(refresh_s)
        self.deadline = timedelta(seconds=answer_deadline_s)

    def submit(self, batch: Sequence[Inbound[EncounterSubmit]], session: Session) -> list[Result]:
        registry = self._live.now(self.registry, session)  # statuses as notices left them
        ids = [inb.message.encounter_id for inb in batch]
        known = set(
            session.exec(
                select(EncounterRow.encounter_id).where(col(EncounterRow.encounter_id).in_(ids))
            )
        )
        results: list[Result] = []
        for inb in batch:
            sub = inb.message
            if sub.encounter_id in known:
                results.append(
                    PermanentError(Reason.duplicate_encounter, f"encounter {sub.encounter_id}")
                )
                continue
            result = self._one(inb, registry)
            if not isinstance(result, BioxError):
                known.add(sub.encounter_id)
            results.append(result)
        return results

    def _one(self, inb: Inbound[EncounterSubmit], registry: Registry) -> Result:
        sub = inb.message
        env = inb.envelope
        if env.recipient and env.recipient != self.me:  # biox-to names someone else
            return PermanentError(
                Reason.misaddressed, f"biox-to {env.recipient!r}: submissions go to {self.me}"
            )
        # the contract (docs/integration.md): where results go, and how they are correlated
        if not env.reply_to or not env.correlation_id:
            missing = " and ".join(
                n
                for n, v in (("reply_to", env.reply_to), ("correlation_id", env.correlation_id))
                if not v
            )
            return PermanentError(Reason.no_reply_to, f"no {missing}")
        foreign = foreign_reply_to(self.me, env)
        if foreign:
            return PermanentError(Reason.no_reply_to, foreign)
        if env.correlation_id != sub.encounter_id:
            return PermanentError(
                Reason.invalid_message,
                f"correlation_id {env.correlation_id!r} must equal encounter_id "
                f"{sub.encounter_id!r}",
            )
        if sub.biometrics.is_empty():
            return PermanentError(Reason.no_biometrics)
        try:  # refused here, not per partner after a round trip, nor enrolled broken
            templates.check(sub.biometrics)
        except PermanentError as bad:
            return bad
        # every other participant: asked, or skipped with its reason (shown in outcomes)
        refusals = {
            p: refusal(registry, self.me, p, sub.purpose, sub.subject_status, sub.encounter)
            or (
                Reason.biometrics_required
                if lacking(registry, p, self.me, sub.biometrics)
                else None
            )
            for p in registry.codes
            if p != self.me
        }
        partners = [p for p, why in refusals.items() if why is None]
        skipped = {p: why for p, why in refusals.items() if why is not None}
        agreed = registry.partners_for(self.me, sub.purpose)
        if not agreed:
            return NoPartner(Reason.no_partner, f"purpose {sub.purpose.value}", skipped)
        if not partners:
            first = next(why for p in agreed if (why := refusals[p]) is not None)
            asked = {p: refusals[p] for p in agreed}
            return NoPartner(first, f"no partner may be queried ({_summary(asked)})", skipped)

        now = utcnow()
        effects = Effects(outcome=f"queried:{len(partners)}")
        if sub.enroll:  # the encounter system asks to keep it in our own gallery (§5.2)
            effects.rows.extend(
                enrolment(
                    participant=self.me,
                    key=f"encounter/{sub.encounter_id}",
                    biometrics=sub.biometrics,
                    biographic=sub.biographic,
                    encounter=sub.encounter,
                    person_centric_id=sub.person_centric_id,
                    source=self.me,
                    source_query_id=None,
                    source_message_id=env.message_id,
                    received_at=now,
                    retain_until=self.policy.enrolled_until(now),
                )
            )
            effects.outcome += ":enrolled"
        # what we know of the subject: the store retrieval requests are answered from (§10)
        encounter = fresh(
            EncounterRow,
            encounter_id=sub.encounter_id,
            purpose=sub.purpose.value,
            reply_to=env.reply_to,
            partners=partners,
            skipped={p: why.value for p, why in skipped.items()},
            person_centric_id=sub.person_centric_id,
            biographic=sub.biographic.model_dump(mode="json", exclude_none=True),
            encounter=sub.encounter.model_dump(mode="json", exclude_none=True),
            submitted_at=env.timestamp or now,
            source_message_id=env.message_id,
            retain_until=self.policy.encounter_until(now),
        )
        effects.rows.append(encounter)
        sent: list[Transaction] = []
        for partner in partners:
            query_id = codec.derived_id(env.message_id, "query", partner)
            query = Query(
                query_id=query_id,
                requesting=self.me,
                providing=partner,
                purpose=sub.purpose,
                references=References(
                    transaction_id=query_id,
                    encounter_id=sub.encounter_id,
                    person_centric_id=sub.person_centric_id,
                ),
                subject_status=sub.subject_status,
                biometrics=sub.biometrics,
                biographic=self.policy.minimised(partner, sub.purpose, sub.biographic),
                encounter=sub.encounter,
                created_at=env.timestamp or now,
                sent_at=now,
            )
            effects.outgoing.append(
                codec.to_partner(
                    query,
                    sender=self.me,
                    recipient=partner,
                    message_id=query_id,
                    correlation_id=query_id,
                )
            )
            sent.append(
                fresh(
                    Transaction,
                    query_id=query_id,
                    role="requester",
                    encounter_id=sub.encounter_id,
                    requesting=self.me,
                    providing=partner,
                    purpose=sub.purpose.value,
                    reply_to=env.reply_to,
                    created_at=query.created_at,
                    sent_at=now,
                    answer_due=now + self.deadline,
                    status="pending",
                    # kept as long as the encounter it belongs to (§21), answered or not
                    retain_until=self.policy.encounter_until(now),
                )
            )
        effects.rows += sent
        # revision 1 at once: every partner asked (pending, with when its answer is due)
        # or skipped (why), so the officer at the desk is not left waiting in silence
        views = EncounterViews([encounter], sent)
        effects.outgoing += views.updated(
            self.me, sub.encounter_id, env.message_id, "sent"
        ).outgoing
        return effects

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        """A refused encounter is answered on its reply_to; without one, or with another
        system's, dead-letter it."""
        if not envelope.reply_to or not envelope.correlation_id:
            return None
        if foreign_reply_to(self.me, envelope):
            return None
        # refused for want of a partner: each participant, skipped with why (as when asked)
        skipped = error.skipped if isinstance(error, NoPartner) else {}
        result = EncounterResult(
            encounter_id=envelope.correlation_id,
            requesting=self.me,
            status=EncounterResultStatus.refused,
            submission_id=envelope.message_id,
            outcomes=[
                PartnerOutcome(
                    partner=p, status=OutcomeStatus.skipped, reason_code=r, reason=REASON_TEXT[r]
                )
                for p, r in sorted(skipped.items())
            ],
            reason_code=error.reason,
            reason=error.detail or REASON_TEXT[error.reason],
        )
        out = codec.to_reply_queue(
            result,
            participant=self.me,
            reply_to=envelope.reply_to,
            message_id=codec.derived_id(envelope.message_id, "refused"),
        )
        return Effects(outgoing=[out], outcome=f"refused:{error.reason.value}")


def foreign_reply_to(me: str, env: Envelope) -> str | None:
    """Why ``reply_to`` is not the submitting system's own (None when it is): results go
    only to the reply queues of the encounter system the broker says submitted, so one
    system cannot have its results, or its refusals, delivered to another's queue
    (docs/integration.md, "Reply queues")."""
    system = encounter_system(env.user_id)
    if system is None:  # the development broker, which names no system
        return None
    own = addresses.reply_queues(me, system)
    reply_to = env.reply_to or ""
    if reply_to == own or reply_to.startswith(own + "."):
        return None
    return f"reply_to {reply_to[:100]!r} is not one of {own}'s reply queues"


def _summary(refusals: dict[str, Reason | None]) -> str:
    return ", ".join(f"{p}: {REASON_TEXT[r]}" for p, r in refusals.items() if r is not None)
