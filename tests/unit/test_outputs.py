"""Every message and row a handler produces, compared whole.

The other handler tests check the decision; these check that what goes out says all it
should: every field of a query, an answer, a refusal, a review case, a retrieval and the
rows kept with them. A field left out or filled with the wrong value fails here, whatever
path the message takes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from biox.database import session_for
from biox.gallery.gallery import Hit
from biox.handlers.base import Effects
from biox.handlers.intake import IntakeHandler
from biox.handlers.matcher import MatcherHandler
from biox.policy.release import Policies
from biox.registry import Purpose
from biox.settings import Settings
from biox.sim import synth
from biox.store import EncounterRow, Record, Transaction
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.errors import REASON_TEXT, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import (
    Biographic,
    Biometrics,
    Element,
    Encounter,
    EncounterResult,
    EncounterSubmit,
    Query,
    References,
    Response,
    RetrievalRequest,
    RetrievalResponse,
    ReviewCase,
    SubjectStatus,
)
from tests.registry import operating
from tests.unit.test_matcher import ScriptedGallery, record

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))
AT = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
BIO = synth.capture(5, 77, context=1)
WHO = Biographic(family_name="Cruz", given_names="Ana", date_of_birth="1990-05-01")
WHERE = Encounter(encountered_at=AT - timedelta(hours=2), country="us", location="SYS-POE-3")


def env(kind: str, sender: str, recipient: str, mid: str, **kw) -> Envelope:
    return Envelope(mid, kind, f"{kind}/1", sender, recipient, timestamp=AT, **kw)


def decode(out: codec.Outgoing, model):
    return codec.decode_body(model, out.envelope.schema, out.body)


# --- intake ------------------------------------------------------------------------------------


def a_submission(**changes) -> EncounterSubmit:
    values = {
        "encounter_id": "E-77",
        "purpose": Purpose.enforce,
        "subject_status": SubjectStatus(citizenships=["gt"], permanent_residences=["ca"]),
        "biometrics": BIO,
        "biographic": WHO,
        "encounter": WHERE,
        "person_centric_id": "us-pcn-77",
        **changes,
    }
    return EncounterSubmit(**values)


def test_intake_sends_each_partner_the_whole_query_and_keeps_what_it_sent(tmp_path):
    """A us encounter of a Guatemalan resident in Canada: a third country national for
    both pairs, so us asks mx and sv."""
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e = env("encounter.submit", "us", "us", "sub-1", correlation_id="E-77", reply_to="rq")
    with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
        [effects] = handler.submit([Inbound(e, a_submission())], s)
    assert isinstance(effects, Effects) and effects.outcome == "queried:2"
    queries = [o for o in effects.outgoing if o.envelope.kind == "query"]
    for out, partner in zip(queries, ("mx", "sv"), strict=True):
        qid = codec.derived_id("sub-1", "query", partner)
        query = decode(out, Query)
        assert query.created_at == AT and query.sent_at >= AT
        assert query.model_dump(exclude={"created_at", "sent_at"}) == {
            "query_id": qid,
            "requesting": "us",
            "providing": partner,
            "purpose": Purpose.enforce,
            "references": {
                "transaction_id": qid,
                "encounter_id": "E-77",
                "person_centric_id": "us-pcn-77",
            },
            "subject_status": {"citizenships": ["gt"], "permanent_residences": ["ca"]},
            "biometrics": BIO.model_dump(),
            "biographic": WHO.model_dump(),
            "encounter": WHERE.model_dump(),
        }
        assert (out.exchange, out.routing_key) == ("biox.us.out", f"{partner}.query")
        assert (out.envelope.sender, out.envelope.recipient) == ("us", partner)
        assert out.envelope.message_id == out.envelope.correlation_id == qid
    encounter, *txs = effects.rows
    assert isinstance(encounter, EncounterRow)
    assert encounter.model_dump(exclude={"retain_until", "revision", "status"}) == {
        "encounter_id": "E-77",
        "purpose": "enforce",
        "reply_to": "rq",
        "partners": ["mx", "sv"],
        "skipped": {},
        "person_centric_id": "us-pcn-77",
        "biographic": WHO.model_dump(mode="json", exclude_none=True),
        "encounter": WHERE.model_dump(mode="json", exclude_none=True),
        "submitted_at": AT,
        "source_message_id": "sub-1",
    }
    for tx, partner in zip(txs, ("mx", "sv"), strict=True):
        assert isinstance(tx, Transaction)
        assert (tx.query_id, tx.role, tx.encounter_id) == (
            codec.derived_id("sub-1", "query", partner),
            "requester",
            "E-77",
        )
        assert (tx.requesting, tx.providing, tx.purpose, tx.reply_to, tx.status) == (
            "us",
            partner,
            "enforce",
            "rq",
            "pending",
        )
        assert tx.created_at == AT and tx.sent_at is not None and tx.sent_at >= AT


def test_an_encounter_without_a_timestamp_is_dated_when_intake_takes_it(tmp_path):
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e = Envelope("sub-2", "encounter.submit", "encounter.submit/1", "us", "us", "E-78", "rq")
    before = datetime.now(UTC)
    with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
        [effects] = handler.submit([Inbound(e, a_submission(encounter_id="E-78"))], s)
    assert isinstance(effects, Effects)
    encounter = effects.rows[0]
    assert encounter.submitted_at >= before
    assert decode(effects.outgoing[0], Query).created_at >= before


def test_intake_enrols_an_encounter_only_when_asked_and_says_so(tmp_path):
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e = env("encounter.submit", "us", "us", "sub-3", correlation_id="E-79", reply_to="rq")
    with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
        no_place = Encounter(encountered_at=AT, country="us")  # location not known
        sub = a_submission(encounter_id="E-79", enroll=True, encounter=no_place)
        [effects] = handler.submit([Inbound(e, sub)], s)
    assert isinstance(effects, Effects) and effects.outcome == "queried:2:enrolled"
    record_row = next(r for r in effects.rows if isinstance(r, Record))
    assert (record_row.source, record_row.source_query_id) == ("us", None)
    assert record_row.source_message_id == "sub-3"
    assert record_row.person_centric_id == "us-pcn-77"  # links the enrolment to the person
    # kept as sent: a field the encounter system left out is not stored as a null
    encounter_row = next(r for r in effects.rows if isinstance(r, EncounterRow))
    assert encounter_row.encounter == {
        "encountered_at": AT.isoformat().replace("+00:00", "Z"),
        "country": "us",
        "type": "border",
    }
    assert record_row.encounters == [encounter_row.encounter]
    assert record_row.retain_until - record_row.received_at == timedelta(days=27375)


@pytest.mark.parametrize(
    ("detail", "said"),
    [("encounter E-77", "encounter E-77"), ("", REASON_TEXT[Reason.duplicate_encounter])],
)
def test_a_refusal_is_a_whole_result_on_reply_to_under_a_derived_id(detail, said):
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e = env("encounter.submit", "us", "us", "sub-4", correlation_id="E-77", reply_to="rq")
    answer = handler.reject(e, PermanentError(Reason.duplicate_encounter, detail))
    assert answer is not None and answer.outcome == "refused:duplicate_encounter"
    [out] = answer.outgoing
    result = decode(out, EncounterResult)
    assert result.model_dump(exclude={"updated_at"}) == {
        "encounter_id": "E-77",
        "requesting": "us",
        "status": "refused",
        "submission_id": "sub-4",  # the resubmission refused, not the first submission
        "revision": 0,
        "outcomes": [],
        "reason_code": Reason.duplicate_encounter,
        "reason": said,
    }
    assert (out.exchange, out.routing_key) == ("biox.us.results", "rq")
    assert out.envelope.message_id == codec.derived_id("sub-4", "refused")
    assert (out.envelope.sender, out.envelope.correlation_id) == ("us", "E-77")


def test_a_refusal_for_every_partner_names_each_partners_reason(tmp_path):
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e = env("encounter.submit", "us", "us", "sub-5", correlation_id="E-80", reply_to="rq")
    us_citizen = a_submission(
        encounter_id="E-80", subject_status=SubjectStatus(citizenships=["us"])
    )
    with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
        [error] = handler.submit([Inbound(e, us_citizen)], s)
    assert isinstance(error, PermanentError) and error.reason is Reason.excluded_citizen
    text = REASON_TEXT[Reason.excluded_citizen]
    assert error.detail == f"no partner may be queried (mx: {text}, sv: {text})"


def test_intake_refuses_no_biometrics_and_unagreed_purposes_with_their_reasons(tmp_path):
    handler = IntakeHandler("sv", REGISTRY, POLICIES.of("sv"))
    e = env("encounter.submit", "sv", "sv", "sub-6", correlation_id="E-81", reply_to="rq")
    e82 = env("encounter.submit", "sv", "sv", "sub-7", correlation_id="E-82", reply_to="rq")
    here = WHERE.model_copy(update={"country": "sv"})
    with session_for(f"sqlite:///{tmp_path / 'sv.db'}") as s:
        empty, unagreed = handler.submit(
            [
                Inbound(
                    e, a_submission(encounter_id="E-81", encounter=here, biometrics=Biometrics())
                ),
                Inbound(
                    e82,
                    a_submission(encounter_id="E-82", encounter=here, purpose=Purpose.adjudicate),
                ),
            ],
            s,
        )
    assert isinstance(empty, PermanentError) and empty.reason is Reason.no_biometrics
    assert isinstance(unagreed, PermanentError) and unagreed.reason is Reason.no_partner
    assert unagreed.detail == "purpose adjudicate"


# --- the matcher and the answers it words ------------------------------------------------------


@pytest.fixture
def mx_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add_all([record(1), record(2), record(3)])
        s.commit()
    return url


def a_query(qid: str = "q-1", purpose: Purpose = Purpose.enforce) -> Query:
    return Query(
        query_id=qid,
        requesting="us",
        providing="mx",
        purpose=purpose,
        references=References(transaction_id=qid, encounter_id="E-77"),
        subject_status=SubjectStatus(citizenships=["gt"]),
        biometrics=Biometrics(face=BIO.face, fingerprints=BIO.fingerprints[:1]),
        biographic=WHO,
        encounter=WHERE,
        created_at=AT - timedelta(minutes=1),
        sent_at=AT,
    )


def run_matcher(db: str, hits: list[Hit], query: Query | None = None, registry=REGISTRY):
    settings = Settings(threshold_high=0.55, threshold_low=0.30, gallery_sync_s=3600)
    handler = MatcherHandler("mx", registry, ScriptedGallery(hits), settings, POLICIES.of("mx"))  # type: ignore[arg-type]
    handler.follower.synced_at = float("inf")
    q = query or a_query()
    e = env("query", "us", "mx", "qm-1", correlation_id=q.query_id)
    with session_for(db) as s:
        [effects] = handler.search([Inbound(e, q)], s)
    assert isinstance(effects, Effects)
    return handler, effects


def test_a_match_is_the_whole_answer_the_policy_allows(mx_db):
    _, effects = run_matcher(mx_db, [Hit(1, 0.9, {"face": 0.9, "finger": 0.8})])
    assert effects.outcome == "match"
    answer = decode(effects.outgoing[0], Response)
    assert answer.timings.received_at <= answer.timings.answered_at
    assert answer.model_dump(exclude={"timings"}) == {
        "query_id": "q-1",
        "requesting": "us",
        "providing": "mx",
        "status": "match",
        "candidates": [
            {
                "identity_ref": "MX-000000001",
                "fused_score": 0.9,
                "scores": {"face": 0.9, "finger": 0.8},
                "evidence": None,  # no calibration: the mean rule decided
                "record": {
                    "identity_ref": "MX-000000001",
                    "person_centric_id": "mx-pcn-1",
                    "biographic": {
                        "family_name": "Name1",
                        "given_names": None,
                        "date_of_birth": "1980-01-02",
                        "sex": None,
                        "claimed_nationality": None,
                        "place_of_birth": None,
                        "document_number": None,
                    },
                    "encounters": [
                        {
                            "encountered_at": datetime(2025, 1, 1, tzinfo=UTC),
                            "country": "mx",
                            "type": "border",
                            "location": None,
                        }
                    ],
                    "derogatory": ["visa overstay"],
                },
            }
        ],
        "conditions": ["no onward disclosure without consent (§15)"],
        "withheld": [],
        "decided_by": "automatic",
        "reason_code": None,
        "reason": None,
    }
    tx = effects.rows[0]
    assert isinstance(tx, Transaction)
    assert tx.model_dump(exclude={"answer", "answered_at", "received_at", "retain_until"}) == {
        "query_id": "q-1",
        "role": "provider",
        "encounter_id": "E-77",
        "requesting": "us",
        "providing": "mx",
        "purpose": "enforce",
        "reply_to": None,
        "created_at": AT - timedelta(minutes=1),
        "sent_at": AT,
        "status": "match",
        "reason_code": None,
        "top_score": 0.9,
        "source": "us",
        "source_message_id": "qm-1",
        "conditions": [],
        "blocked_at": None,
        "corrected_at": None,
        "withdrawn_from": None,
        "answer_due": None,  # a requester's deadline: the provider keeps none
        "timed_out_at": None,
    }
    # the provider's record of a partner's query is partner data too: kept as long as mx
    # keeps what it receives (§21), then purged
    assert tx.retain_until - tx.received_at == timedelta(days=3650)
    assert tx.answered_at == answer.timings.answered_at
    assert tx.answer == answer.model_dump(mode="json", exclude={"requesting"})


def test_a_gray_zone_answer_and_its_case_say_all_an_examiner_needs(mx_db):
    _, effects = run_matcher(mx_db, [Hit(2, 0.45, {"face": 0.45}), Hit(3, 0.2, {"face": 0.2})])
    assert effects.outcome == "pending_review"
    answer, case_out = effects.outgoing
    pending = decode(answer, Response)
    assert pending.status == "pending_review" and pending.decided_by == "examiner"
    assert pending.reason == "a candidate scored between the thresholds: an examiner decides (§8)"
    assert pending.reason_code is None and pending.candidates == []
    case = decode(case_out, ReviewCase)
    assert case.model_dump(exclude={"opened_at"}) == {
        "case_id": "q-1",
        "query_id": "q-1",
        "requesting": "us",
        "purpose": "enforce",
        "probe_biographic": WHO.model_dump(),
        "probe_modalities": ["face", f"finger.{BIO.fingerprints[0].position}"],
        "encounter": WHERE.model_dump(),
        "candidates": [
            {
                "identity_ref": "MX-000000002",
                "fused_score": 0.45,
                "scores": {"face": 0.45},
                "evidence": None,
            }
        ],
    }
    assert case.opened_at == pending.timings.received_at
    assert case_out.envelope.correlation_id == "q-1"
    assert effects.rows[0].status == "pending_review" and effects.rows[0].top_score == 0.45


def test_a_probe_of_irises_alone_lists_only_its_irises_for_the_examiner(mx_db):
    irises = next(b.irises for n in range(100) if (b := synth.capture(5, n, context=1)).irises)
    query = a_query().model_copy(update={"biometrics": Biometrics(irises=irises)})
    # a pair whose agreement does not require fingerprints (§5a: us and mx's does)
    lenient = REGISTRY.model_copy(deep=True)
    lenient.participants["mx"].agreements["us"].query_requires = []
    _, effects = run_matcher(mx_db, [Hit(2, 0.45, {"iris": 0.45})], query, lenient)
    case = decode(effects.outgoing[1], ReviewCase)
    assert case.probe_modalities == [f"iris.{i.eye}" for i in irises]


def test_a_query_without_the_fingerprints_the_agreement_requires_is_rejected(mx_db):
    """§5a (issue 20 (8)): mx requires fingerprints in every query from us."""
    face = synth.capture(5, 1, context=1).face
    query = a_query().model_copy(update={"biometrics": Biometrics(face=face)})
    handler = MatcherHandler("mx", REGISTRY, ScriptedGallery([]), Settings(), POLICIES.of("mx"))  # type: ignore[arg-type]
    handler.follower.synced_at = float("inf")
    e = env("query", "us", "mx", "qm-9", correlation_id=query.query_id)
    with session_for(mx_db) as s:
        [result] = handler.search([Inbound(e, query)], s)
    assert isinstance(result, PermanentError)
    assert (result.reason, result.detail) == (Reason.biometrics_required, "no fingerprints")


def test_a_decline_names_its_reason_requester_and_purpose(mx_db):
    handler = MatcherHandler("sv", REGISTRY, ScriptedGallery([]), Settings(), POLICIES.of("sv"))  # type: ignore[arg-type]
    handler.follower.synced_at = float("inf")
    q = a_query(purpose=Purpose.adjudicate).model_copy(update={"providing": "sv"})
    with session_for(mx_db) as s:
        [effects] = handler.search([Inbound(env("query", "us", "sv", "qm-2"), q)], s)
    assert isinstance(effects, Effects) and effects.outcome == "declined:purpose_not_agreed"
    declined = decode(effects.outgoing[0], Response)
    assert declined.reason_code is Reason.purpose_not_agreed
    assert declined.reason == (
        f"{REASON_TEXT[Reason.purpose_not_agreed]}: requester us, purpose adjudicate"
    )
    assert effects.rows[0].status == "declined"
    assert effects.rows[0].reason_code == "purpose_not_agreed"


@pytest.mark.parametrize(
    ("detail", "said"),
    [("face: 12 bytes", "face: 12 bytes"), ("", REASON_TEXT[Reason.template_size])],
)
def test_a_rejection_is_a_whole_answer_to_the_sender(detail, said):
    handler = MatcherHandler("mx", REGISTRY, ScriptedGallery([]), Settings(), POLICIES.of("mx"))  # type: ignore[arg-type]
    e = env("query", "us", "mx", "qm-3", correlation_id="q-9")
    answer = handler.reject(e, PermanentError(Reason.template_size, detail))
    assert answer is not None and answer.outcome == "rejected:template_size"
    rejected = decode(answer.outgoing[0], Response)
    assert rejected.model_dump(exclude={"timings"}) == {
        "query_id": "q-9",
        "requesting": "us",
        "providing": "mx",
        "status": "rejected",
        "candidates": [],
        "conditions": [],
        "withheld": [],
        "decided_by": "automatic",
        "reason_code": Reason.template_size,
        "reason": said,
    }
    assert answer.outgoing[0].envelope.correlation_id == "q-9"


# --- the requester: answers kept, the consolidated result --------------------------------------


@pytest.fixture
def us_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(
            EncounterRow(
                encounter_id="E-77", purpose="enforce", reply_to="rq", partners=["mx", "sv"]
            )
        )
        for partner, qid in (("mx", "q-mx"), ("sv", "q-sv")):
            s.add(
                Transaction(
                    query_id=qid,
                    role="requester",
                    encounter_id="E-77",
                    requesting="us",
                    providing=partner,
                    purpose="enforce",
                    reply_to="rq",
                    sent_at=AT,
                    status="pending",
                )
            )
        s.commit()
    return url


def a_response(status: str = "match", partner: str = "mx", qid: str = "q-mx", **kw) -> Response:
    values = {
        "query_id": qid,
        "requesting": "us",
        "providing": partner,
        "status": status,
        "timings": {"received_at": AT, "answered_at": AT + timedelta(seconds=1)},
        **kw,
    }
    return Response(**values)


def receive(db: str, response: Response, mid: str = "r-1") -> Effects:
    from biox.handlers.response import ResponseHandler

    handler = ResponseHandler("us", POLICIES.of("us"))
    e = env("response", response.providing, "us", mid, correlation_id=response.query_id)
    with session_for(db) as s:
        [effects] = handler.receive([Inbound(e, response)], s)
        assert isinstance(effects, Effects)
        s.add_all(effects.rows)
        s.commit()
    return effects


def test_an_answer_is_kept_marked_with_its_source_and_the_result_shows_every_partner(us_db):
    candidate = {
        "identity_ref": "MX-1",
        "fused_score": 0.91,
        "scores": {"face": 0.91},
        "record": {"identity_ref": "MX-1", "derogatory": ["overstay"]},
    }
    answer = a_response(
        candidates=[candidate], conditions=["no onward disclosure"], withheld=["encounters"]
    )
    effects = receive(us_db, answer)
    assert effects.outcome == "match"
    tx, encounter = effects.rows
    assert isinstance(tx, Transaction) and isinstance(encounter, EncounterRow)
    assert (tx.status, tx.reason_code, tx.top_score, tx.source, tx.source_message_id) == (
        "match",
        None,
        0.91,
        "mx",
        "r-1",
    )
    assert tx.answered_at == AT + timedelta(seconds=1) and tx.received_at is not None
    assert tx.conditions == ["no onward disclosure"]
    assert tx.answer == answer.model_dump(mode="json", exclude={"requesting"})
    assert tx.retain_until - tx.received_at == timedelta(days=27375)  # us keeps received data
    assert (encounter.revision, encounter.status) == (1, "pending")  # sv has not answered
    [out] = effects.outgoing
    assert out.envelope.message_id == codec.derived_id("r-1", "result")
    assert (out.exchange, out.routing_key, out.envelope.correlation_id) == (
        "biox.us.results",
        "rq",
        "E-77",
    )
    result = decode(out, EncounterResult)
    assert (result.encounter_id, result.requesting, result.status, result.revision) == (
        "E-77",
        "us",
        "pending",
        1,
    )
    mx, sv = result.outcomes
    assert mx.model_dump(exclude={"candidates"}) == {
        "partner": "mx",
        "query_id": "q-mx",
        "status": "match",
        "conditions": ["no onward disclosure"],
        "withheld": ["encounters"],
        "decided_by": "automatic",
        "reason_code": None,
        "reason": None,
        "sent_at": AT,
        "answer_due": None,
        "answered_at": AT + timedelta(seconds=1),
        "corrected_at": None,
        "retrievals": [],
    }
    assert mx.candidates[0].identity_ref == "MX-1"
    assert mx.candidates[0].record.derogatory == ["overstay"]
    assert sv.model_dump() == {
        "partner": "sv",
        "query_id": "q-sv",
        "status": "pending",
        "candidates": [],
        "conditions": [],
        "withheld": [],
        "decided_by": None,
        "reason_code": None,
        "reason": None,
        "sent_at": AT,
        "answer_due": None,
        "answered_at": None,
        "corrected_at": None,
        "retrievals": [],
    }


def test_the_result_is_complete_once_every_partner_gave_a_final_answer(us_db):
    receive(us_db, a_response("pending_review", reason="an examiner decides"), "r-1")
    second = receive(
        us_db,
        a_response("declined", "sv", "q-sv", reason_code="release_not_agreed", reason="no rule"),
        "r-2",
    )
    result = decode(second.outgoing[0], EncounterResult)
    assert (result.status, result.revision) == ("pending", 2)  # mx is still being reviewed
    assert [o.status for o in result.outcomes] == ["pending_review", "declined"]
    assert result.outcomes[1].reason_code is Reason.release_not_agreed
    assert second.rows[0].retain_until is None  # nothing released: nothing kept to purge
    final = receive(us_db, a_response("no_match", decided_by="examiner"), "r-3")
    done = decode(final.outgoing[0], EncounterResult)
    assert (done.status, done.revision) == ("complete", 3)
    assert done.outcomes[0].decided_by == "examiner"
    with session_for(us_db) as s:
        assert s.get(EncounterRow, "E-77").status == "complete"


def test_a_second_final_answer_changes_nothing_and_sends_nothing(us_db):
    receive(us_db, a_response("no_match"), "r-1")
    again = receive(us_db, a_response("match", candidates=[]), "r-2")
    assert again.outcome == "superseded" and again.rows == [] and again.outgoing == []
    with session_for(us_db) as s:
        assert s.get(Transaction, ("q-mx", "requester")).status == "no_match"


def test_an_encounter_without_reply_to_is_updated_but_nobody_is_sent_anything(us_db):
    with session_for(us_db) as s:
        s.get(EncounterRow, "E-77").reply_to = None
        s.commit()
    effects = receive(us_db, a_response("no_match"))
    assert effects.outgoing == [] and effects.rows[1].revision == 1


# --- review cases kept, retrievals asked, answered and received --------------------------------


def test_a_review_case_is_kept_whole_with_the_probe_datas_source(tmp_path):
    from biox.handlers.review import ReviewHandler
    from biox.store import ReviewCaseRow
    from biox.wire.messages import ReviewCandidate

    case = ReviewCase(
        case_id="q-1",
        query_id="q-1",
        requesting="us",
        purpose=Purpose.enforce,
        probe_biographic=WHO,
        probe_modalities=["face"],
        encounter=WHERE,
        candidates=[ReviewCandidate(identity_ref="MX-2", fused_score=0.4, scores={"face": 0.4})],
        opened_at=AT,
    )
    handler = ReviewHandler("mx", POLICIES.of("mx"))
    e = env("review.case", "mx", "mx", "c-1")
    with session_for(f"sqlite:///{tmp_path / 'mx.db'}") as s:
        [effects] = handler.open([Inbound(e, case)], s)
        assert isinstance(effects, Effects) and effects.outcome == "case_opened"
        [row] = effects.rows
        assert isinstance(row, ReviewCaseRow)
        assert row.model_dump(exclude={"retain_until"}) == {
            "case_id": "q-1",
            "query_id": "q-1",
            "requesting": "us",
            "purpose": "enforce",
            "opened_at": AT,
            "status": "pending",
            "candidates": [
                {
                    "identity_ref": "MX-2",
                    "fused_score": 0.4,
                    "scores": {"face": 0.4},
                    "evidence": None,
                }
            ],
            "probe_biographic": WHO.model_dump(mode="json", exclude_none=True),
            "probe_modalities": ["face"],
            "encounter": WHERE.model_dump(mode="json", exclude_none=True),
            "source": "us",
            "source_message_id": "c-1",
            "examiner": None,
            "taken_at": None,
            "decided_at": None,
            "verdict": None,
            "identity_ref": None,
            "note": None,
        }
        assert row.retain_until == AT + timedelta(days=3650)  # mx keeps received data 10 years
        s.add(row)
        s.commit()
        [again] = handler.open([Inbound(env("review.case", "mx", "mx", "c-2"), case)], s)
    assert isinstance(again, Effects) and again.outcome == "case_exists" and again.rows == []

    # a case whose encounter has no location keeps none: no invented null
    unplaced = Encounter(encountered_at=AT, country="us")
    nowhere = case.model_copy(update={"case_id": "q-2", "query_id": "q-2", "encounter": unplaced})
    with session_for(f"sqlite:///{tmp_path / 'mx.db'}") as s:
        [kept] = handler.open([Inbound(env("review.case", "mx", "mx", "c-3"), nowhere)], s)
    assert isinstance(kept, Effects)
    assert "location" not in kept.rows[0].encounter
    assert kept.rows[0].candidates == [
        {"identity_ref": "MX-2", "fused_score": 0.4, "scores": {"face": 0.4}, "evidence": None}
    ]


@pytest.fixture
def retrieval_db(tmp_path) -> str:
    """mx answered q-1 (from us) with a match; us has the encounter behind it."""
    url = f"sqlite:///{tmp_path / 'both.db'}"
    answer = {"candidates": [{"identity_ref": "MX-000000001"}]}
    with session_for(url) as s:
        s.add(
            Transaction(
                query_id="q-1",
                role="provider",
                encounter_id="E-77",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                answer=answer,
            )
        )
        s.add(
            Transaction(
                query_id="q-1",
                role="requester",
                encounter_id="E-77",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                answer={"status": "match"},
            )
        )
        s.add(
            EncounterRow(
                encounter_id="E-77",
                purpose="enforce",
                reply_to="rq",
                partners=["mx"],
                person_centric_id="us-pcn-77",
                biographic=WHO.model_dump(mode="json", exclude_none=True),
                encounter=WHERE.model_dump(mode="json", exclude_none=True),
            )
        )
        s.commit()
    return url


def retrieval(me: str, db: str, kind: str, message, sender: str, mid: str):
    from biox.handlers.retrieval import RetrievalHandler
    from biox.routes import ROUTES

    handler = RetrievalHandler(me, REGISTRY, POLICIES.of(me))
    e = env(kind, sender, me, mid, correlation_id="q-1")
    with session_for(db) as s:
        [effects] = ROUTES.routes[kind].handler(handler, [Inbound(e, message)], s)
        if isinstance(effects, Effects):
            s.add_all(effects.rows)
            s.commit()
    return effects


def test_a_retrieval_goes_out_whole_is_answered_whole_and_is_kept_with_its_source(retrieval_db):
    from biox.store import RetrievalRow
    from biox.wire.messages import Element, RetrievalAsk, RetrievalRequest, RetrievalResponse

    ask = RetrievalAsk(
        query_id="q-1",
        elements=[Element.biographic, Element.derogatory],
        asked_by="op-1",
        justification="identity check",
    )
    asked = retrieval("mx", retrieval_db, "retrieval.ask", ask, "mx", "ask-1")
    assert isinstance(asked, Effects) and asked.outcome == "asked"
    rid = codec.derived_id("ask-1", "retrieval.request")
    [out] = asked.outgoing
    request = decode(out, RetrievalRequest)
    assert request.model_dump(exclude={"sent_at"}) == {
        "retrieval_id": rid,
        "query_id": "q-1",
        "asker": "mx",
        "holder": "us",
        "identity_ref": "MX-000000001",
        "elements": ["biographic", "derogatory"],
        "justification": "identity check",
    }
    assert (out.exchange, out.routing_key) == ("biox.mx.out", "us.retrieval.request")
    assert out.envelope.message_id == rid and out.envelope.correlation_id == "q-1"
    [mine] = asked.rows
    assert isinstance(mine, RetrievalRow)
    assert (mine.retrieval_id, mine.role, mine.query_id, mine.asker, mine.holder) == (
        rid,
        "asker",
        "q-1",
        "mx",
        "us",
    )
    assert (mine.identity_ref, mine.elements, mine.asked_by, mine.justification) == (
        "MX-000000001",
        ["biographic", "derogatory"],
        "op-1",
        "identity check",
    )
    assert mine.asked_at == request.sent_at and mine.status == "pending"

    answered = retrieval("us", retrieval_db, "retrieval.request", request, "mx", rid)
    assert isinstance(answered, Effects) and answered.outcome == "answered:released"
    reply, result = answered.outgoing
    response = decode(reply, RetrievalResponse)
    assert response.model_dump(exclude={"answered_at"}) == {
        "retrieval_id": rid,
        "query_id": "q-1",
        "asker": "mx",
        "holder": "us",
        "status": "released",
        "released": ["biographic", "derogatory"],
        "withheld": [],
        "data": {
            "identity_ref": "E-77",
            "person_centric_id": None,
            "biographic": WHO.model_dump(),
            "encounters": [],
            "derogatory": [],
        },
        "conditions": ["no onward disclosure without consent (§15)"],
        "reason_code": None,
        "reason": None,
    }
    assert reply.envelope.message_id == codec.derived_id(rid, "retrieval.response")
    assert reply.routing_key == "mx.retrieval.response"
    assert result.envelope.message_id == codec.derived_id(rid, "retrieval-result")
    held = next(r for r in answered.rows if isinstance(r, RetrievalRow))
    assert (held.role, held.asker, held.holder, held.status) == ("holder", "mx", "us", "released")
    assert (held.released, held.withheld, held.reason_code) == (
        ["biographic", "derogatory"],
        [],
        None,
    )
    assert held.elements == ["biographic", "derogatory"] and held.asked_at == request.sent_at
    notes = decode(result, EncounterResult).outcomes[0].retrievals
    assert [(n.retrieval_id, n.status, n.released) for n in notes] == [
        (rid, "released", ["biographic", "derogatory"])
    ]

    kept = retrieval("mx", retrieval_db, "retrieval.response", response, "us", "resp-1")
    assert isinstance(kept, Effects) and kept.outcome == "received:released"
    [row] = kept.rows
    assert (row.status, row.released, row.withheld, row.reason_code) == (
        "released",
        ["biographic", "derogatory"],
        [],
        None,
    )
    assert row.data == response.data.model_dump(mode="json", exclude_none=True)
    assert row.conditions == response.conditions and row.answered_at == response.answered_at
    assert (row.source, row.source_message_id) == ("us", "resp-1")
    assert row.retain_until - row.received_at == timedelta(days=3650)
    again = retrieval("mx", retrieval_db, "retrieval.response", response, "us", "resp-2")
    assert isinstance(again, Effects) and again.outcome == "superseded" and again.rows == []


def a_request(mid: str, *elements: Element) -> RetrievalRequest:
    return RetrievalRequest(
        retrieval_id=mid,
        query_id="q-1",
        asker="mx",
        holder="us",
        identity_ref="MX-000000001",
        elements=list(elements),
        sent_at=AT,
    )


def test_a_retrieval_releases_the_reference_and_the_encounter_when_asked_and_allowed(retrieval_db):
    request = a_request("r-1", Element.reference, Element.encounters)
    answered = retrieval("us", retrieval_db, "retrieval.request", request, "mx", "r-1")
    assert isinstance(answered, Effects) and answered.outcome == "answered:released"
    data = decode(answered.outgoing[0], RetrievalResponse).data
    assert data is not None and data.person_centric_id == "us-pcn-77"
    assert [e.model_dump() for e in data.encounters] == [WHERE.model_dump()]


def test_an_encounter_kept_without_its_details_releases_no_encounter(retrieval_db):
    with session_for(retrieval_db) as s:
        row = s.get(EncounterRow, "E-77")
        row.encounter = {}
        s.add(row)
        s.commit()
    request = a_request("r-2", Element.encounters)
    answered = retrieval("us", retrieval_db, "retrieval.request", request, "mx", "r-2")
    data = decode(answered.outgoing[0], RetrievalResponse).data
    assert data is not None and data.encounters == []


def test_a_retrieval_from_a_partner_our_policy_releases_nothing_to_is_declined(retrieval_db):
    from biox.handlers.retrieval import RetrievalHandler
    from biox.policy.release import ParticipantPolicy
    from biox.routes import ROUTES

    handler = RetrievalHandler("us", REGISTRY, ParticipantPolicy(release=[]))
    e = env("retrieval.request", "mx", "us", "r-3", correlation_id="q-1")
    with session_for(retrieval_db) as s:
        [effects] = ROUTES.routes["retrieval.request"].handler(
            handler, [Inbound(e, a_request("r-3", Element.biographic))], s
        )
    assert isinstance(effects, Effects) and effects.outcome == "answered:declined"
    response = decode(effects.outgoing[0], RetrievalResponse)
    assert response.reason_code is Reason.release_not_agreed
    assert response.withheld == [Element.biographic] and response.data is None


def test_a_retrieval_ask_about_a_query_not_matched_says_what_was_answered(retrieval_db):
    from biox.wire.messages import Element, RetrievalAsk

    none = retrieval(
        "mx",
        retrieval_db,
        "retrieval.ask",
        RetrievalAsk(query_id="q-none", elements=[Element.biographic], asked_by="o"),
        "mx",
        "ask-2",
    )
    assert isinstance(none, PermanentError) and none.reason is Reason.not_matched
    assert none.detail == "mx did not answer query q-none with a match (no such query)"
    with session_for(retrieval_db) as s:
        s.get(Transaction, ("q-1", "provider")).status = "no_match"
        s.commit()
    other = retrieval(
        "mx",
        retrieval_db,
        "retrieval.ask",
        RetrievalAsk(query_id="q-1", elements=[Element.biographic], asked_by="o"),
        "mx",
        "ask-3",
    )
    assert isinstance(other, PermanentError)
    assert other.detail == "mx did not answer query q-1 with a match (it answered no_match)"


def test_a_request_beyond_the_holders_policy_is_declined_with_every_element_withheld(
    retrieval_db,
):
    """us releases nothing derogatory for adjudication: asking for that alone is declined."""
    from biox.wire.messages import Element, RetrievalRequest, RetrievalResponse

    with session_for(retrieval_db) as s:
        s.get(Transaction, ("q-1", "requester")).purpose = "adjudicate"
        s.commit()
    request = RetrievalRequest(
        retrieval_id="r-9",
        query_id="q-1",
        asker="mx",
        holder="us",
        identity_ref="MX-1",
        elements=[Element.derogatory],
        sent_at=AT,
    )
    answered = retrieval("us", retrieval_db, "retrieval.request", request, "mx", "r-9")
    assert isinstance(answered, Effects) and answered.outcome == "answered:declined"
    declined = decode(answered.outgoing[0], RetrievalResponse)
    assert (declined.status, declined.reason_code) == ("declined", Reason.release_not_agreed)
    assert declined.reason == REASON_TEXT[Reason.release_not_agreed]
    assert declined.withheld == [Element.derogatory] and declined.released == []
    assert declined.data is None and declined.conditions == []


def test_retrievals_about_an_encounter_are_listed_oldest_first_pending_ones_without_status(
    us_db,
):
    from biox.queries.results import EncounterViews
    from biox.store import RetrievalRow

    with session_for(us_db) as s:
        for rid, minutes, status in (("r-new", 5, "pending"), ("r-old", 1, "released")):
            s.add(
                RetrievalRow(
                    retrieval_id=rid,
                    role="holder",
                    query_id="q-mx",
                    asker="mx",
                    holder="us",
                    identity_ref="MX-1",
                    elements=["biographic"],
                    asked_at=AT + timedelta(minutes=minutes),
                    status=status,
                    released=["biographic"] if status == "released" else [],
                )
            )
        s.add(
            RetrievalRow(
                retrieval_id="r-asked",
                role="asker",
                query_id="q-mx",
                asker="us",
                holder="mx",
                identity_ref="MX-1",
                elements=["biographic"],
            )
        )
        s.commit()
        views = EncounterViews.load(s, ["E-77"])
        [out] = views.updated("us", "E-77", "m-9", "result").outgoing
    result = decode(out, EncounterResult)
    notes = result.outcomes[0].retrievals
    assert [(n.retrieval_id, n.status) for n in notes] == [("r-old", "released"), ("r-new", None)]
    assert notes[0].released == ["biographic"] and notes[1].released == []
    assert result.outcomes[1].retrievals == []  # sv made none; our own asks are not listed
    assert views.transaction("q-sv").providing == "sv" and views.transaction("q-none") is None


@pytest.mark.parametrize("inactive", ["mx", "us"])
def test_no_retrieval_to_or_from_a_participant_that_is_not_active(retrieval_db, inactive):
    """§34, §36: mx asking us, or us answering mx, while either is not active."""
    from biox.agreement import participants
    from biox.registry import Status
    from biox.wire.messages import RetrievalAsk

    with session_for(retrieval_db) as s:  # one database here holds both sides
        participants.sync(s, REGISTRY)
        participants.set_status(s, inactive, Status.suspended, "operator:o")
        s.commit()
    ask = RetrievalAsk(query_id="q-1", elements=[Element.biographic], asked_by="op")
    refused = retrieval("mx", retrieval_db, "retrieval.ask", ask, "mx", "ask-9")
    assert isinstance(refused, PermanentError) and refused.reason is Reason.inactive_partner
    assert refused.detail == f"{inactive} is not active"

    answered = retrieval(
        "us", retrieval_db, "retrieval.request", a_request("r-9", Element.biographic), "mx", "r-9"
    )
    assert isinstance(answered, Effects) and answered.outcome == "answered:declined"
    response = decode(answered.outgoing[0], RetrievalResponse)
    assert response.reason_code is Reason.inactive_partner and response.data is None
    assert response.reason == f"{inactive} is not active (§34, §36)"


def test_an_erased_answer_is_not_kept_and_an_erased_message_touches_nothing_else(us_db):
    """Issue 20 (1), the response worker's own check: mx had its data under q-mx deleted
    before its answer arrived; and one message of sv's was erased, while sv's answer under
    another message stands."""
    from biox.agreement.ledgers import ErasureRow

    with session_for(us_db) as s:
        s.add(ErasureRow(source="mx", kind="query", key="q-mx", cause="notice:n"))
        s.add(ErasureRow(source="sv", kind="message", key="r-old", cause="notice:n"))
        s.commit()
    erased = receive(us_db, a_response("match", "mx", "q-mx"))
    assert erased.outcome == "erased" and erased.outgoing  # the result shows the withdrawal
    with session_for(us_db) as s:
        mx = s.get(Transaction, ("q-mx", "requester"))
        assert (mx.status, mx.answer) == ("withdrawn", None)
        assert mx.withdrawn_from == "match"  # answered so: the review counts it (§27)
    again = receive(us_db, a_response("match", "mx", "q-mx"), mid="r-again")
    assert (again.outcome, again.rows, again.outgoing) == ("erased", [], [])
    kept = receive(us_db, a_response("no_match", "sv", "q-sv"), mid="r-new")
    assert kept.outcome == "no_match"
    stale = receive(us_db, a_response("match", "sv", "q-sv"), mid="r-old")
    assert (stale.outcome, stale.rows, stale.outgoing) == ("erased", [], [])
    with session_for(us_db) as s:
        sv = s.get(Transaction, ("q-sv", "requester"))
        assert (sv.status, sv.answer["status"]) == ("no_match", "no_match")  # it stands
