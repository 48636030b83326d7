"""The exchange workflows with every participant's handlers in memory, no broker.

``biox.broker.memory.InMemoryExchange`` runs each participant's real handlers under the real
consume loop, routed by the real topology; each participant has its own SQLite database.
The broker-level behaviour of the same flows is in tests/integration/test_workflows.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from biox.agreement import participants
from biox.broker.link import Unroutable
from biox.broker.memory import InMemoryExchange, Stored
from biox.database import session_for
from biox.policy.release import ParticipantPolicy, Policies, ReleaseRule
from biox.queries import examiners
from biox.queries.enrolment import enrolled_record_id
from biox.registry import Purpose, Registry, Status
from biox.settings import Settings
from biox.sim import galleries, synth
from biox.sim.examiners import biographic_examiner
from biox.store import (
    AuditEntry,
    EncounterRow,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    Transaction,
)
from biox.wire import codec
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import REASON_TEXT, Reason
from biox.wire.inbound import Inbound, read_envelope
from biox.wire.messages import (
    Biometrics,
    Element,
    EncounterResult,
    EncounterSubmit,
    Response,
    RetrievalAsk,
    RetrievalResponse,
    ReviewVerdict,
    SubjectStatus,
)
from tests.budget import examples
from tests.galleries import build as synthetic_galleries
from tests.registry import operating

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
SEED = 7
SIZE = 1500
REPLIES = "encounter-system"


@dataclass
class Hub:
    """The in-memory exchange, and what its encounter system received."""

    exchange: InMemoryExchange
    results: list[EncounterResult] = field(default_factory=list)

    def run(self, first: list[Outgoing]) -> None:
        self.exchange.publish(first)
        self.exchange.run()
        self.results += self.exchange.results(REPLIES)

    def latest(self, encounter_id: str) -> EncounterResult:
        mine = [r for r in self.results if r.encounter_id == encounter_id]
        return max(mine, key=lambda r: r.revision)

    def session(self, code: str):
        return session_for(self.exchange.settings.database_for(code))

    def handler(self, code: str, role: str) -> Any:
        return self.exchange.handler(code, role)

    def dead_reason(self, code: str, role: str) -> str:
        """The reason of the newest dead letter of ``code``'s ``role`` queue."""
        return self.exchange.dead_letters(code, role)[-1].properties.headers["biox-reason"]

    def sent(self, kind: str) -> list[Stored]:
        return [m for m in self.exchange.broker.published if m.properties.type == kind]


def make_hub(
    tmp: Path,
    policies: Policies = POLICIES,
    options: Settings | None = None,
    registry: Registry = REGISTRY,
) -> Hub:
    # statuses read at every batch: the exchange runs a whole workflow in well under the
    # workers' BIOX_REGISTRY_REFRESH_S (the integration tests wait for it instead)
    config = (options or Settings()).model_copy(update={"data_dir": tmp, "registry_refresh_s": 0})
    synthetic_galleries(config, ("us", "mx", "sv"), SIZE, SEED)
    exchange = InMemoryExchange(config, registry=registry, policies=policies)
    exchange.declare_queue(REPLIES)
    return Hub(exchange)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Hub:
    return make_hub(tmp_path_factory.mktemp("hub"))


def encounter(
    requester: str,
    person: int,
    purpose: Purpose = Purpose.enforce,
    biometrics: Biometrics | None = None,
    encounter_id: str | None = None,
    enroll: bool = False,
) -> Outgoing:
    """An encounter system's submission (a fresh encounter id unless one is given)."""
    eid = encounter_id or f"{requester}-E-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(person)
    sub = EncounterSubmit(
        encounter_id=eid,
        purpose=purpose,
        subject_status=SubjectStatus(citizenships=["gt"]),
        biometrics=biometrics or synth.capture(SEED, person, context=3),
        biographic=synth.person(SEED, person).biographic,
        encounter=synth.encounter_here(requester, rng),
        enroll=enroll,
    )
    return codec.to_submissions(
        sub,
        participant=requester,
        message_id=str(uuid.uuid4()),
        correlation_id=eid,
        reply_to=REPLIES,
    )


def person_known_to(code: str, *, sealed: bool = False, derogatory: bool | None = None) -> int:
    rng = np.random.default_rng(11)
    while True:
        n = synth.known_to(code, SIZE, rng)
        if synth.sealed(n) != sealed:
            continue
        if derogatory is not None and bool(synth.person(SEED, n).derogatory) != derogatory:
            continue
        return n


def stranger_answered(hub: Hub, requester: str, provider: str, seed: int):
    """An encounter of someone nobody knows, answered: the provider's no_match."""
    rng = np.random.default_rng(seed)
    stranger = synth.stranger(SEED, dict.fromkeys(("us", "mx", "sv"), SIZE), rng)
    hub.run([encounter(requester, stranger)])
    answer = outcome(hub.results[-1], provider)
    assert answer.status.value == "no_match"
    return stranger, answer


def outcome(result: EncounterResult, partner: str):
    return next(o for o in result.outcomes if o.partner == partner)


# --- release policy and declines (§7, §9) -------------------------------------------------


def test_match_releases_what_the_policy_allows_with_its_conditions(hub):
    n = person_known_to("mx", derogatory=False)
    out = encounter("us", n, Purpose.adjudicate)
    hub.run([out])
    result = hub.latest(out.envelope.correlation_id)
    mx = outcome(result, "mx")
    assert mx.status.value == "match"
    record = mx.candidates[0].record
    assert mx.candidates[0].identity_ref == synth.identity_ref("mx", n)
    assert record.biographic is not None and record.person_centric_id
    assert record.encounters == [] and record.derogatory == []  # mx → us adjudicate
    assert mx.withheld == [Element.encounters, Element.derogatory]
    assert "for immigration adjudication only" in mx.conditions
    with hub.session("us") as s:  # the requester keeps the conditions with the data
        tx = s.get(Transaction, (mx.query_id, "requester"))
        assert tx.conditions == mx.conditions and tx.source == "mx"
        assert tx.retain_until is not None


def test_sealed_record_is_declined_with_a_reason(tmp_path):
    """Where mx's policy tells declines (``conceal_record_declines = false``)."""
    policies = Policies(
        participants={
            **POLICIES.participants,
            "mx": POLICIES.of("mx").model_copy(update={"conceal_record_declines": False}),
        }
    )
    hub = make_hub(tmp_path, policies)
    n = person_known_to("mx", sealed=True)
    out = encounter("us", n)
    hub.run([out])
    mx = outcome(hub.latest(out.envelope.correlation_id), "mx")
    assert mx.status.value == "declined"
    assert mx.reason_code is Reason.record_not_releasable
    assert mx.reason == REASON_TEXT[Reason.record_not_releasable]  # said for people too
    assert mx.answered_at is not None and mx.answered_at >= mx.sent_at
    assert mx.candidates == []
    with hub.session("us") as s:  # the requester's own record of the answer
        tx = s.get(Transaction, (mx.query_id, "requester"))
        assert (tx.status, tx.reason_code) == ("declined", "record_not_releasable")


def test_a_sealed_record_is_answered_as_a_no_match_where_declines_are_concealed(hub):
    """Issue 20 (3), the default: the requester cannot tell a record exists; the
    provider's own row keeps why."""
    n = person_known_to("mx", sealed=True)
    out = encounter("us", n)
    hub.run([out])
    mx = outcome(hub.latest(out.envelope.correlation_id), "mx")
    assert (mx.status.value, mx.reason_code, mx.reason, mx.candidates) == (
        "no_match",
        None,
        None,
        [],
    )
    with hub.session("mx") as s:
        tx = s.get(Transaction, (mx.query_id, "provider"))
        assert (tx.status, tx.reason_code) == ("declined", "record_not_releasable")


def test_no_release_rule_declines_without_searching(tmp_path):
    policies = Policies(
        participants={
            **POLICIES.participants,
            "mx": ParticipantPolicy(release=[ReleaseRule(to=["us"], purposes=["adjudicate"])]),
        }
    )
    hub = make_hub(tmp_path, policies)
    out = encounter("us", person_known_to("mx"), Purpose.adjudicate)
    hub.run([out])
    mx = outcome(hub.latest(out.envelope.correlation_id), "mx")
    assert mx.status.value == "declined" and mx.reason_code is Reason.release_not_agreed


def test_inactive_requester_is_declined_not_rejected(tmp_path):
    hub = make_hub(tmp_path)
    with hub.session("mx") as s:  # mx suspended us; us does not know (or ignores it)
        participants.set_status(s, "us", Status.suspended, "operator:mx-officer")
        s.commit()
    out = encounter("us", person_known_to("mx"))
    hub.run([out])
    mx = outcome(hub.latest(out.envelope.correlation_id), "mx")
    assert mx.status.value == "declined" and mx.reason_code is Reason.inactive_requester


# --- human review (§8) -------------------------------------------------------------------------


def gray_zone_probe(hub: Hub, code: str) -> tuple[int, Biometrics]:
    matcher = hub.handler(code, "query")
    settings = matcher.settings  # type: ignore[attr-defined]
    return galleries.gray_zone_subject(
        matcher.gallery,  # type: ignore[attr-defined]
        code,
        SIZE,
        SEED,
        settings.threshold_low,
        settings.threshold_high,
        np.random.default_rng(5),
    )


def test_gray_zone_becomes_a_case_then_the_examiners_decision_goes_out(hub):
    n, bio = gray_zone_probe(hub, "mx")
    out = encounter("us", n, biometrics=bio)
    eid = out.envelope.correlation_id
    hub.run([out])
    mx = outcome(hub.latest(eid), "mx")
    assert mx.status.value == "pending_review"
    assert hub.latest(eid).status.value == "pending"
    with hub.session("mx") as s:
        case = examiners.take_next(s, "examiner-7", lease_s=900)
        assert case is not None and case.query_id == mx.query_id
        assert examiners.take_next(s, "examiner-8", lease_s=900) is None  # held by examiner-7
        sides = examiners.sides(s, case)
        verdict, ref = biographic_examiner(case, sides)
    assert verdict is ReviewVerdict.match and ref == synth.identity_ref("mx", n)
    hub.run([examiners.decision_message("mx", case, verdict, ref, "examiner-7")])
    final = hub.latest(eid)
    mx = outcome(final, "mx")
    assert mx.status.value == "match" and mx.decided_by.value == "examiner"
    assert mx.candidates[0].identity_ref == ref
    with hub.session("mx") as s:
        row = s.get(ReviewCaseRow, case.case_id)
        assert row.status == "decided" and row.examiner == "examiner-7"
        assert row.source == "us" and row.retain_until is not None  # probe data kept (§20)
        assert s.get(Transaction, (mx.query_id, "provider")).status == "match"


def test_a_second_decision_on_a_decided_case_changes_nothing(hub):
    n, bio = gray_zone_probe(hub, "sv")
    out = encounter("us", n, biometrics=bio)
    hub.run([out])
    with hub.session("sv") as s:
        case = examiners.take_next(s, "a", lease_s=900)
    hub.run([examiners.decision_message("sv", case, ReviewVerdict.no_match, None, "a")])
    before = len(hub.results)
    ref = case.candidates[0]["identity_ref"]
    hub.run([examiners.decision_message("sv", case, ReviewVerdict.match, ref, "b")])
    assert len(hub.results) == before  # nothing sent
    assert outcome(hub.latest(out.envelope.correlation_id), "sv").status.value == "no_match"


def test_an_abandoned_case_returns_to_the_pool_after_its_lease(hub):
    n, bio = gray_zone_probe(hub, "mx")
    hub.run([encounter("us", n, biometrics=bio)])
    with hub.session("mx") as s:
        first = examiners.take_next(s, "gone", lease_s=900)
        assert first is not None
        again = examiners.take_next(s, "next", lease_s=0)  # lease already over
        assert again is not None and again.case_id == first.case_id
        assert again.examiner == "next"


# --- retrieval queries (§10) -------------------------------------------------------------------


def test_derogatory_match_triggers_the_automatic_retrieval_and_is_answered(hub):
    """us asks automatically after a derogatory match; mx answers under its own policy."""
    n = person_known_to("us", derogatory=True)
    out = encounter("mx", n)
    eid = out.envelope.correlation_id
    hub.run([out])
    us = outcome(hub.latest(eid), "us")
    assert us.status.value == "match"
    [note] = us.retrievals  # the requester's encounter system sees the retrieval
    assert note.status.value == "released" and set(note.released) == {
        Element.biographic,
        Element.encounters,
    }
    with hub.session("us") as s:
        [row] = s.exec(select(RetrievalRow).where(RetrievalRow.query_id == us.query_id)).all()
        assert row.role == "asker" and row.status == "released"
        assert row.source == "mx" and row.source_message_id and row.received_at
        assert row.data["identity_ref"] == eid
        assert row.conditions and row.retain_until is not None
        assert row.asked_by == "rule:derogatory"


def test_manual_retrieval_is_limited_by_the_holders_policy(hub):
    n = person_known_to("sv", derogatory=False)
    out = encounter("us", n, Purpose.investigate)
    eid = out.envelope.correlation_id
    hub.run([out])
    sv = outcome(hub.latest(eid), "sv")
    assert sv.status.value == "match"
    ask = RetrievalAsk(
        query_id=sv.query_id, elements=[Element.biographic, Element.derogatory], asked_by="op-1"
    )
    hub.run([codec.to_own_inbox(ask, participant="sv", message_id="ask-1", correlation_id="x")])
    # us releases everything to sv for investigate except what it does not hold
    with hub.session("sv") as s:
        row = s.get(RetrievalRow, (codec.derived_id("ask-1", "retrieval.request"), "asker"))
        assert row.status == "released"
        assert row.data["biographic"]["family_name"]
        # issue 20 (5): us's send rule keeps the document number from sv, in a retrieval
        # response as in the query
        assert "document_number" not in row.data["biographic"]
    with hub.session("us") as s:
        assert s.get(EncounterRow, eid).biographic.get("document_number")  # us holds it
    latest = outcome(hub.latest(eid), "sv")
    assert latest.retrievals and latest.retrievals[0].status.value == "released"


def test_retrieval_about_a_query_never_matched_is_refused(hub):
    _, mx = stranger_answered(hub, "us", "mx", seed=3)
    # the asker's own worker refuses to ask ...
    ask = RetrievalAsk(query_id=mx.query_id, elements=[Element.biographic], asked_by="op")
    hub.run([codec.to_own_inbox(ask, participant="mx", message_id="ask-2", correlation_id="x")])
    assert hub.dead_reason("mx", "retrieval") == Reason.not_matched
    # ... and a holder refuses a request that skipped that check
    from biox.wire.messages import RetrievalRequest

    req = RetrievalRequest(
        retrieval_id="r-forged",
        query_id=mx.query_id,
        asker="mx",
        holder="us",
        identity_ref="MX-000000001",
        elements=[Element.biographic],
        sent_at=datetime.now(UTC),
    )
    with hub.session("mx") as s:  # pretend mx had asked
        s.add(
            RetrievalRow(
                retrieval_id="r-forged",
                role="asker",
                query_id=mx.query_id,
                asker="mx",
                holder="us",
                identity_ref="MX-000000001",
                elements=["biographic"],
            )
        )
        s.commit()
    hub.run(
        [
            codec.to_partner(
                req, sender="mx", recipient="us", message_id="r-forged", correlation_id="x"
            )
        ]
    )
    back = hub.sent("retrieval.response")[-1]
    response = codec.decode_body(
        RetrievalResponse, "retrieval.response/1", hub.exchange.opened(back)
    )
    assert isinstance(response, RetrievalResponse)
    assert response.status.value == "declined" and response.reason_code is Reason.not_matched
    assert response.data is None
    # the encounter's result lists the refused retrieval under mx, with its reason
    mine = [r for r in hub.results if any(o.query_id == mx.query_id for o in r.outcomes)]
    note = next(
        n
        for n in outcome(max(mine, key=lambda r: r.revision), "mx").retrievals
        if n.retrieval_id == "r-forged"
    )
    assert (note.status.value, note.reason_code) == ("declined", Reason.not_matched)
    assert note.answered_at is not None


# --- provenance and enrolment (§20-21) ---------------------------------------------------------


def test_query_data_is_enrolled_with_provenance_and_found_next_time(hub):
    """us enrols mx's enforcement queries: a second encounter of the same stranger matches
    the enrolled record, which carries where it came from and until when it is kept."""
    stranger, us = stranger_answered(hub, "mx", "us", seed=9)
    record_id = enrolled_record_id(us.query_id)
    with hub.session("us") as s:
        record = s.get(Record, record_id)
        assert record.source == "mx" and record.source_query_id == us.query_id
        assert record.source_message_id and record.retain_until > record.received_at
    hub.handler("us", "query").follower.synced_at = float("-inf")
    second = encounter("mx", stranger, biometrics=synth.capture(SEED, stranger, context=99))
    hub.run([second])
    again = outcome(hub.latest(second.envelope.correlation_id), "us")
    assert again.status.value == "match"
    assert again.candidates[0].identity_ref == record.identity_ref


def test_enrolled_data_is_not_passed_on_to_a_third_participant(hub):
    """What sv sent is released back to sv, never to mx (onward disclosure, §15)."""
    rng = np.random.default_rng(21)
    stranger = synth.stranger(SEED, dict.fromkeys(("us", "mx", "sv"), SIZE), rng)
    hub.run([encounter("sv", stranger)])
    hub.handler("us", "query").follower.synced_at = float("-inf")
    out = encounter("mx", stranger)
    hub.run([out])
    us = outcome(hub.latest(out.envelope.correlation_id), "us")
    assert us.status.value == "no_match" and us.candidates == []  # a decline, concealed
    with hub.session("us") as s:
        tx = s.get(Transaction, (us.query_id, "provider"))
        assert (tx.status, tx.reason_code) == ("declined", "record_not_releasable")


# --- the consolidated result -------------------------------------------------------------------


def test_one_result_per_change_with_every_partner_and_growing_revisions(hub):
    n = person_known_to("mx")
    out = encounter("us", n)
    eid = out.envelope.correlation_id
    hub.run([out])
    mine = [r for r in hub.results if r.encounter_id == eid]
    assert [r.revision for r in mine] == list(range(1, len(mine) + 1))
    assert all({o.partner for o in r.outcomes} == {"mx", "sv"} for r in mine)
    assert mine[0].status.value == "pending" and mine[-1].status.value == "complete"
    with hub.session("us") as s:
        row = s.get(EncounterRow, eid)
        assert row.revision == mine[-1].revision and row.status == "complete"
        assert row.retain_until is not None  # us's encounter retention schedule


def test_a_duplicate_encounter_id_is_refused(hub):
    out = encounter("us", 5)
    hub.run([out])
    hub.run([encounter("us", 6, encounter_id=out.envelope.correlation_id)])  # a new message
    assert hub.results[-1].reason_code is Reason.duplicate_encounter
    assert hub.results[-1].status.value == "refused"


def test_an_interim_answer_after_the_final_one_is_ignored(hub):
    n = person_known_to("mx")
    out = encounter("us", n)
    hub.run([out])
    eid = out.envelope.correlation_id
    mx = outcome(hub.latest(eid), "mx")
    late = Response(
        query_id=mx.query_id,
        requesting="us",
        providing="mx",
        status="pending_review",  # type: ignore[arg-type]
        timings={"received_at": datetime.now(UTC), "answered_at": datetime.now(UTC)},
    )
    env = Envelope(str(uuid.uuid4()), "response", "response/1", "mx", "us", mx.query_id)
    with hub.session("us") as s:
        [effects] = hub.handler("us", "response").receive([Inbound(env, late)], s)
    assert effects.outcome == "superseded" and not effects.outgoing


def test_two_workers_updating_one_encounter_cannot_both_commit(tmp_path):
    """The result's revision is an optimistic lock: of two concurrent updates the second
    fails (and the consume loop retries it with fresh state), so no result is lost."""
    from sqlalchemy.orm.exc import StaleDataError

    from biox.queries.results import EncounterViews

    db = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(db) as s:
        s.add(EncounterRow(encounter_id="E-1", purpose="enforce", reply_to="r", partners=["mx"]))
        s.commit()
    first, second = session_for(db), session_for(db)
    a = EncounterViews.load(first, ["E-1"]).updated("us", "E-1", "m1", "result")
    b = EncounterViews.load(second, ["E-1"]).updated("us", "E-1", "m2", "result")
    first.add_all(a.rows)
    first.commit()
    second.add_all(b.rows)
    with pytest.raises(StaleDataError):
        second.commit()
    with session_for(db) as s:
        assert s.get(EncounterRow, "E-1").revision == 1


def test_an_unreadable_enrolment_row_is_skipped_and_searches_go_on(hub):
    from biox.store import EnrolledTemplates

    with hub.session("us") as s:
        s.add(EnrolledTemplates(record_id=(1 << 61) + 1, biometrics=b"\xc1 broken"))
        s.commit()
    matcher = hub.handler("us", "query")
    matcher.follower.synced_at = float("-inf")  # type: ignore[attr-defined]
    out = encounter("mx", person_known_to("us"))
    hub.run([out])
    assert outcome(hub.latest(out.envelope.correlation_id), "us").status.value == "match"


def test_an_encounter_enrolled_at_the_requesters_own_request_answers_partners_later(hub):
    """`enroll` on an encounter keeps it in the requester's own gallery, marked as its
    own data; a partner's later query about the same person matches it."""
    rng = np.random.default_rng(31)
    stranger = synth.stranger(SEED, dict.fromkeys(("us", "mx", "sv"), SIZE), rng)
    first = encounter("us", stranger, enroll=True)
    hub.run([first])
    with hub.session("us") as s:
        record = s.get(Record, enrolled_record_id(f"encounter/{first.envelope.correlation_id}"))
        assert record.source == "us" and record.retain_until is not None
    hub.handler("us", "query").follower.synced_at = float("-inf")
    out = encounter("mx", stranger, biometrics=synth.capture(SEED, stranger, context=77))
    hub.run([out])
    us = outcome(hub.latest(out.envelope.correlation_id), "us")
    assert us.status.value == "match" and us.candidates[0].identity_ref == record.identity_ref


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["retrieval.request", "retrieval.response", "review.decision"]),
    sender=st.sampled_from(["us", "mx", "sv", "zz"]),
    query_id=st.one_of(st.just("q-known"), st.text(min_size=1, max_size=20)),
    elements=st.lists(st.sampled_from(list(Element)), min_size=1, max_size=4),
    status=st.sampled_from(["released", "declined", "rejected"]),
)
def test_workflow_messages_with_arbitrary_content_never_crash_a_handler(
    hub, kind, sender, query_id, elements, status
):
    """Well-formed but arbitrary retrieval and review messages, from anyone: each handler
    answers, refuses with a reason, or asks for a retry; none raises."""
    from biox.wire.messages import RetrievalRequest, RetrievalResponse, ReviewDecision

    now = datetime.now(UTC)
    if kind == "retrieval.request":
        message = RetrievalRequest(
            retrieval_id="r-" + query_id,
            query_id=query_id,
            asker=sender,
            holder="us",
            identity_ref="MX-000000001",
            elements=elements,
            sent_at=now,
        )
        mid = message.retrieval_id
    elif kind == "retrieval.response":
        message = RetrievalResponse(
            retrieval_id=query_id,
            query_id=query_id,
            asker="us",
            holder=sender,
            status=status,  # type: ignore[arg-type]
            released=elements,
            answered_at=now,
        )
        mid = str(uuid.uuid4())
    else:
        message = ReviewDecision(
            case_id=query_id,
            verdict="match",  # type: ignore[arg-type]
            identity_ref="US-000000001",
            examiner="x",
            decided_at=now,
        )
        mid = str(uuid.uuid4())
    # each kind of sender has its own way in (topology.entrances)
    way_in = "biox.us" if sender == "us" else f"biox.us.partners.{sender}"
    if kind == "encounter.submit" and sender == "us":
        way_in = "biox.us.submit"
    out = Outgoing(
        way_in,
        f"us.{kind}",
        codec.encode_body(message),
        Envelope(mid, kind, f"{kind}/1", sender, "us", query_id),
    )
    before = len(hub.exchange.broker.published)
    try:
        hub.exchange.publish(out)
    except Unroutable:  # a kind that way in does not take: the broker takes nothing
        return
    hub.exchange.run(retries=False)  # a handler exception would surface here
    hops = hub.exchange.broker.published[before + 1 :]
    assert all(m.properties.message_id for m in hops)
    for m in hops:  # whatever it caused is an answer, a retry hop or a dead letter
        reason = (m.properties.headers or {}).get("biox-reason")
        assert reason is None or reason in {r.value for r in Reason}, reason
    for code in ("us", "mx", "sv"):
        for role in ("response", "retrieval", "review"):
            hub.exchange.take(f"{code}.{role}.retry.1")  # leave no tier for the next example


# --- identities and signatures (docs/security.md) -------------------------------------------


def test_forged_partner_messages_are_refused_by_reason_answered_never_and_audited(hub):
    """A query as the broker and the signature must prove it: sv cannot speak for us, a
    signature cannot be lifted onto another message, and nothing unsigned gets in."""
    hub.run([encounter("us", 11)])
    real = next(m for m in reversed(hub.sent("query")) if m.properties.headers["biox-to"] == "mx")
    env = read_envelope(real.properties)
    plain = hub.exchange.opened(real)
    rings = hub.exchange.keys

    def variant(mid: str, body: bytes, **change: Any) -> Outgoing:
        return Outgoing(
            real.exchange, real.routing_key, body, replace(env, message_id=mid, **change)
        )

    def sv_as_us(mid: str) -> Outgoing:  # sv seals and signs a query of its own as "us"
        own = rings["sv"].seal(
            Outgoing(
                real.exchange, real.routing_key, plain, replace(env, message_id=mid, sender="sv")
            )
        )
        return Outgoing(own.exchange, own.routing_key, own.body, replace(own.envelope, sender="us"))

    cases = {
        # (the message, the broker user it arrives under): the reason mx gives
        "lifted": (variant("f-lifted", real.body), "us.workers", Reason.bad_signature),
        "sv-speaks": (variant("f-speaks", real.body), "sv.workers", Reason.forged_sender),
        "sv-signs": (sv_as_us("f-signs"), "us.workers", Reason.bad_signature),
        "unsigned": (
            variant("f-unsigned", plain, headers={}),
            "us.workers",
            Reason.unsigned,
        ),
        "no-user": (variant("f-guest", real.body), "guest", Reason.unauthenticated),
        "unknown-key": (
            variant("f-key", real.body, headers={**env.headers, "biox-signing-key": "us-old"}),
            "us.workers",
            Reason.unknown_key,
        ),
    }
    answers_before = len(hub.sent("response"))
    with hub.session("mx") as s:
        kept_before = len(s.exec(select(Transaction)).all())
    for name, (out, user, _) in cases.items():
        hub.exchange.publish(out, user=user, seal=False)
        hub.exchange.run(retries=False)
        assert hub.exchange.dead_letters("mx", "query"), name
    dead = {
        m.properties.message_id: m.properties.headers["biox-reason"]
        for m in hub.exchange.dead_letters("mx", "query")
    }
    for name, (out, _, reason) in cases.items():
        assert dead[out.envelope.message_id] == reason.value, name
    assert len(hub.sent("response")) == answers_before  # nobody was answered
    with hub.session("mx") as s:
        assert len(s.exec(select(Transaction)).all()) == kept_before  # nothing kept
        assert (
            s.exec(
                select(ProcessedMessage).where(
                    col(ProcessedMessage.message_id).in_(
                        [o.envelope.message_id for o, *_ in cases.values()]
                    )
                )
            ).all()
            == []
        )
        trail = {
            e.message_id: e.reason
            for e in s.exec(select(AuditEntry).where(AuditEntry.direction == "dead-letter"))
        }
    for name, (out, _, reason) in cases.items():
        assert trail[out.envelope.message_id] == reason.value, name
    # and the real one, sent again as it was, is just a duplicate: sealed bytes verify
    hub.exchange.publish(variant(env.message_id, real.body), user="us.workers", seal=False)
    hub.exchange.run(retries=False)
    assert env.message_id not in dead


def test_partner_messages_cross_only_as_ciphertext(hub):
    before = len(hub.exchange.broker.published)
    hub.run([encounter("us", 12)])
    crossed = [
        m
        for m in hub.exchange.broker.published[before:]
        if m.properties.type in ("query", "response")
    ]
    assert {m.properties.type for m in crossed} == {"query", "response"}
    for m in crossed:
        plain = hub.exchange.opened(m)
        assert m.body != plain
        assert plain[8:40] not in m.body  # no stretch of the plaintext shows through
        assert m.properties.user_id == f"{m.properties.headers['biox-from']}.workers"
    # and each side's audit trail has them, going out from one and in at the other
    for m in crossed:
        mid, frm, to = (
            m.properties.message_id,
            *(m.properties.headers[h] for h in ("biox-from", "biox-to")),
        )
        with hub.session(frm) as s:
            out = s.exec(select(AuditEntry).where(AuditEntry.message_id == mid)).all()
        with hub.session(to) as s:
            into = s.exec(select(AuditEntry).where(AuditEntry.message_id == mid)).all()
        assert [(e.direction, e.provenance) for e in out] == [("out", frm)]
        assert [(e.direction, e.provenance) for e in into] == [("in", frm)]
