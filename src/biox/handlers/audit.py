"""Everything a participant receives and sends → one hash-chained audit entry each.

Bound ``#`` on the inbox and the outbox, so direction comes from the exchange. Bodies are
digested, never decoded: the trail holds no template and no personal data (§20 stamping:
``provenance`` names the participant the data came from).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlmodel import Session

from biox import addresses, audit, checkpoints, codec
from biox.codec import H_ACTOR, H_REASON, Envelope
from biox.errors import BioxError
from biox.handlers.base import Context, Effects, Result
from biox.inbound import Inbound, header_text
from biox.messages import utcnow
from biox.sealing import KeyRing, load_ring
from biox.store import AuditEntry

HOPS = ("retry", "dead-letter")


class AuditHandler:
    """Takes every audited kind undecoded (its queue ``records`` with ``record``)."""

    @classmethod
    def build(cls, ctx: Context) -> AuditHandler:
        partners = [c for c in ctx.registry.codes if c != ctx.participant]
        keys = ctx.settings.keys()
        return cls(
            ctx.participant,
            partners,
            ctx.settings.audit_checkpoint_s,
            lambda: load_ring(keys, ctx.participant),
        )

    def __init__(
        self,
        participant: str,
        partners: Sequence[str] = (),
        checkpoint_every_s: float = 300,
        ring: Callable[[], KeyRing] | None = None,
    ) -> None:
        """``partners``: who receives the signed chain head every ``checkpoint_every_s``
        seconds (``biox.checkpoints``); ``ring``: the participant's keys, read when first
        needed."""
        self.me = participant
        self.partners = list(partners)
        self.every = checkpoint_every_s
        self._ring = ring
        self._last_checkpoint = time.monotonic()

    def record(self, batch: Sequence[Inbound[None]], session: Session) -> list[Result]:
        seq, prev = audit.head(session)
        now = utcnow()
        entries = audit.chain((self._entry(inb, now) for inb in batch), seq, prev)
        effects = [Effects(rows=[e], outcome=f"audited:{e.direction}") for e in entries]
        if effects and self.partners and self._ring is not None and self._due():
            last = entries[-1]
            cp = checkpoints.sign(self._ring(), last.seq, last.entry_hash, now)
            effects[-1].outgoing.extend(
                codec.to_partner(
                    cp,
                    sender=self.me,
                    recipient=partner,
                    message_id=codec.derived_id(f"checkpoint:{self.me}:{last.seq}", partner),
                    correlation_id=f"checkpoint:{self.me}:{last.seq}",
                )
                for partner in self.partners
            )
        results: list[Result] = list(effects)
        return results

    def _due(self) -> bool:
        if time.monotonic() - self._last_checkpoint < self.every:
            return False
        self._last_checkpoint = time.monotonic()
        return True

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
