"""Notices from partners that are about the exchange itself, not about a query: for now
their signed audit checkpoints, kept as evidence of their chains (``biox.checkpoints``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from biox.checkpoints import AuditCheckpoint, genuine
from biox.codec import Envelope
from biox.errors import BioxError, PermanentError, Reason
from biox.handlers.base import Context, Effects, Result
from biox.inbound import Inbound
from biox.messages import utcnow
from biox.sealing import Trust, trust_path
from biox.store import CheckpointRow


class NoticeHandler:
    @classmethod
    def build(cls, ctx: Context) -> NoticeHandler:
        return cls(ctx.participant, Trust.load(trust_path(ctx.settings.keys())))

    def __init__(self, participant: str, trust: Trust) -> None:
        self.me = participant
        self.trust = trust

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
        if key in seen or session.get(CheckpointRow, key) is not None:
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
