"""Signed audit checkpoints: each participant's chain head, held by its partners
(docs/security.md, "Audit checkpoints").

A hash chain shows an entry altered in place, but not a tail cut off, nor a chain
rewritten and re-hashed from some entry on by whoever holds the database. So each
participant's audit worker periodically signs its chain head (sequence number and hash)
and sends it to every partner, which keeps it. ``verify`` then checks a chain against the
checkpoints its partners hold: a checkpoint naming an entry past the chain's end is a
truncation; one naming another hash for an entry is a rewrite.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

import msgpack
from nacl.exceptions import BadSignatureError
from sqlmodel import Session, select

from biox.store import AuditEntry, CheckpointRow
from biox.trust.sealing import KeyRing, Trust
from biox.wire.messages import AuditCheckpoint

_CONTEXT = "biox-audit-checkpoint-v1"


def _signed(participant: str, seq: int, entry_hash: str, at: datetime) -> bytes:
    packed: bytes = msgpack.packb(
        [_CONTEXT, participant, seq, entry_hash, at.isoformat()], use_bin_type=True
    )
    return packed


def sign(ring: KeyRing, seq: int, entry_hash: str, at: datetime) -> AuditCheckpoint:
    signature = ring.signing.sign(_signed(ring.me, seq, entry_hash, at)).signature
    return AuditCheckpoint(
        participant=ring.me,
        seq=seq,
        entry_hash=entry_hash,
        at=at,
        key_id=ring.kid,
        signature=base64.b64encode(signature).decode(),
    )


def genuine(trust: Trust, cp: AuditCheckpoint) -> bool:
    """Signed by a key of the participant it names (revoked keys included: a checkpoint
    signed before a revocation stays evidence of what the chain was)."""
    key = trust.keys.get(cp.key_id)
    if key is None or key.code != cp.participant:
        return False
    try:
        key.verify.verify(
            _signed(cp.participant, cp.seq, cp.entry_hash, cp.at), base64.b64decode(cp.signature)
        )
    except (BadSignatureError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Held:
    """A checkpoint, and the partner that kept it."""

    holder: str
    checkpoint: AuditCheckpoint


def against(entries: list[AuditEntry], held: list[Held]) -> list[str]:
    """What the checkpoints say is wrong with a chain (empty: they agree with it).

    ``entries``: the participant's whole chain, in order.
    """
    by_seq = {e.seq: e for e in entries}
    last = max(by_seq, default=0)
    problems = []
    for h in sorted(held, key=lambda h: (h.checkpoint.seq, h.holder)):
        cp = h.checkpoint
        when = f"the checkpoint of {cp.at:%Y-%m-%d %H:%M:%S} held by {h.holder}"
        if cp.seq > last:
            problems.append(f"truncated: {when} names entry {cp.seq}; the chain ends at {last}")
        elif cp.seq and cp.seq not in by_seq:
            problems.append(f"removed: entry {cp.seq}, which {when} names, is missing")
        elif cp.seq and by_seq[cp.seq].entry_hash != cp.entry_hash:
            problems.append(f"rewritten: entry {cp.seq} is not the one {when} names")
    return problems


def held_in(session: Session, holder: str, about: str) -> list[Held]:
    """The checkpoints of ``about`` that ``holder`` keeps (its database, ``session``)."""
    rows = session.exec(select(CheckpointRow).where(CheckpointRow.participant == about))
    return [
        Held(
            holder,
            AuditCheckpoint(
                participant=r.participant,
                seq=r.seq,
                entry_hash=r.entry_hash,
                at=r.at,
                key_id=r.key_id,
                signature=r.signature,
            ),
        )
        for r in rows
    ]
