"""Exactly once, counted by message id at both ends of each partner link, from what each
participant's own audit trail recorded (``make chaos`` on the sovereign layout).

The trail holds one entry per message a participant sent or received (``handlers.audit``),
so a query the requester sent that its partner never recorded is lost; one recorded twice,
or answered by two responses, happened twice; a response the partner sent that the
requester never recorded is lost on the way back.
"""

from __future__ import annotations

import time
from collections import Counter

import pika
from sqlmodel import col, select

from biox.broker.connection import parameters
from biox.database import session_for
from biox.dev.sovereign import SovereignBrokers
from biox.settings import Settings
from biox.store import AuditEntry
from biox.trust import checkpoints
from biox.trust.identity import Role
from biox.trust.sealing import Trust, trust_path
from biox.wire import addresses

#: examples named per problem, not every id: a broken run can have thousands
SHOWN = 3


def _entries(settings: Settings, code: str, direction: str, kind: str) -> list[AuditEntry]:
    with session_for(settings.database_for(code)) as db:
        return list(
            db.exec(
                select(AuditEntry).where(
                    col(AuditEntry.direction) == direction, col(AuditEntry.kind) == kind
                )
            )
        )


def audit_ledger(settings: Settings, requester: str, providers: list[str]) -> dict[str, dict]:
    """Per provider: queries sent, received, answered, answers received, and each way
    exactly once can break, named (empty when none did)."""
    sent_all = _entries(settings, requester, "out", "query")
    back_all = _entries(settings, requester, "in", "response")
    ledger = {}
    for p in providers:
        sent = Counter(e.message_id for e in sent_all if e.recipient == p)
        received = Counter(e.message_id for e in _entries(settings, p, "in", "query"))
        responses = [
            e for e in _entries(settings, p, "out", "response") if e.recipient == requester
        ]
        answered = Counter(e.correlation_id for e in responses)  # a response names its query
        queries = {e.message_id: e.correlation_id for e in sent_all if e.recipient == p}
        came_back = Counter(e.message_id for e in back_all if e.sender == p)
        problems: dict[str, list[str]] = {
            "sent, never received": sorted(set(sent) - set(received)),
            "received, never sent": sorted(set(received) - set(sent)),
            "recorded twice by the sender": sorted(m for m, n in sent.items() if n > 1),
            "recorded twice by the receiver": sorted(m for m, n in received.items() if n > 1),
            "received, not answered": sorted(
                m for m in received if answered.get(queries.get(m, m), 0) == 0
            ),
            "answered more than once": sorted(q or "" for q, n in answered.items() if n > 1),
            "answer sent, never received": sorted(
                {e.message_id for e in responses} - set(came_back)
            ),
            "answer received twice": sorted(m for m, n in came_back.items() if n > 1),
        }
        ledger[f"{requester}->{p}"] = {
            "queries_sent": len(sent),
            "queries_received": len(received),
            "responses_sent": len(responses),
            "responses_received": len(came_back),
            "problems": {
                what: {"count": len(ids), "for example": ids[:SHOWN]}
                for what, ids in problems.items()
                if ids
            },
        }
    return ledger


def checkpoints_held(settings: Settings, codes: list[str]) -> dict[str, dict[str, int]]:
    """``holder -> {of: n}``: the signed chain heads each participant received from each
    partner during the run, and how many of them are not genuine (must be 0)."""
    trust = Trust.load(trust_path(settings.keys()))
    held: dict[str, dict[str, int]] = {}
    for holder in codes:
        with session_for(settings.database_for(holder)) as db:
            for of in codes:
                if of == holder:
                    continue
                got = checkpoints.held_in(db, holder, of)
                forged = sum(not checkpoints.genuine(trust, h.checkpoint) for h in got)
                held.setdefault(holder, {})[of] = len(got)
                if forged:
                    held[holder][f"{of} not genuine"] = forged
    return held


def settled(brokers: SovereignBrokers, codes: list[str], timeout: float = 300) -> None:
    """Every answer is in; wait until each participant's audit queue is empty too (three
    looks a second apart), so the trails are whole when they are counted."""
    deadline = time.monotonic() + timeout
    for code in codes:
        tls = brokers.credentials(code, Role.workers)
        conn = pika.BlockingConnection(parameters(brokers.url(code), tls))
        try:
            ch, empty = conn.channel(), 0
            while empty < 3 and time.monotonic() < deadline:
                depth = ch.queue_declare(addresses.queue(code, "audit"), passive=True)
                empty = empty + 1 if depth.method.message_count == 0 else 0
                conn.sleep(1.0)
        finally:
            conn.close()
