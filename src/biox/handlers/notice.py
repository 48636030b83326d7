"""Notices between participants (docs/workflows.md, "Notices"): sent on an operator's
request, received from partners, applied through provenance, acknowledged with what was
done; and the partners' signed audit checkpoints, kept as evidence of their chains
(``biox.trust.checkpoints``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlmodel import Session

from biox.agreement import corrections, participants, retention
from biox.agreement.ledgers import NoticeRow
from biox.gallery import snapshot
from biox.handlers.base import Context, Effects, Handler, Result
from biox.policy.release import ParticipantPolicy
from biox.queries.results import EncounterViews
from biox.registry import Registry, Status
from biox.settings import Settings
from biox.store import CheckpointRow
from biox.trust.checkpoints import genuine
from biox.trust.sealing import Trust, trust_path
from biox.trust.staff import person_of
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import AuditCheckpoint, utcnow
from biox.wire.notices import (
    ASKS_ACTION,
    DATA_ACTIONS,
    STATUS_OF,
    AckOutcome,
    Notice,
    NoticeSend,
    NoticeType,
)
from biox.wire.operations import RetentionPurged

log = structlog.get_logger("biox.notice")

#: after a deletion notice, when the dead letters and held results are swept (seconds)
FOLLOW_UP_SWEEPS_S = (0.0, 10.0, 60.0)


class NoticeHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> NoticeHandler:
        return cls(
            ctx.participant,
            Trust.load(trust_path(ctx.settings.keys())),
            ctx.registry,
            ctx.policy,
            ctx.settings,
        )

    def __init__(
        self,
        participant: str,
        trust: Trust,
        registry: Registry | None = None,
        policy: ParticipantPolicy | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.me = participant
        self.trust = trust
        self.registry = registry
        self.policy = policy or ParticipantPolicy()
        self.settings = settings or Settings()
        self.response_days = self.settings.notice_response_days
        #: the consume loop calls ``maintain`` this often: the retention purge, and the
        #: sweep of dead letters and held results carrying erased data
        self.maintain_every_s = self.settings.retention_purge_s
        self.sweeps_dead_letters = True
        #: when the broker's copies of a deletion are swept again (monotonic seconds): at
        #: once, and twice more, since a dead letter held unacked by someone's listing at
        #: the moment of a sweep is invisible to it (RabbitMQ hands out each message once)
        self._sweeps: list[float] = []

    @property
    def maintenance_due(self) -> bool:
        return any(at <= time.monotonic() for at in self._sweeps)

    @maintenance_due.setter
    def maintenance_due(self, due: bool) -> None:
        now = time.monotonic()
        if due:
            self._sweeps += [now + delay for delay in FOLLOW_UP_SWEEPS_S]
        else:
            self._sweeps = [at for at in self._sweeps if at > now]

    # --- the schedule: retention ---------------------------------------------------------------

    def maintain(self, session: Session, now: datetime) -> list[codec.Outgoing]:
        """Purges what is past its retention date at ``now`` (the consume loop's clock, a
        test's own); the audit trail gets the counts."""
        counts = purge_all(session, now, self.me, self.settings, self.policy)
        if not counts:
            return []
        log.info("retention_purged", counts=counts)
        return [purge_event(self.me, counts, "schedule")]

    # --- sending: an operator's request -------------------------------------------------------

    def send(self, batch: Sequence[Inbound[NoticeSend]], session: Session) -> list[Result]:
        return [self._send(inb, session) for inb in batch]

    def _send(self, inb: Inbound[NoticeSend], session: Session) -> Result:
        ask = inb.message
        if self.registry is not None and self.registry.get(ask.to) is None:
            return PermanentError(Reason.unknown_participant, f"notice to {ask.to!r}")
        if ask.to == self.me:
            return PermanentError(Reason.misaddressed, "a notice goes to another participant")
        if self.registry is not None and ask.to not in self.registry.linked(self.me):
            return PermanentError(
                Reason.unknown_participant, f"no agreement with {ask.to!r}, so no link to it"
            )
        if session.get(NoticeRow, codec.derived_id(inb.envelope.message_id, "notice")):
            return Effects(outcome="notice-exists")
        if ask.in_reply_to and session.get(NoticeRow, ask.in_reply_to) is None:
            return PermanentError(Reason.unknown_notice, f"no notice {ask.in_reply_to!r}")
        now = utcnow()
        respond_by = ask.respond_by
        if respond_by is None and ask.type in ASKS_ACTION:
            respond_by = now + timedelta(days=self.response_days)
        notice = Notice(
            **ask.model_dump(exclude={"to", "actor", "respond_by"}),
            notice_id=codec.derived_id(inb.envelope.message_id, "notice"),
            sender=self.me,
            recipient=ask.to,
            sent_at=now,
            respond_by=respond_by,
        )
        person = person_of(inb.envelope.user_id)  # the broker's word over the message's
        actor = person[1] if person is not None else ask.actor
        rows: list[object] = [_row(notice, "out", "sent", actor=actor)]
        status = STATUS_OF.get(ask.type)
        if status is not None:  # our own readiness or discontinuation: we act on it too
            participants.set_status(session, self.me, status, f"notice:{notice.notice_id}")
        if ask.type is NoticeType.consent_reply and ask.in_reply_to:
            asked = session.get(NoticeRow, ask.in_reply_to)
            if asked is not None:
                asked.status, asked.answered_at = "answered", now
                asked.details = {**asked.details, "consent": ask.consent}
                rows.append(asked)
        out = codec.to_partner(
            notice,
            sender=self.me,
            recipient=ask.to,
            message_id=notice.notice_id,
            correlation_id=notice.notice_id,
        )
        return Effects(rows=rows, outgoing=[out], outcome=f"sent:{ask.type.value}")

    # --- receiving: a partner's notice --------------------------------------------------------

    def receive(self, batch: Sequence[Inbound[Notice]], session: Session) -> list[Result]:
        return [self._receive(inb, session) for inb in batch]

    def _receive(self, inb: Inbound[Notice], session: Session) -> Result:
        n = inb.message
        sender = inb.envelope.sender
        if n.sender != sender or n.recipient != self.me:
            return PermanentError(
                Reason.misaddressed, f"notice from {n.sender} to {n.recipient}, sent by {sender}"
            )
        if n.notice_id != inb.envelope.message_id:
            return PermanentError(Reason.invalid_message, "notice_id must be the message_id")
        if session.get(NoticeRow, n.notice_id) is not None:
            return Effects(outcome="notice-again")
        if n.type is NoticeType.acknowledgement:
            return self._acknowledged(n, session)
        cause = f"notice:{n.notice_id}"
        done = corrections.Done()
        rows: list[object] = []
        outgoing: list[codec.Outgoing] = []
        if n.type is NoticeType.deletion:
            done = corrections.delete_from(session, sender, n.about, cause)
            self.maintenance_due = True  # the broker's copies go at once, not within the hour
        elif n.type in (NoticeType.correction, NoticeType.addition):
            done = corrections.correct_from(
                session,
                sender,
                n.about,
                dict(n.corrections),
                additions_only=n.type is NoticeType.addition,
            )
        elif n.type in (NoticeType.block, NoticeType.unblock):
            done = corrections.block_from(session, sender, n.about, n.type is NoticeType.block)
        elif n.type in STATUS_OF:
            current = participants.status_of(session, sender)
            if STATUS_OF[n.type] is Status.active and current is Status.suspended:
                # §34: a partner's readiness starts (or, after its own discontinuation,
                # §36, restarts) its participation; lifting a suspension we imposed is
                # our decision, never the partner's
                return PermanentError(
                    Reason.invalid_message, f"readiness from {sender}, which we suspended"
                )
            changed = participants.set_status(session, sender, STATUS_OF[n.type], cause, n.text)
            done.add("status", int(changed))
            if n.type is NoticeType.discontinuation:
                capped = retention.cap_for_discontinued(session, sender, self.policy, utcnow())
                for what, count in capped.items():
                    done.add(f"retention_capped_{what}", count)
        elif n.type is NoticeType.contact_change:
            participants.set_contacts(session, sender, dict(n.contacts), cause, n.text)
            done.add("contacts", len(n.contacts))
        elif n.type is NoticeType.consent_reply:
            asked = session.get(NoticeRow, n.in_reply_to or "")
            if asked is not None and asked.partner == sender:
                asked.status, asked.answered_at = "answered", utcnow()
                asked.details = {**asked.details, "consent": n.consent}
                rows.append(asked)
                done.add("consent", 1)
        if done.encounters:  # the encounter system hears that an answer changed
            views = EncounterViews.load(session, done.encounters)
            for encounter_id in sorted(done.encounters):
                revision = views.updated(self.me, encounter_id, n.notice_id, "notice-result")
                rows += revision.rows
                outgoing += revision.outgoing
        awaiting = n.type in (NoticeType.consent_request, NoticeType.correction_request)
        outcome = None
        if n.type in DATA_ACTIONS:
            outcome = AckOutcome.applied if done.held else AckOutcome.nothing_held
        row = _row(n, "in", "received" if awaiting else "applied")
        row.done = done.counts
        if outcome is not None:
            row.details = {**row.details, "outcome": outcome.value}
        rows.insert(0, row)
        outgoing.insert(0, self._acknowledge(n, done, outcome))
        log.info(
            "notice_received",
            notice_id=n.notice_id,
            type=n.type.value,
            partner=sender,
            done=done.counts,
        )
        return Effects(rows=rows, outgoing=outgoing, outcome=f"received:{n.type.value}")

    def _acknowledge(
        self, n: Notice, done: corrections.Done, outcome: AckOutcome | None = None
    ) -> codec.Outgoing:
        ack_id = codec.derived_id(n.notice_id, "acknowledgement")
        ack = Notice(
            type=NoticeType.acknowledgement,
            notice_id=ack_id,
            sender=self.me,
            recipient=n.sender,
            sent_at=utcnow(),
            in_reply_to=n.notice_id,
            done=done.counts,
            outcome=outcome,
        )
        return codec.to_partner(
            ack, sender=self.me, recipient=n.sender, message_id=ack_id, correlation_id=n.notice_id
        )

    def _acknowledged(self, n: Notice, session: Session) -> Result:
        sent = session.get(NoticeRow, n.in_reply_to or "")
        if sent is None or sent.direction != "out" or sent.partner != n.sender:
            return PermanentError(Reason.unknown_notice, f"acknowledgement of {n.in_reply_to!r}")
        row = _row(n, "in", "applied")
        row.done = dict(n.done)
        if sent.status == "sent":
            sent.status = "acknowledged"
        sent.answered_at = sent.answered_at or n.sent_at
        sent.done = dict(n.done)
        if n.outcome is not None:
            sent.details = {**sent.details, "outcome": n.outcome.value}
        return Effects(rows=[row, sent], outcome="acknowledged")

    # --- audit checkpoints --------------------------------------------------------------------

    def checkpoint(
        self, batch: Sequence[Inbound[AuditCheckpoint]], session: Session
    ) -> list[Result]:
        seen: set[tuple[str, int]] = set()
        return [self._keep(inb, session, seen) for inb in batch]

    def _keep(
        self, inb: Inbound[AuditCheckpoint], session: Session, seen: set[tuple[str, int]]
    ) -> Result:
        cp = inb.message
        if cp.participant != inb.envelope.sender:
            return PermanentError(
                Reason.forged_sender,
                f"checkpoint of {cp.participant!r} sent by {inb.envelope.sender!r}",
            )
        if not genuine(self.trust, cp):
            return PermanentError(Reason.bad_signature, f"checkpoint {cp.participant}:{cp.seq}")
        key = (cp.participant, cp.seq)
        held = session.get(CheckpointRow, key)
        if held is not None and held.entry_hash != cp.entry_hash:
            # two signed heads for one position: the chain was rewritten after the first
            # was sent, and both are kept as evidence (the first row, this dead letter)
            return PermanentError(
                Reason.invalid_message,
                f"checkpoint {cp.participant}:{cp.seq} names another entry than the one held",
            )
        if key in seen or held is not None:
            return Effects(outcome="kept:checkpoint-again")
        seen.add(key)
        row = CheckpointRow(
            participant=cp.participant,
            seq=cp.seq,
            entry_hash=cp.entry_hash,
            at=cp.at,
            key_id=cp.key_id,
            signature=cp.signature,
            received_at=utcnow(),
        )
        return Effects(rows=[row], outcome="kept:checkpoint")

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None  # a notice is not answered with a rejection; its DLQ has the reason


def _row(n: Notice, direction: str, status: str, actor: str | None = None) -> NoticeRow:
    return NoticeRow(
        notice_id=n.notice_id,
        direction=direction,
        type=n.type.value,
        partner=n.recipient if direction == "out" else n.sender,
        sent_at=n.sent_at,
        received_at=utcnow() if direction == "in" else None,
        respond_by=n.respond_by,
        status=status,
        about=n.about.model_dump(mode="json"),
        text=n.text,
        details={
            k: v
            for k, v in {
                "corrections": dict(n.corrections),
                "contacts": dict(n.contacts),
                "consent": n.consent,
                "disclose_to": n.disclose_to,
                "disclose_purpose": n.disclose_purpose,
            }.items()
            if v not in ({}, None)
        },
        in_reply_to=n.in_reply_to,
        actor=actor,
    )


def purge_all(
    session: Session,
    now: datetime,
    me: str,
    settings: Settings,
    policy: ParticipantPolicy,
    dry_run: bool = False,
) -> dict[str, int]:
    """The whole purge at ``now`` (the schedule's and ``biox retention purge``): the gallery
    snapshot on disk brought up to date without what was deleted since (and with what was
    enrolled, ``gallery/snapshot.py``), then every table by its rule (``retention.RULES``).
    ``gallery_snapshot_busy`` in the counts: snapshots another writer held, left for the
    next purge with their tombstones."""
    directory = settings.gallery_dir(me)
    refreshed = None
    if dry_run:
        seq, removed = snapshot.tombstone_seq(directory, settings.shards), 0
    else:
        refreshed = snapshot.refresh_all(session, directory, settings, wait=False)
        seq, removed = (
            (None, 0) if refreshed is None else (refreshed.tombstone_seq, refreshed.removed)
        )
    ages = retention.Ages.of(settings, policy, seq)
    counts = retention.purge(session, now, dry_run=dry_run, ages=ages)
    if removed:
        counts["gallery_snapshot"] = removed
    if refreshed is not None and refreshed.busy:  # said, and in the audit trail's counts
        counts["gallery_snapshot_busy"] = refreshed.busy
    return counts


def purge_event(me: str, counts: dict[str, int], actor: str) -> codec.Outgoing:
    """The audit trail's record of a purge: counts per table, nothing of what was removed."""
    event = RetentionPurged(counts=counts, detail=f"retention purge ({actor})")
    return codec.from_person(event, participant=me, actor=actor)
