"""Everything a participant receives and sends → one hash-chained audit entry each.

Bound ``#`` on the inbox and the outbox, so direction comes from the exchange. Bodies are
digested, never decoded: the trail holds no template and no personal data (§20 stamping:
``provenance`` names the participant the data came from).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from biox.handlers.base import Context, Effects, Handler, Result
from biox.trust import audit, checkpoints
from biox.trust.sealing import KeyRing, load_ring
from biox.wire import addresses, codec
from biox.wire.codec import H_ACTOR, H_REASON, Envelope
from biox.wire.errors import BioxError
from biox.wire.inbound import Inbound, header_text
from biox.wire.messages import utcnow
from biox.wire.operations import PersonalDataRead

HOPS = ("retry", "dead-letter")


class AuditHandler(Handler):
    """Takes every audited kind undecoded (its queue's ``undecoded`` method: ``chain``)."""

    @classmethod
    def build(cls, ctx: Context) -> AuditHandler:
        partners = ctx.registry.linked(ctx.participant)  # the partners it has a link to
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
        seconds (``maintain``); ``ring``: the participant's keys, read when first needed."""
        self.me = participant
        self.partners = list(partners)
        self._ring = ring
        #: the consume loop calls ``maintain`` this often: the signed chain head to partners
        self.maintain_every_s = checkpoint_every_s if self.partners and ring else 0.0

    def chain(self, batch: Sequence[Inbound[None]], session: Session) -> list[Result]:
        """The batch's entries, chained after the head and inserted in the loop's
        transaction: each carries its hop, which is the queue's idempotency (``recorded``),
        so an entry and the proof that its delivery was handled commit as one row."""
        seq, prev = audit.head(session)
        now = utcnow()
        rows = audit.chain((self._entry(inb, now) for inb in batch), seq, prev)
        audit.append(session, rows)
        return [Effects(outcome=f"audited:{row['direction']}") for row in rows]

    def maintain(self, session: Session, now: datetime) -> list[codec.Outgoing]:
        """The chain's head, signed, to every partner, who keep it as evidence of what the
        chain held (``biox.trust.checkpoints``): on the schedule, not on traffic. A head
        sent again (the chain idle, or a send that failed) is kept once, by its position;
        its message id is random, so that a partner who sees our sequence numbers cannot
        send something else under the id of our next one; nothing to vouch for while the
        chain is empty."""
        seq, entry_hash = audit.head(session)
        if seq == 0 or self._ring is None:
            return []
        cp = checkpoints.sign(self._ring(), seq, entry_hash, now)
        return [
            codec.to_partner(
                cp,
                sender=self.me,
                recipient=partner,
                message_id=str(uuid.uuid4()),
                correlation_id=f"checkpoint:{self.me}:{seq}",
            )
            for partner in self.partners
        ]

    def _entry(self, inb: Inbound[None], now: datetime) -> dict[str, Any]:
        """A row of ``audit_entries`` (``store.AuditEntry``), numbered by ``audit.chain``."""
        env = inb.envelope
        outgoing = inb.exchange == addresses.outbox(self.me)
        hop = addresses.hop(inb.routing_key)
        direction = "out" if outgoing else hop if hop in HOPS else "in"
        return {
            "seq": 0,
            "received_at": now,
            "direction": direction,
            "kind": env.kind or "?",
            "sender_user": env.user_id,
            "sender": env.sender or None,
            "recipient": env.recipient or None,
            "message_id": env.message_id,
            "correlation_id": env.correlation_id,
            "schema_id": env.schema or None,
            "body_sha256": hashlib.sha256(inb.body).hexdigest(),
            "provenance": self.me if outgoing else (env.sender or None),
            "actor": header_text(env.headers.get(H_ACTOR)),
            "reason": header_text(env.headers.get(H_REASON)) if direction in HOPS else None,
            "command": (
                _read_command(env, inb.body) if env.kind == PersonalDataRead.KIND else None
            ),
            "prev_hash": "",
            "entry_hash": "",
            "hop": inb.hop,
        }

    def reject(self, envelope: Envelope, error: BioxError) -> Effects | None:
        return None


def _read_command(env: Envelope, body: bytes) -> str:
    """Which command a read of personal data was (``biox qa`` holds it against the
    reader's duties); the event carries no personal data, only the command and digests.
    One that cannot be read is recorded as such, and qa names it."""
    try:
        return str(codec.decode_body(PersonalDataRead, env.schema, body).command)
    except BioxError as e:
        return f"unreadable: {e.reason}"
