"""Notices between participants (§12-36) through every participant's real handlers in
memory: sent on an operator's request, applied through provenance by the recipient,
acknowledged with what was done; the encounter system hears of an answer withdrawn,
blocked or corrected."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import delete, select

from biox.agreement import corrections
from biox.agreement.ledgers import NoticeRow, Tombstone
from biox.handlers.base import Context
from biox.handlers.matcher import MatcherHandler
from biox.queries.enrolment import enrolled_record_id
from biox.registry import Registry
from biox.store import ParticipantRow, ProcessedMessage, Record, Transaction
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.messages import EncounterResult, utcnow
from biox.wire.notices import About, Notice, NoticeSend, NoticeType
from tests.registry import SHIPPED
from tests.unit.test_workflows import (
    POLICIES,
    REGISTRY,
    REPLIES,
    Hub,
    encounter,
    make_hub,
    outcome,
    person_known_to,
)


@pytest.fixture
def hub(tmp_path) -> Hub:
    return make_hub(tmp_path)


def notice(hub: Hub, sender: str, to: str, type: NoticeType, **fields) -> str:
    """An operator of ``sender`` asks for a notice; returns the notice id."""
    ask = NoticeSend(type=type, to=to, actor="privacy-officer-1", **fields)
    mid = str(uuid.uuid4())
    hub.run([codec.to_own_inbox(ask, participant=sender, message_id=mid, correlation_id=mid)])
    return codec.derived_id(mid, "notice")


def matched(hub: Hub, requester: str, provider: str) -> tuple[str, str]:
    """An encounter of someone ``provider`` knows, answered match: (encounter, query id)."""
    out = encounter(requester, person_known_to(provider, derogatory=False))
    hub.run([out])
    eid = out.envelope.correlation_id
    answer = outcome(hub.latest(eid), provider)
    assert answer.status.value == "match"
    return eid, answer.query_id


def ledger(hub: Hub, code: str, notice_id: str) -> NoticeRow:
    with hub.session(code) as s:
        row = s.get(NoticeRow, notice_id)
    assert row is not None
    return row


def test_a_deletion_notice_withdraws_the_answer_everywhere_and_is_acknowledged(hub):
    eid, qid = matched(hub, "us", "mx")
    nid = notice(
        hub,
        "mx",
        "us",
        NoticeType.deletion,
        about=About(query_ids=[qid]),
        text="record entered in error",
    )
    with hub.session("us") as s:
        tx = s.get(Transaction, (qid, "requester"))
        assert (tx.status, tx.answer, tx.conditions) == ("withdrawn", None, [])
    withdrawn = outcome(hub.latest(eid), "mx")
    assert withdrawn.status.value == "withdrawn" and withdrawn.candidates == []
    assert "deleted" in (withdrawn.reason or "")
    received = ledger(hub, "us", nid)
    assert (received.direction, received.type, received.partner) == ("in", "deletion", "mx")
    done = {"answers": 1, "stored_messages": 1, "erasures": 1}
    assert received.status == "applied" and received.done == done
    assert hub.handler("us", "notice").maintenance_due  # the broker's copies: swept now
    sent = ledger(hub, "mx", nid)
    assert (sent.direction, sent.status, sent.actor) == ("out", "acknowledged", "privacy-officer-1")
    assert sent.done == done and sent.respond_by is not None
    assert sent.details["outcome"] == "applied"
    assert sent.respond_by > sent.sent_at


def test_a_deleted_answer_that_comes_back_is_neither_kept_nor_sent_on(hub):
    """Issue 20 (1): mx's answer is deleted; the same answer then comes back, as a replayed
    dead letter or a late retry would bring it: first while us still keeps the marker of
    the first delivery, then after the marker's retention ran out. Neither copy is stored
    again, and the encounter system hears nothing more than the withdrawal."""
    eid, qid = matched(hub, "us", "mx")
    [response] = [m for m in hub.sent("response") if m.properties.correlation_id == qid]
    notice(hub, "mx", "us", NoticeType.deletion, about=About(query_ids=[qid]))
    withdrawn = hub.latest(eid)
    assert outcome(withdrawn, "mx").status.value == "withdrawn"

    def comes_back() -> None:
        hub.exchange.broker.publish(
            response.exchange, response.routing_key, response.body, response.properties
        )
        hub.exchange.run()
        hub.results += hub.exchange.results(REPLIES)
        with hub.session("us") as s:
            tx = s.get(Transaction, (qid, "requester"))
            assert (tx.status, tx.answer) == ("withdrawn", None)
        assert hub.latest(eid).revision == withdrawn.revision

    comes_back()
    with hub.session("us") as s:  # the markers' retention ran out
        s.exec(delete(ProcessedMessage))
        s.commit()
    comes_back()


def test_a_consent_request_names_records_and_recipient_or_is_refused():
    """Issue 20 (4): consent is asked for named records going to a named recipient."""
    for missing in ({"about": About(identity_refs=["MX-1"])}, {"disclose_to": "INTERPOL"}):
        with pytest.raises(ValueError, match="names the records"):
            NoticeSend(type=NoticeType.consent_request, to="mx", actor="po", **missing)


def test_a_deletion_of_nothing_held_is_acknowledged_as_such(hub):
    """Issue 20 (1): naming data us never held is not a success with empty counts."""
    nid = notice(hub, "mx", "us", NoticeType.deletion, about=About(query_ids=["never-sent"]))
    sent = ledger(hub, "mx", nid)
    assert sent.status == "acknowledged"
    assert sent.details["outcome"] == "nothing_held"
    assert sent.done == {"erasures": 1}


def test_a_deletion_notice_removes_enrolled_query_data_from_every_matcher_for_good(tmp_path):
    """us enrols mx's enforcement queries (§21); mx asks for one to be deleted: the record,
    its templates and its place in the FAISS index go, and stay gone after a restart."""
    hub = make_hub(tmp_path)
    matcher = hub.handler("us", "query")

    def caught_up() -> int:
        matcher.follower.synced_at = float("-inf")
        with hub.session("us") as s:
            matcher.catch_up(s)
        return held(matcher.gallery)

    before = caught_up()
    out = encounter("mx", person_known_to("us", derogatory=False))
    hub.run([out])
    qid = outcome(hub.latest(out.envelope.correlation_id), "us").query_id
    rid = enrolled_record_id(qid)
    with hub.session("us") as s:
        assert s.get(Record, rid).source == "mx"
    assert caught_up() > before  # the enrolled query data is searched
    nid = notice(hub, "mx", "us", NoticeType.deletion, about=About(query_ids=[qid]))
    with hub.session("us") as s:
        assert s.get(Record, rid) is None
        assert [t.record_id for t in s.exec(select(Tombstone))] == [rid]
    assert ledger(hub, "mx", nid).done == {"records": 1, "stored_messages": 1, "erasures": 1}
    assert caught_up() == before  # the running matcher dropped it

    # a record of the snapshot on disk, deleted: a matcher started afterwards drops it too
    with hub.session("us") as s:
        own = s.exec(select(Record).where(Record.source == "us")).first()
        assert own is not None
        corrections.forget_records(s, [own.id], "retention")
        s.commit()
    ctx = Context("us", REGISTRY, POLICIES.of("us"), hub.exchange.settings)
    restarted = MatcherHandler.build(ctx)
    assert held(restarted.gallery) == before
    with hub.session("us") as s:
        restarted.catch_up(s)
    assert held(restarted.gallery) < before


def held(gallery) -> int:
    """Templates in all of a gallery's indexes."""
    return (
        gallery.face.ntotal
        + sum(f.ntotal for f in gallery.fingers.values())
        + sum(i.ntotal for i in gallery.irises.values())
    )


def test_a_blocked_answer_is_shown_blocked_and_a_blocked_record_never_released(hub):
    eid, qid = matched(hub, "us", "mx")
    notice(hub, "mx", "us", NoticeType.block, about=About(query_ids=[qid]))
    assert outcome(hub.latest(eid), "mx").status.value == "blocked"
    with hub.session("us") as s:
        assert s.get(Transaction, (qid, "requester")).blocked_at is not None

    # us blocks the query data it sent mx ... mx enrols nothing, so block a us record at mx:
    # the data sv sent us in a query that us enrolled, then matched by mx's query
    out = encounter("sv", person_known_to("us", derogatory=False))
    hub.run([out])
    sv_qid = outcome(hub.latest(out.envelope.correlation_id), "us").query_id
    notice(hub, "sv", "us", NoticeType.block, about=About(query_ids=[sv_qid]))
    with hub.session("us") as s:
        assert s.get(Record, enrolled_record_id(sv_qid)).blocked_at is not None
    notice(hub, "sv", "us", NoticeType.unblock, about=About(query_ids=[sv_qid]))
    with hub.session("us") as s:
        assert s.get(Record, enrolled_record_id(sv_qid)).blocked_at is None


def test_a_provider_corrects_its_answer_and_the_encounter_system_sees_it(hub):
    eid, qid = matched(hub, "us", "mx")
    notice(
        hub,
        "mx",
        "us",
        NoticeType.correction,
        about=About(query_ids=[qid]),
        corrections={"family_name": "CORRECTED", "given_names": None},
    )
    corrected = outcome(hub.latest(eid), "mx")
    assert corrected.status.value == "match" and corrected.corrected_at is not None
    biographic = corrected.candidates[0].record.biographic
    assert biographic.family_name == "CORRECTED" and biographic.given_names is None


def test_a_discontinued_partner_is_no_longer_queried_and_its_history_kept(hub):
    nid = notice(hub, "mx", "us", NoticeType.discontinuation, text="§36 written notice")
    with hub.session("us") as s:
        assert s.get(ParticipantRow, "mx").status == "discontinued"
    with hub.session("mx") as s:  # mx acts on its own notice too
        assert s.get(ParticipantRow, "mx").status == "discontinued"
    assert ledger(hub, "mx", nid).status == "acknowledged"
    out = encounter("us", person_known_to("mx", derogatory=False))
    hub.run([out])
    mx, sv = hub.latest(out.envelope.correlation_id).outcomes  # mx shown, not asked
    assert (mx.status.value, mx.query_id) == ("skipped", None)
    assert mx.reason_code is Reason.inactive_provider
    assert sv.status.value != "skipped"

    notice(hub, "mx", "us", NoticeType.readiness, text="§34 ready again")
    out = encounter("us", person_known_to("mx", derogatory=False))
    hub.run([out])
    assert [o.partner for o in hub.latest(out.envelope.correlation_id).outcomes] == ["mx", "sv"]


def test_a_consent_request_waits_for_its_reply_and_the_reply_is_recorded(hub):
    asked = notice(
        hub,
        "us",
        "mx",
        NoticeType.consent_request,
        text="pass to INTERPOL?",
        about=About(identity_refs=["MX-1"]),
        disclose_to="INTERPOL",
        disclose_purpose="red notice",
    )
    assert ledger(hub, "mx", asked).status == "received"  # waiting for mx's answer
    # mx sees what it is asked about, for whom and what for (§15)
    assert ledger(hub, "mx", asked).details == {
        "disclose_to": "INTERPOL",
        "disclose_purpose": "red notice",
    }
    notice(hub, "mx", "us", NoticeType.consent_reply, in_reply_to=asked, consent=False)
    mine = ledger(hub, "us", asked)
    assert mine.status == "answered" and mine.details["consent"] is False
    assert ledger(hub, "mx", asked).status == "answered"


def test_participation_commences_once_both_sides_have_notified_their_readiness(tmp_path):
    """§34: the shipped registry starts everyone pending. Nothing flows between us and mx
    until each has told the other it is ready; one side's notice alone is not enough."""
    hub = make_hub(tmp_path, registry=Registry.load(SHIPPED))

    def asked() -> list[tuple[str, str | None]]:
        out = encounter("us", person_known_to("mx", derogatory=False))
        hub.run([out])
        result = hub.latest(out.envelope.correlation_id)
        if result.status.value == "refused":
            return [("us", result.reason_code and result.reason_code.value)]
        return [(o.partner, o.reason_code and o.reason_code.value) for o in result.outcomes]

    assert asked() == [("us", "inactive_requester")]  # us itself has not commenced
    notice(hub, "us", "mx", NoticeType.readiness, text="§34: us is ready")
    with hub.session("mx") as s:
        assert s.get(ParticipantRow, "us").status == "active"
        assert s.get(ParticipantRow, "mx").status == "pending"
    assert asked() == [("us", "inactive_provider")]  # no partner has said it is ready
    notice(hub, "mx", "us", NoticeType.readiness, text="§34: mx is ready")
    for side in ("us", "mx"):
        with hub.session(side) as s:
            assert {s.get(ParticipantRow, c).status for c in ("us", "mx")} == {"active"}
            assert s.get(ParticipantRow, "sv").status == "pending"  # sv said nothing yet
    mx, sv = asked()
    assert mx == ("mx", None) and sv == ("sv", "inactive_provider")


def test_contacts_change_on_notice(hub):
    notice(hub, "sv", "us", NoticeType.contact_change, contacts={"implementation": "DGME TI"})
    with hub.session("us") as s:
        assert s.get(ParticipantRow, "sv").contacts["implementation"] == "DGME TI"


def test_a_notice_is_sealed_between_participants_and_only_the_named_sender_is_believed(hub):
    notice(hub, "mx", "us", NoticeType.material_change, text="new AFIS vendor (§29)")
    [sent] = [
        m
        for m in hub.sent("notice")
        if m.properties.headers["biox-from"] == "mx" and m.properties.headers["biox-to"] == "us"
    ]
    assert b"AFIS" not in sent.body and "biox-signature" in sent.properties.headers
    # sv passing a notice off as mx's: refused by the notice worker, never applied
    forged = Notice(
        type=NoticeType.discontinuation,
        notice_id="n-forged",
        sender="mx",
        recipient="us",
        sent_at=utcnow(),
    )
    out = codec.to_partner(
        forged, sender="sv", recipient="us", message_id="n-forged", correlation_id="n-forged"
    )
    hub.run([out])
    with hub.session("us") as s:
        assert s.get(ParticipantRow, "mx").status == "active"
        assert s.get(NoticeRow, "n-forged") is None


def test_a_result_after_a_notice_is_a_new_revision(hub):
    eid, qid = matched(hub, "us", "mx")
    before = hub.latest(eid).revision
    notice(hub, "mx", "us", NoticeType.block, about=About(query_ids=[qid]))
    after: EncounterResult = hub.latest(eid)
    assert after.revision == before + 1
    with hub.session("mx") as s:  # mx's own answer is untouched: only us's copy is blocked
        assert s.get(Transaction, (qid, "provider")).blocked_at is None


# --- the notice worker's own checks, without the exchange --------------------------------------


def sending(tmp_path, ask: NoticeSend, mid: str = "op-1"):
    from biox.agreement import participants
    from biox.database import session_for
    from biox.handlers.notice import NoticeHandler
    from biox.trust.sealing import memory_rings
    from biox.wire.inbound import Inbound

    url = f"sqlite:///{tmp_path / 'us.db'}"
    handler = NoticeHandler("us", memory_rings(["us"])["us"].trust, REGISTRY)
    env = codec.Envelope(mid, "notice.send", "notice.send/1", "us", "us", mid)
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        [first] = handler.send([Inbound(env, ask)], s)
        if not isinstance(first, PermanentError):
            s.add_all(first.rows)
            s.commit()
            [again] = handler.send([Inbound(env, ask)], s)  # redelivered after commit
            return first, again
    return first, None


@pytest.mark.parametrize(
    ("to", "reply", "reason", "detail"),
    [
        ("zz", None, Reason.unknown_participant, "notice to 'zz'"),
        ("us", None, Reason.misaddressed, "a notice goes to another participant"),
        ("mx", "n-none", Reason.unknown_notice, "no notice 'n-none'"),
    ],
)
def test_a_notice_to_no_partner_or_in_reply_to_nothing_is_refused(
    tmp_path, to, reply, reason, detail
):
    kind = NoticeType.consent_reply if reply else NoticeType.material_change
    consent = True if reply else None
    ask = NoticeSend(type=kind, to=to, actor="o", in_reply_to=reply, consent=consent)
    refused, _ = sending(tmp_path, ask)
    assert isinstance(refused, PermanentError)
    assert (refused.reason, refused.detail) == (reason, detail)


def test_a_notice_request_redelivered_sends_nothing_twice(tmp_path):
    ask = NoticeSend(type=NoticeType.material_change, to="mx", actor="o", text="new AFIS")
    first, again = sending(tmp_path, ask)
    assert first.outcome == "sent:material_change" and len(first.outgoing) == 1
    assert first.outgoing[0].envelope.message_id == codec.derived_id("op-1", "notice")
    assert again.outcome == "notice-exists" and again.outgoing == [] and again.rows == []


def test_each_purge_event_is_its_own_message_naming_who_purged(tmp_path):
    from biox.handlers.notice import purge_event
    from biox.routes import ROUTES
    from biox.wire.operations import RetentionPurged

    one, two = purge_event("us", {"records": 2}, "schedule"), purge_event("us", {}, "ana")
    assert one.envelope.message_id != two.envelope.message_id
    assert one.envelope.correlation_id == one.envelope.message_id
    body = ROUTES.decode(one.envelope.kind, one.envelope.schema, one.body)
    assert isinstance(body, RetentionPurged)
    assert (body.counts, body.detail) == ({"records": 2}, "retention purge (schedule)")
    assert two.envelope.headers["biox-actor"] == "ana"


def test_an_addition_notice_fills_a_field_the_answer_lacked(hub):
    """§19(ii): mx tells us of a place of birth its answer did not carry."""
    eid, qid = matched(hub, "us", "mx")
    nid = notice(
        hub,
        "mx",
        "us",
        NoticeType.addition,
        about=About(query_ids=[qid]),
        corrections={"place_of_birth": "Tapachula"},
    )
    assert ledger(hub, "mx", nid).done == {"answers": 1}
    candidate = outcome(hub.latest(eid), "mx").candidates[0]
    assert candidate.record.biographic.place_of_birth == "Tapachula"
