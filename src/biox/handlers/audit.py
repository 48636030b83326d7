"""Everything a participant receives and sends → one hash-chained audit entry each.

Bound ``#`` on the inbox and the outbox, so direction comes from the exchange. Bodies are
digested, never decoded: the trail holds no template and no personal data (§20 stamping:
``provenance`` names the participant the data came from).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session

from biox import addresses, audit
from biox.codec import H_ACTOR, H_REASON, Envelope
from biox.errors import BioxError
from biox.handlers.base import Context, Effects, Result
from biox.inbound import Inbound, header_text
from biox.messages import utcnow
from biox.store import AuditEntry

HOPS = ("retry", "dead-letter")


class AuditHandler:
    """Takes every audited kind undecoded (its queue ``records`` with ``record``)."""

    @classmethod
    def build(cls, ctx: Context) -> AuditHandler:
        return cls(ctx.participant)

    def __init__(self, participant: str) -> None:
        self.me = participant

    def record(self, batch: Sequence[Inbound[None]], session: Session) -> list[Result]:
        seq, prev = audit.head(session)
        now = utcnow()
        entries = audit.chain((self._entry(inb, now) for inb in batch), seq, prev)
        return [Effects(rows=[e], outcome=f"audited:{e.direction}") for e in entries]

    def _entry(self, inb: Inbound[None], now: datetime) -> AuditEntry:
        env = inb.envelope
        outgoing = inb.exchange == addresses.outbox(self.me)
        hop = inb.routing_key.split(".")[1] if inb.routing_key.count(".") >= 2 else ""
        direction = "out" if outgoing else hop if hop in HOPS else "in"
        return AuditEntry(
            seq=0,
            received_at=now,
            direction=direction,
            kind=env.kind or "?",
            sender_user=env.user_id,
            sender=env.sender or None,
            recipient=env.recipient or None,
            message_id=env.message_id,
            correlation_id=env.correlation_id,
            schema_id=env.schema or None,
            body_sha256=hashlib.sha256(inb.body).hexdigest(),
            provenance=self.me if outgoing else (env.sender or None),
            actor=header_text(env.headers.get(H_ACTOR)),
            reason=header_text(env.headers.get(H_REASON)) if direction in HOPS else None,
            prev_hash="",
            entry_hash="",
        )

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None
