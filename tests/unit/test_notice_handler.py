"""The notice worker's handler called directly: what it refuses and why, what it keeps in
the ledger, field by field, and the acknowledgement it sends back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select
from structlog.testing import capture_logs

from biox.agreement import participants
from biox.agreement.ledgers import NoticeRow
from biox.database import session_for
from biox.handlers.base import Effects
from biox.handlers.notice import NoticeHandler
from biox.routes import ROUTES
from biox.settings import Settings
from biox.trust.sealing import memory_rings
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.notices import About, Notice, NoticeSend, NoticeType
from tests.registry import operating

REGISTRY = operating()
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        s.commit()
    return url


def handler() -> NoticeHandler:
    return NoticeHandler(
        "us", memory_rings(["us"])["us"].trust, REGISTRY, settings=Settings(notice_response_days=10)
    )


def notice(nid: str = "n-1", sender: str = "mx", recipient: str = "us", **fields) -> Notice:
    values = {
        "type": NoticeType.material_change,
        "notice_id": nid,
        "sender": sender,
        "recipient": recipient,
        "sent_at": AT,
        **fields,
    }
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
    n = notice(
        type=NoticeType.correction,
        about=About(query_ids=["q-1"]),
        corrections={"family_name": "CRUZ"},
        text="typo",
        respond_by=due,
    )
    first = receive(db, n)
    assert isinstance(first, Effects) and first.outcome == "received:correction"
    [row] = first.rows
    assert isinstance(row, NoticeRow)
    assert (row.notice_id, row.direction, row.type, row.partner, row.status) == (
        "n-1",
        "in",
        "correction",
        "mx",
        "applied",
    )
    assert (row.sent_at, row.respond_by, row.text, row.actor) == (AT, due, "typo", None)
    assert row.received_at is not None and row.in_reply_to is None
    assert row.about == {"query_ids": ["q-1"], "message_ids": [], "identity_refs": []}
    assert row.details == {"corrections": {"family_name": "CRUZ"}, "outcome": "nothing_held"}
    assert row.done == {}  # nothing of mx's under q-1 here
    [ack_out] = first.outgoing
    ack = ROUTES.decode("notice", "notice/1", ack_out.body)
    assert isinstance(ack, Notice)
    assert (ack.type, ack.sender, ack.recipient, ack.in_reply_to, ack.done) == (
        NoticeType.acknowledgement,
        "us",
        "mx",
        "n-1",
        {},
    )
    assert (
        ack.notice_id == ack_out.envelope.message_id == codec.derived_id("n-1", "acknowledgement")
    )
    assert ack_out.envelope.correlation_id == "n-1" and ack_out.routing_key == "mx.notice"
    again = receive(db, n)
    assert isinstance(again, Effects) and again.outcome == "notice-again"
    assert again.rows == [] and again.outgoing == []


def test_an_acknowledgement_completes_only_our_own_notice_to_that_partner(db):
    with session_for(db) as s:
        for nid, direction, partner in (
            ("ours", "out", "mx"),
            ("theirs", "in", "mx"),
            ("to-sv", "out", "sv"),
        ):
            s.add(
                NoticeRow(
                    notice_id=nid,
                    direction=direction,
                    type="deletion",
                    partner=partner,
                    sent_at=AT,
                    status="sent",
                )
            )
        s.commit()
    for target in ("nothing", "theirs", "to-sv"):
        ack = notice(f"a-{target}", type=NoticeType.acknowledgement, in_reply_to=target)
        refused = receive(db, ack)
        assert isinstance(refused, PermanentError) and refused.reason is Reason.unknown_notice
        assert refused.detail == f"acknowledgement of {target!r}"
    done = receive(
        db,
        notice("a-ours", type=NoticeType.acknowledgement, in_reply_to="ours", done={"records": 2}),
    )
    assert isinstance(done, Effects) and done.outcome == "acknowledged" and done.outgoing == []
    with session_for(db) as s:
        ours = s.get(NoticeRow, "ours")
        kept = s.get(NoticeRow, "a-ours")
    assert (ours.status, ours.done, ours.answered_at.replace(tzinfo=UTC)) == (
        "acknowledged",
        {"records": 2},
        AT,
    )
    assert (kept.direction, kept.status, kept.done, kept.in_reply_to) == (
        "in",
        "applied",
        {"records": 2},
        "ours",
    )


def test_a_consent_reply_is_recorded_on_our_request_to_that_partner_only(db):
    with session_for(db) as s:
        for nid, partner in (("ask-mx", "mx"), ("ask-sv", "sv")):
            s.add(
                NoticeRow(
                    notice_id=nid,
                    direction="out",
                    type="consent_request",
                    partner=partner,
                    sent_at=AT,
                    status="sent",
                )
            )
        s.commit()
    receive(db, notice("r-1", type=NoticeType.consent_reply, in_reply_to="ask-sv", consent=True))
    receive(db, notice("r-2", type=NoticeType.consent_reply, in_reply_to="ask-mx", consent=True))
    with session_for(db) as s:
        assert s.get(NoticeRow, "ask-sv").status == "sent"  # mx cannot answer for sv
        mx = s.get(NoticeRow, "ask-mx")
        assert (mx.status, mx.details) == ("answered", {"consent": True})
        assert mx.answered_at is not None
        assert s.get(NoticeRow, "r-2").done == {"consent": 1}
        assert s.get(NoticeRow, "r-2").details == {"consent": True}  # the reply, in the ledger


def test_a_notice_an_operator_asks_for_is_sent_with_its_deadline_and_kept(db):
    ask = NoticeSend(
        type=NoticeType.deletion,
        to="mx",
        actor="ana",
        text="entered in error",
        about=About(message_ids=["m-9"]),
    )
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
        codec.derived_id("op-7", "notice"),
        "us",
        "mx",
        "entered in error",
    )
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


def test_the_worker_builds_its_handler_with_its_own_settings(tmp_path):
    from biox.handlers.base import Context
    from biox.policy.release import ParticipantPolicy

    settings = Settings(data_dir=tmp_path, retention_purge_s=7, notice_response_days=3)
    built = NoticeHandler.build(Context("us", REGISTRY, ParticipantPolicy(), settings))
    assert (built.maintain_every_s, built.response_days) == (7, 3)


def test_a_deadline_the_operator_gives_is_the_one_sent(db):
    due = AT + timedelta(days=5)
    ask = NoticeSend(
        type=NoticeType.deletion,
        to="mx",
        actor="ana",
        respond_by=due,
        about=About(message_ids=["m-9"]),
    )
    env = codec.Envelope("op-9", "notice.send", "notice.send/1", "us", "us", "op-9")
    with session_for(db) as s:
        [sent] = handler().send([Inbound(env, ask)], s)
    assert ROUTES.decode("notice", "notice/1", sent.outgoing[0].body).respond_by == due
    assert sent.rows[0].respond_by == due


def send(db: str, mid: str, ask: NoticeSend) -> Effects:
    env = codec.Envelope(mid, "notice.send", "notice.send/1", "us", "us", mid)
    with session_for(db) as s:
        [sent] = handler().send([Inbound(env, ask)], s)
        assert isinstance(sent, Effects)
        s.add_all(sent.rows)
        s.commit()
    return sent


def test_our_consent_reply_answers_their_request_and_nothing_else_touches_it(db):
    receive(
        db,
        notice(
            "their-ask",
            type=NoticeType.consent_request,
            text="may we pass it on?",
            about=About(identity_refs=["US-1"]),
            disclose_to="INTERPOL",
        ),
    )
    send(
        db,
        "op-10",
        NoticeSend(
            type=NoticeType.material_change,
            to="mx",
            actor="ana",
            in_reply_to="their-ask",
            text="not an answer",
        ),
    )
    with session_for(db) as s:
        untouched = s.get(NoticeRow, "their-ask")
        assert (untouched.status, untouched.details) == ("received", {"disclose_to": "INTERPOL"})
    send(
        db,
        "op-11",
        NoticeSend(
            type=NoticeType.consent_reply,
            to="mx",
            actor="ana",
            in_reply_to="their-ask",
            consent=False,
        ),
    )
    with session_for(db) as s:
        answered = s.get(NoticeRow, "their-ask")
        assert (answered.status, answered.details) == (
            "answered",
            {"disclose_to": "INTERPOL", "consent": False},
        )
        assert answered.answered_at is not None


def test_a_status_or_contacts_notice_is_kept_in_the_partners_history_with_its_text(db):
    with capture_logs() as logs:
        done = receive(db, notice("s-1", type=NoticeType.discontinuation, text="§36 letter"))
    assert isinstance(done, Effects)
    [line] = [e for e in logs if e["event"] == "notice_received"]
    assert (line["notice_id"], line["type"], line["partner"]) == ("s-1", "discontinuation", "mx")
    assert line["done"] == {"status": 1}
    ack = ROUTES.decode("notice", "notice/1", done.outgoing[0].body)
    assert ack.done == {"status": 1}  # no retention rule: nothing capped
    receive(
        db,
        notice(
            "s-2", type=NoticeType.contact_change, contacts={"legal": "DGAJ"}, text="new legal desk"
        ),
    )
    with session_for(db) as s:
        status, contacts = participants.history(s, "mx")[-2:]
    assert (status.status, status.cause, status.note) == (
        "discontinued",
        "notice:s-1",
        "§36 letter",
    )
    assert (contacts.cause, contacts.note, contacts.contacts["legal"]) == (
        "notice:s-2",
        "new legal desk",
        "DGAJ",
    )


def test_a_discontinuation_caps_what_that_partner_sent_and_says_how_much(db):
    from biox.policy.release import ParticipantPolicy
    from biox.store import Record

    with session_for(db) as s:
        for rid, source in ((1, "mx"), (2, "mx"), (3, "sv")):
            s.add(
                Record(
                    id=rid,
                    identity_ref=f"R-{rid}",
                    source=source,
                    biographic={},
                    retain_until=AT + timedelta(days=3650),
                )
            )
        s.commit()
    policy = ParticipantPolicy(discontinued_retention_days=30)
    capping = NoticeHandler("us", memory_rings(["us"])["us"].trust, REGISTRY, policy, Settings())
    env = codec.Envelope("d-1", "notice", "notice/1", "mx", "us", "d-1")
    before = datetime.now(UTC)
    with session_for(db) as s:
        [done] = capping.receive([Inbound(env, notice("d-1", type=NoticeType.discontinuation))], s)
        s.add_all(done.rows)
        s.commit()
        capped = {r.id: r.retain_until.replace(tzinfo=UTC) for r in s.exec(select(Record))}
    ack = ROUTES.decode("notice", "notice/1", done.outgoing[0].body)
    assert ack.done == {"status": 1, "retention_capped_records": 2}
    for rid in (1, 2):
        assert before + timedelta(days=30) <= capped[rid] <= datetime.now(UTC) + timedelta(days=30)
    assert capped[3] == AT + timedelta(days=3650)  # sv's untouched


def answered_encounter(db: str, n: int) -> None:
    """Encounter E-n, whose query q-n mx answered with a match."""
    from biox.store import EncounterRow, Transaction

    with session_for(db) as s:
        s.add(
            EncounterRow(
                encounter_id=f"E-{n}",
                purpose="enforce",
                reply_to="rq",
                partners=["mx"],
                source_message_id=f"sub-{n}",
            )
        )
        s.add(
            Transaction(
                query_id=f"q-{n}",
                role="requester",
                encounter_id=f"E-{n}",
                requesting="us",
                providing="mx",
                purpose="enforce",
                reply_to="rq",
                sent_at=AT,
                status="match",
                source="mx",
                answer={"status": "match", "timings": {}},
            )
        )
        s.commit()


def test_a_deletion_of_several_answers_tells_each_encounter_system(db):
    answered_encounter(db, 6)
    answered_encounter(db, 7)
    about = About(query_ids=["q-6", "q-7"])
    done = receive(db, notice("del-67", type=NoticeType.deletion, about=about))
    assert isinstance(done, Effects)
    _ack, *results = done.outgoing
    assert [r.envelope.correlation_id for r in results] == ["E-6", "E-7"]


def test_a_deletion_sends_the_encounter_system_its_result_again_under_a_derived_id(db):
    from biox.wire.messages import EncounterResult

    answered_encounter(db, 5)
    done = receive(db, notice("del-5", type=NoticeType.deletion, about=About(query_ids=["q-5"])))
    assert isinstance(done, Effects)
    [ack, result] = done.outgoing
    assert ROUTES.decode("notice", "notice/1", ack.body).type is NoticeType.acknowledgement
    assert result.envelope.message_id == codec.derived_id("del-5", "notice-result")
    withdrawn = ROUTES.decode("encounter.result", "encounter.result/1", result.body)
    assert isinstance(withdrawn, EncounterResult)
    assert [o.status.value for o in withdrawn.outcomes] == ["withdrawn"]


def test_a_readiness_notice_cannot_lift_our_suspension(db):
    """§34, §36: readiness starts a partner's participation, or restarts it after its own
    discontinuation; a partner we suspended cannot make itself active again by sending
    one."""
    with session_for(db) as s:
        participants.set_status(s, "mx", participants.Status.suspended, "test")
        s.commit()
    refused = receive(db, notice("r-1", type=NoticeType.readiness))
    assert isinstance(refused, PermanentError) and refused.reason is Reason.invalid_message
    with session_for(db) as s:
        assert participants.status_of(s, "mx").value == "suspended"
        participants.set_status(s, "mx", participants.Status.discontinued, "its notice")
        s.commit()
    assert isinstance(receive(db, notice("r-2", type=NoticeType.readiness)), Effects)
    with session_for(db) as s:
        assert participants.status_of(s, "mx").value == "active"


def test_a_deletion_makes_the_sweep_due_now_and_twice_more_later(monkeypatch):
    """The broker's copies of deleted data are swept at once after a deletion notice and
    again 10 s and 60 s later: a dead letter someone's listing holds at the moment of a
    sweep is invisible to it."""
    from biox.handlers import notice as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    handler = module.NoticeHandler("us", memory_rings(["us"])["us"].trust)
    assert handler.maintenance_due is False
    handler.maintenance_due = True
    assert handler.maintenance_due is True
    handler.maintenance_due = False  # the loop ran it
    assert handler.maintenance_due is False
    clock[0] += 10
    assert handler.maintenance_due is True
    handler.maintenance_due = False
    clock[0] += 49
    assert handler.maintenance_due is False
    clock[0] += 1
    assert handler.maintenance_due is True
    handler.maintenance_due = False
    clock[0] += 3600
    assert handler.maintenance_due is False
