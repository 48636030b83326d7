"""The notice worker's handler called directly: what it refuses and why, what it keeps in
the ledger, field by field, and the acknowledgement it sends back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from biox import codec, participants
from biox.errors import PermanentError, Reason
from biox.handlers.base import Effects
from biox.handlers.notice import NoticeHandler
from biox.inbound import Inbound
from biox.ledgers import NoticeRow
from biox.notice_messages import About, Notice, NoticeSend, NoticeType
from biox.registry import Registry
from biox.routes import ROUTES
from biox.sealing import memory_rings
from biox.settings import Settings
from biox.store import session_for

REGISTRY = Registry.load(Path("deploy/participants.toml"))
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        s.commit()
    return url


def handler() -> NoticeHandler:
    return NoticeHandler("us", memory_rings(["us"])["us"].trust, REGISTRY,
                         settings=Settings(notice_response_days=10))  # fmt: skip


def notice(nid: str = "n-1", sender: str = "mx", recipient: str = "us", **fields) -> Notice:
    values = {"type": NoticeType.material_change, "notice_id": nid, "sender": sender,
              "recipient": recipient, "sent_at": AT, **fields}  # fmt: skip
    return Notice(**values)


def receive(url: str, n: Notice, sender: str = "mx", mid: str | None = None, commit=True):
    env = codec.Envelope(mid or n.notice_id, "notice", "notice/1", sender, "us", n.notice_id)
    with session_for(url) as s:
        [result] = handler().receive([Inbound(env, n)], s)
        if commit and isinstance(result, Effects):
            s.add_all(result.rows)
            s.commit()
    return result


@pytest.mark.parametrize(
    ("n", "sender", "mid", "reason", "detail"),
    [
        (notice(sender="sv"), "mx", None, Reason.misaddressed, "notice from sv to us, sent by mx"),
        (
            notice(recipient="mx"),
            "mx",
            None,
            Reason.misaddressed,
            "notice from mx to mx, sent by mx",
        ),
        (notice(), "mx", "other-id", Reason.invalid_message, "notice_id must be the message_id"),
    ],
)
def test_a_notice_that_does_not_add_up_is_refused_by_reason(db, n, sender, mid, reason, detail):
    refused = receive(db, n, sender, mid)
    assert isinstance(refused, PermanentError)
    assert (refused.reason, refused.detail) == (reason, detail)


def test_a_notice_is_kept_once_field_by_field_and_acknowledged_under_a_derived_id(db):
    due = AT + timedelta(days=1)
    n = notice(type=NoticeType.correction, about=About(query_ids=["q-1"]),
               corrections={"family_name": "CRUZ"}, text="typo", respond_by=due)  # fmt: skip
    first = receive(db, n)
    assert isinstance(first, Effects) and first.outcome == "received:correction"
    [row] = first.rows
    assert isinstance(row, NoticeRow)
    assert (row.notice_id, row.direction, row.type, row.partner, row.status) == (
        "n-1", "in", "correction", "mx", "applied")  # fmt: skip
    assert (row.sent_at, row.respond_by, row.text, row.actor) == (AT, due, "typo", None)
    assert row.received_at is not None and row.in_reply_to is None
    assert row.about == {"query_ids": ["q-1"], "message_ids": [], "identity_refs": []}
    assert row.details == {"corrections": {"family_name": "CRUZ"}}
    assert row.done == {}  # nothing of mx's under q-1 here
    [ack_out] = first.outgoing
    ack = ROUTES.decode("notice", "notice/1", ack_out.body)
    assert isinstance(ack, Notice)
    assert (ack.type, ack.sender, ack.recipient, ack.in_reply_to, ack.done) == (
        NoticeType.acknowledgement, "us", "mx", "n-1", {})  # fmt: skip
    assert (
        ack.notice_id == ack_out.envelope.message_id == codec.derived_id("n-1", "acknowledgement")
    )
    assert ack_out.envelope.correlation_id == "n-1" and ack_out.routing_key == "mx.notice"
    again = receive(db, n)
    assert isinstance(again, Effects) and again.outcome == "notice-again"
    assert again.rows == [] and again.outgoing == []


def test_an_acknowledgement_completes_only_our_own_notice_to_that_partner(db):
    with session_for(db) as s:
        for nid, direction, partner in (("ours", "out", "mx"), ("theirs", "in", "mx"),
                                        ("to-sv", "out", "sv")):  # fmt: skip
            s.add(NoticeRow(notice_id=nid, direction=direction, type="deletion",
                            partner=partner, sent_at=AT, status="sent"))  # fmt: skip
        s.commit()
    for target in ("nothing", "theirs", "to-sv"):
        ack = notice(f"a-{target}", type=NoticeType.acknowledgement, in_reply_to=target)
        refused = receive(db, ack)
        assert isinstance(refused, PermanentError) and refused.reason is Reason.unknown_notice
        assert refused.detail == f"acknowledgement of {target!r}"
    done = receive(db, notice("a-ours", type=NoticeType.acknowledgement, in_reply_to="ours",
                              done={"records": 2}))  # fmt: skip
    assert isinstance(done, Effects) and done.outcome == "acknowledged" and done.outgoing == []
    with session_for(db) as s:
        ours = s.get(NoticeRow, "ours")
        kept = s.get(NoticeRow, "a-ours")
    assert (ours.status, ours.done, ours.answered_at.replace(tzinfo=UTC)) == (
        "acknowledged", {"records": 2}, AT)  # fmt: skip
    assert (kept.direction, kept.status, kept.done, kept.in_reply_to) == (
        "in", "applied", {"records": 2}, "ours")  # fmt: skip


def test_a_consent_reply_is_recorded_on_our_request_to_that_partner_only(db):
    with session_for(db) as s:
        for nid, partner in (("ask-mx", "mx"), ("ask-sv", "sv")):
            s.add(NoticeRow(notice_id=nid, direction="out", type="consent_request",
                            partner=partner, sent_at=AT, status="sent"))  # fmt: skip
        s.commit()
    receive(db, notice("r-1", type=NoticeType.consent_reply, in_reply_to="ask-sv", consent=True))
    receive(db, notice("r-2", type=NoticeType.consent_reply, in_reply_to="ask-mx", consent=True))
    with session_for(db) as s:
        assert s.get(NoticeRow, "ask-sv").status == "sent"  # mx cannot answer for sv
        mx = s.get(NoticeRow, "ask-mx")
        assert (mx.status, mx.details) == ("answered", {"consent": True})
        assert mx.answered_at is not None
        assert s.get(NoticeRow, "r-2").done == {"consent": 1}


def test_a_notice_an_operator_asks_for_is_sent_with_its_deadline_and_kept(db):
    ask = NoticeSend(type=NoticeType.deletion, to="mx", actor="ana", text="entered in error",
                     about=About(message_ids=["m-9"]))  # fmt: skip
    env = codec.Envelope("op-7", "notice.send", "notice.send/1", "us", "us", "op-7")
    before = datetime.now(UTC)
    with session_for(db) as s:
        [sent] = handler().send([Inbound(env, ask)], s)
    assert isinstance(sent, Effects) and sent.outcome == "sent:deletion"
    [row] = sent.rows
    [out] = sent.outgoing
    body = ROUTES.decode("notice", "notice/1", out.body)
    assert isinstance(body, Notice)
    assert (body.notice_id, body.sender, body.recipient, body.text) == (
        codec.derived_id("op-7", "notice"), "us", "mx", "entered in error")  # fmt: skip
    assert body.about.message_ids == ["m-9"] and body.sent_at >= before
    assert body.respond_by == body.sent_at + timedelta(days=10)
    assert (out.envelope.message_id, out.envelope.correlation_id) == (body.notice_id,) * 2
    assert (out.exchange, out.routing_key) == ("biox.us.out", "mx.notice")
    assert (row.direction, row.status, row.partner, row.actor) == ("out", "sent", "mx", "ana")
    assert row.respond_by == body.respond_by and row.received_at is None


def test_a_notice_that_asks_nothing_has_no_deadline_and_ours_moves_our_status(db):
    ask = NoticeSend(type=NoticeType.discontinuation, to="mx", actor="ana")
    env = codec.Envelope("op-8", "notice.send", "notice.send/1", "us", "us", "op-8")
    with session_for(db) as s:
        [sent] = handler().send([Inbound(env, ask)], s)
        s.add_all(sent.rows)
        s.commit()
        assert participants.history(s, "us")[-1].status == "discontinued"
        assert (
            participants.history(s, "us")[-1].cause
            == f"notice:{codec.derived_id('op-8', 'notice')}"
        )
    assert sent.rows[0].respond_by is None


def test_the_ledger_keeps_contacts_and_consent_and_leaves_out_what_a_type_does_not_use(db):
    receive(db, notice("c-1", type=NoticeType.contact_change, contacts={"implementation": "X"}))
    receive(db, notice("c-2", type=NoticeType.readiness))
    with session_for(db) as s:
        assert s.get(NoticeRow, "c-1").details == {"contacts": {"implementation": "X"}}
        assert s.get(NoticeRow, "c-1").done == {"contacts": 1}
        assert s.get(NoticeRow, "c-2").details == {}
        assert s.get(NoticeRow, "c-2").done == {}  # mx was active already: nothing changed
