"""The audit queue's handler: one chained entry per message seen, with its direction, who
sent it, the broker-checked user and the person behind it, and a digest of the body,
never the body (docs/operations.md, "Audit trail")."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from biox.database import session_for
from biox.handlers.audit import AuditHandler
from biox.handlers.base import Effects
from biox.store import AuditEntry
from biox.trust import audit
from biox.wire.codec import Envelope
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def seen(
    exchange: str,
    routing_key: str,
    *,
    kind: str = "query",
    sender: str = "us",
    recipient: str = "mx",
    body: bytes = b"\x81\xa1a\x01",
    user: str | None = "us-workers",
    actor: bytes | str | None = None,
    schema: str = "query/1",
    mid: str = "m-1",
) -> Inbound[None]:
    headers = {"biox-actor": actor} if actor is not None else {}
    env = Envelope(mid, kind, schema, sender, recipient, "q-1", None, user, NOW, 0, headers)
    return Inbound(env, None, body, exchange, routing_key)


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


def record(db: str, *batch: Inbound[None], me: str = "us") -> list[AuditEntry]:
    """The entries the batch added to the trail, read back as stored."""
    with session_for(db) as s:
        before, _ = audit.head(s)
        results = AuditHandler(me).chain(list(batch), s)
        assert all(isinstance(e, Effects) and e.rows == [] for e in results)  # in place
        s.commit()
        return list(s.exec(select(AuditEntry).where(AuditEntry.seq > before)))


@pytest.mark.parametrize(
    ("exchange", "routing_key", "direction", "provenance"),
    [
        ("biox.us.out", "mx.query", "out", "us"),  # we sent it: the data is ours
        ("biox.us", "us.response", "in", "mx"),  # from mx: marked as mx's (§20)
        ("biox.us", "us.review.decision", "in", "mx"),  # a kind with a dot is still "in"
        ("biox.us", "us.retry.response.5", "retry", "mx"),
        ("biox.us", "us.dead-letter.query", "dead-letter", "mx"),
        ("", "us.response", "in", "mx"),  # back from a retry tier by the default exchange
    ],
)
def test_each_entry_says_which_way_the_message_went_and_whose_data_it_is(
    db, exchange, routing_key, direction, provenance
):
    inbound = seen(exchange, routing_key, sender="mx" if direction != "out" else "us")
    [entry] = record(db, inbound)
    assert (entry.direction, entry.provenance) == (direction, provenance)


def test_an_entry_holds_the_facts_and_a_digest_never_the_body(db):
    body = b"\x81\xa8template\xc4\x04\x00\x01\x02\x03"
    [entry] = record(
        db,
        seen(
            "biox.us",
            "us.response",
            sender="mx",
            recipient="us",
            body=body,
            actor=b"ex-7",
            kind="response",
            schema="response/1",
        ),
    )
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()
    assert (entry.kind, entry.schema_id, entry.message_id, entry.correlation_id) == (
        "response",
        "response/1",
        "m-1",
        "q-1",
    )
    assert (entry.sender, entry.recipient, entry.sender_user) == ("mx", "us", "us-workers")
    assert entry.actor == "ex-7"  # a bytes header read as text
    assert entry.received_at is not None and entry.seq == 1
    stored = [str(getattr(entry, f)) for f in AuditEntry.model_fields]
    assert not any("template" in v for v in stored)


def test_missing_facts_are_recorded_as_missing_not_invented(db):
    [entry] = record(
        db, seen("biox.us", "us.query", kind="", sender="", recipient="", user=None, schema="")
    )
    assert entry.kind == "?"
    assert (entry.sender, entry.recipient, entry.schema_id, entry.sender_user) == (
        None,
        None,
        None,
        None,
    )
    assert entry.provenance is None and entry.actor is None


def test_a_batch_is_chained_after_what_is_already_there(db):
    first = record(db, seen("biox.us", "us.query", mid="a"))
    batch = record(db, seen("biox.us", "us.query", mid="b"), seen("biox.us.out", "mx.x", mid="c"))
    assert [e.seq for e in first + batch] == [1, 2, 3]
    assert batch[0].prev_hash == first[0].entry_hash
    assert batch[1].prev_hash == batch[0].entry_hash
    with session_for(db) as s:
        assert audit.verify(s) == (3, None)


def test_a_reason_is_kept_only_for_a_retry_or_dead_letter_hop(db):
    """Our own failure hops carry why they failed; on anything else a ``biox-reason``
    header is not ours (a partner can write any header) and the trail does not keep it."""
    hop = seen("biox.us", "us.dead-letter.query", sender="mx")
    hop.envelope.headers["biox-reason"] = "bad_signature"
    plain = seen("biox.us", "us.query", sender="mx", mid="m-2")
    plain.envelope.headers["biox-reason"] = "made up by the sender"
    dead, entry = record(db, hop, plain)
    assert (dead.direction, dead.reason) == ("dead-letter", "bad_signature")
    assert (entry.direction, entry.reason) == ("in", None)


def test_the_audit_answers_nobody():
    assert (
        AuditHandler("us").reject(seen("", "x").envelope, PermanentError(Reason.undecodable))
        is None
    )
