"""The encounter-system contract (docs/integration.md), checked where it is decided:
strict decoding, templates refused at intake, reply_to and correlation_id required,
every participant in ``outcomes`` (skipped ones with their reason), the answer deadline,
and a refusal naming the submission it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import numpy as np
import pytest
from sqlmodel import select
from structlog.testing import capture_logs

from biox.database import session_for
from biox.handlers.intake import IntakeHandler
from biox.handlers.response import ResponseHandler
from biox.store import EncounterRow, Transaction
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import EncounterResult, EncounterSubmit, Face, Iris, SubjectStatus, utcnow
from tests.unit.test_outputs import (
    AT,
    POLICIES,
    REGISTRY,
    a_response,
    a_submission,
    decode,
    env,
    receive,
    us_db,  # noqa: F401 - the fixture
)


def wire(submission: EncounterSubmit, **replace: object) -> bytes:
    data = submission.model_dump(mode="python", exclude_none=True)
    for path, value in replace.items():
        node = data
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[leaf] = value
    return msgpack.packb(data, use_bin_type=True, datetime=True)


# --- strict decoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("biometrics__fingerprints__0__template", "AAAA", "msgpack bin"),
        ("biometrics__fingerprints__0__template", [1, 2, 3], "msgpack bin"),
        ("encounter__encountered_at", "2026-11-20T08:30:00Z", "msgpack timestamp"),
        ("encounter__encountered_at", 1763627400, "msgpack timestamp"),
    ],
)
def test_bytes_are_bytes_and_timestamps_are_timestamps_on_the_wire(field, value, said):
    body = wire(a_submission(), **{field: value})
    with pytest.raises(PermanentError) as refused:
        codec.decode_body(EncounterSubmit, "encounter.submit/1", body)
    assert refused.value.reason is Reason.invalid_message
    assert said in refused.value.detail
    assert field.replace("__", ".") in refused.value.detail  # the field is named


def test_the_same_body_with_real_bytes_and_a_timestamp_is_read():
    got = codec.decode_body(EncounterSubmit, "encounter.submit/1", wire(a_submission()))
    assert got == a_submission()


@pytest.mark.parametrize("born", ["1990", "1990-02", "1990-02-28", "2000-02-29", "0001-01-01"])
def test_a_date_of_birth_whole_or_partial_is_read(born):
    body = wire(a_submission(), biographic__date_of_birth=born)
    got = codec.decode_body(EncounterSubmit, "encounter.submit/1", body)
    assert got.biographic.date_of_birth == born


@pytest.mark.parametrize(
    "born",
    [
        "not-a-date",
        "1990-13",
        "1990-02-30",
        "1900-02-29",
        "90-02-01",
        "1990-2-1",
        "1990/02/01",
        "19900201",
        "1990-02-01T00:00",
        "0000",
        " 1990",
        "1990-00",
    ],
)
def test_a_date_of_birth_the_contract_does_not_write_is_refused_by_name(born):
    """The contract's `YYYY`, `YYYY-MM` or `YYYY-MM-DD` and a real day: anything else would
    be kept, released to a partner and searched (§26) as it came."""
    body = wire(a_submission(), biographic__date_of_birth=born)
    with pytest.raises(PermanentError) as refused:
        codec.decode_body(EncounterSubmit, "encounter.submit/1", body)
    assert refused.value.reason is Reason.invalid_message
    assert "biographic.date_of_birth" in refused.value.detail
    assert f"{born!r} is not an ISO 8601 date: YYYY, YYYY-MM or YYYY-MM-DD" in refused.value.detail


def test_a_date_of_birth_stored_before_the_check_still_reads():
    """Rows read back (the database's JSON) are not the wire: what was kept before the
    check reads as it was, so no record, answer or review case becomes unreadable."""
    from biox.wire.messages import Biographic

    assert Biographic.model_validate({"date_of_birth": "1990-13-45"}).date_of_birth == (
        "1990-13-45"
    )


# --- intake: what it refuses, and how ---------------------------------------------------------


def submit(db: str, sub: EncounterSubmit, mid: str = "sub-1", **envelope: object):
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"), answer_deadline_s=90)
    kw = {"reply_to": "us.replies.poe", "correlation_id": sub.encounter_id, **envelope}
    e = env("encounter.submit", "us", "us", mid, **kw)
    with session_for(db) as s:
        [result] = handler.submit([Inbound(e, sub)], s)
    return handler, e, result


def iris(code: bytes, mask: bytes) -> Iris:
    return Iris(eye="left", algorithm="biox-iris-2048/1", code=code, mask=mask)


BAD_TEMPLATES = {
    "unknown face algorithm": (
        {"face": Face(algorithm="vendor-x/2", template=b"\0" * 2048)},
        Reason.unknown_algorithm,
        "face algorithm 'vendor-x/2'",
    ),
    "short face template": (
        {"face": Face(algorithm="biox-face-512/1", template=b"\1" * 2047)},
        Reason.template_size,
        "2047 bytes, expected 2048",
    ),
    "all-zero face": (
        {"face": Face(algorithm="biox-face-512/1", template=bytes(2048))},
        Reason.template_invalid,
        "all-zero",
    ),
    "NaN in a face": (
        {
            "face": Face(
                algorithm="biox-face-512/1",
                template=np.full(512, np.nan, dtype="<f4").tobytes(),
            )
        },
        Reason.template_invalid,
        "NaN",
    ),
    "iris mask with no valid bit": (
        {"irises": [iris(code=b"\1" * 256, mask=bytes(256))]},
        Reason.template_invalid,
        "no valid bit",
    ),
    "iris code too short": (
        {"irises": [iris(code=b"\1" * 255, mask=b"\xff" * 256)]},
        Reason.template_size,
        "iris code",
    ),
}


@pytest.mark.parametrize("case", BAD_TEMPLATES)
def test_a_bad_template_is_refused_at_intake_and_nothing_is_sent_or_enrolled(tmp_path, case):
    change, reason, said = BAD_TEMPLATES[case]
    sub = a_submission(enroll=True)
    sub.biometrics = sub.biometrics.model_copy(update=change)
    handler, e, result = submit(f"sqlite:///{tmp_path / 'us.db'}", sub)
    assert isinstance(result, PermanentError) and result.reason is reason
    assert said in result.detail
    refusal = handler.reject(e, result)  # answered on reply_to, not after a round trip
    assert refusal is not None and refusal.rows == []
    [out] = refusal.outgoing
    answer = decode(out, EncounterResult)
    assert (answer.status.value, answer.reason_code) == ("refused", reason)


@pytest.mark.parametrize(
    ("envelope", "said"),
    [
        ({"reply_to": None}, "no reply_to"),
        ({"correlation_id": None}, "no correlation_id"),
        ({"reply_to": None, "correlation_id": None}, "no reply_to and correlation_id"),
    ],
)
def test_a_submission_without_its_reply_address_is_dead_lettered_with_why(tmp_path, envelope, said):
    handler, e, result = submit(f"sqlite:///{tmp_path / 'us.db'}", a_submission(), **envelope)
    assert isinstance(result, PermanentError) and result.reason is Reason.no_reply_to
    assert result.detail == said
    assert handler.reject(e, result) is None  # nobody to answer: the dead-letter queue


def test_a_correlation_id_other_than_the_encounter_id_is_refused(tmp_path):
    _, _, result = submit(f"sqlite:///{tmp_path / 'us.db'}", a_submission(), correlation_id="E-1")
    assert isinstance(result, PermanentError) and result.reason is Reason.invalid_message
    assert "must equal encounter_id 'E-77'" in result.detail


def test_every_participant_not_asked_is_kept_with_its_reason_and_the_queries_have_a_deadline(
    tmp_path,
):
    """A Salvadoran in the US: sv may not be asked (§4a), mx is; sv stays in the result."""
    sub = a_submission(subject_status=SubjectStatus(citizenships=["sv"]))
    _, _, effects = submit(f"sqlite:///{tmp_path / 'us.db'}", sub)
    encounter = next(r for r in effects.rows if isinstance(r, EncounterRow))
    assert (encounter.partners, encounter.skipped) == (["mx"], {"sv": "excluded_citizen"})
    [tx] = [r for r in effects.rows if isinstance(r, Transaction)]
    assert tx.answer_due - tx.sent_at == timedelta(seconds=90)
    # issue 20 (7): kept as long as its encounter, answered or not (never forever)
    assert tx.retain_until is not None and tx.retain_until == encounter.retain_until


# --- the consolidated result: skipped, timed out, revised ---------------------------------------


def skip_sv_and_send_mx(db: str) -> None:
    with session_for(db) as s:
        s.add(
            EncounterRow(
                encounter_id="E-90",
                purpose="enforce",
                reply_to="rq",
                partners=["mx"],
                skipped={"sv": "excluded_citizen"},
                source_message_id="sub-90",
            )
        )
        s.add(
            Transaction(
                query_id="q-90",
                role="requester",
                encounter_id="E-90",
                requesting="us",
                providing="mx",
                purpose="enforce",
                reply_to="rq",
                sent_at=AT,
                answer_due=utcnow() - timedelta(seconds=1),
                status="pending",
            )
        )
        s.commit()


def test_an_unanswered_query_times_out_once_and_a_late_answer_revises_it(tmp_path):
    db = f"sqlite:///{tmp_path / 'us.db'}"
    skip_sv_and_send_mx(db)
    handler = ResponseHandler("us", POLICIES.of("us"), deadline_check_s=5)
    with capture_logs() as logs, session_for(db) as s:
        [out] = handler.maintain(s, utcnow())
        s.commit()
    [late] = [e for e in logs if e["event"] == "answers_timed_out"]  # an operator's alert
    assert (late["log_level"], late["queries"]) == ("warning", ["q-90"])
    with capture_logs() as logs, session_for(db) as s:
        assert handler.maintain(s, utcnow()) == []  # told once
    assert logs == []
    timed_out = decode(out, EncounterResult)
    assert out.envelope.message_id == codec.derived_id("q-90", "timed-out")
    assert (timed_out.status.value, timed_out.revision, timed_out.submission_id) == (
        "complete",
        1,
        "sub-90",
    )
    mx, sv = timed_out.outcomes
    assert (mx.partner, mx.status.value, mx.reason_code) == ("mx", "timed_out", Reason.no_answer)
    assert mx.answer_due is not None and mx.sent_at == AT
    assert (sv.partner, sv.status.value, sv.reason_code, sv.query_id, sv.sent_at) == (
        "sv",
        "skipped",
        Reason.excluded_citizen,
        None,
        None,
    )
    late = receive(db, a_response("no_match", "mx", "q-90"), "r-late")
    revised = decode(late.outgoing[0], EncounterResult)
    assert revised.revision == 2
    assert [(o.partner, o.status.value) for o in revised.outcomes] == [
        ("mx", "no_match"),
        ("sv", "skipped"),
    ]


def test_nothing_times_out_before_its_deadline_or_once_answered(us_db):  # noqa: F811
    handler = ResponseHandler("us", POLICIES.of("us"))
    with session_for(us_db) as s:  # no deadline recorded: never late
        assert handler.maintain(s, utcnow()) == []
    receive(us_db, a_response("match", "mx", "q-mx"))
    with session_for(us_db) as s:
        for tx in s.exec(select(Transaction)).all():
            tx.answer_due = utcnow() - timedelta(seconds=1)
            s.add(tx)
        s.commit()
        [out] = handler.maintain(s, utcnow())  # sv only: mx answered
        s.commit()
    result = decode(out, EncounterResult)
    assert [(o.partner, o.status.value) for o in result.outcomes] == [
        ("mx", "match"),
        ("sv", "timed_out"),
    ]
    with session_for(us_db) as s:
        future = s.get(Transaction, ("q-sv", "requester"))
        future.timed_out_at, future.status = None, "pending"
        future.answer_due = utcnow() + timedelta(minutes=5)
        s.add(future)
        s.commit()
        assert handler.maintain(s, utcnow()) == []


def test_the_response_worker_checks_deadlines_as_often_as_its_settings_say(tmp_path):
    from biox.handlers.base import Context
    from biox.settings import Settings

    ctx = Context("us", REGISTRY, POLICIES.of("us"), Settings(deadline_check_s=9))
    assert ResponseHandler.build(ctx).maintain_every_s == 9
    assert ResponseHandler("us", POLICIES.of("us")).maintain_every_s == 0  # by hand: never


def late_query(s, qid: str, eid: str | None) -> None:
    if eid is not None:
        s.add(EncounterRow(encounter_id=eid, purpose="enforce", reply_to="rq", partners=["mx"]))
    s.add(
        Transaction(
            query_id=qid,
            role="requester",
            encounter_id=eid or "E-gone",
            requesting="us",
            providing="mx",
            purpose="enforce",
            reply_to="rq",
            sent_at=AT,
            answer_due=utcnow() - timedelta(seconds=1),
            status="pending",
        )
    )


def test_late_queries_are_told_in_order_a_batch_at_a_time_past_a_missing_encounter(tmp_path):
    """Three late queries: one whose encounter row is gone (purged), two others; a limit of
    two a round: every encounter that exists hears once, in query order."""
    db = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(db) as s:
        late_query(s, "q-a", None)
        late_query(s, "q-b", "E-b")
        late_query(s, "q-c", "E-c")
        s.commit()
    handler = ResponseHandler("us", POLICIES.of("us"))
    told = []
    for _ in range(3):
        with session_for(db) as s:
            told.append([o.envelope.correlation_id for o in handler.maintain(s, utcnow(), limit=2)])
            s.commit()
    assert told == [["E-b"], ["E-c"], []]  # q-a's encounter is gone: nothing to tell


def test_every_encounter_with_a_late_query_hears_in_the_same_round(tmp_path):
    db = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(db) as s:
        late_query(s, "q-b", "E-b")
        late_query(s, "q-c", "E-c")
        s.commit()
    with session_for(db) as s:
        told = ResponseHandler("us", POLICIES.of("us")).maintain(s, utcnow())
    assert [o.envelope.correlation_id for o in told] == ["E-b", "E-c"]


def test_every_outcome_says_why_in_words_and_an_encounter_with_no_query_is_complete(tmp_path):
    from biox.queries.results import EncounterViews
    from biox.wire.errors import REASON_TEXT

    db = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(db) as s:
        skipped = {"mx": "inactive_provider", "sv": "excluded_citizen"}
        s.add(
            EncounterRow(
                encounter_id="E-s", purpose="enforce", reply_to="rq", partners=[], skipped=skipped
            )
        )
        late_query(s, "q-t", "E-t")
        s.add(
            Transaction(
                query_id="q-k",
                role="requester",
                encounter_id="E-t",
                requesting="us",
                providing="sv",
                purpose="enforce",
                sent_at=AT,
                status="match",
                blocked_at=AT,
                answer={"status": "match"},
            )
        )
        s.commit()
        handler = ResponseHandler("us", POLICIES.of("us"))
        handler.maintain(s, utcnow())
        s.commit()
        views = EncounterViews.load(s, ["E-s", "E-t"])
        only_skipped = views.result("us", views.encounters["E-s"])
        mixed = views.result("us", views.encounters["E-t"])
    assert only_skipped.status.value == "complete"
    assert [(o.partner, o.reason) for o in only_skipped.outcomes] == [
        ("mx", REASON_TEXT[Reason.inactive_provider]),
        ("sv", REASON_TEXT[Reason.excluded_citizen]),
    ]
    timed_out, blocked = mixed.outcomes
    assert timed_out.model_dump(exclude={"answer_due"}) == {
        "partner": "mx",
        "query_id": "q-t",
        "status": "timed_out",
        "candidates": [],
        "conditions": [],
        "withheld": [],
        "decided_by": None,
        "reason_code": Reason.no_answer,
        "reason": REASON_TEXT[Reason.no_answer],
        "sent_at": AT,
        "answered_at": None,
        "corrected_at": None,
        "retrievals": [],
    }
    assert (blocked.partner, blocked.status.value, blocked.query_id) == ("sv", "blocked", "q-k")
    assert blocked.reason == "sv blocked its answer (§23): do not rely on it"
    assert blocked.sent_at == AT


def test_intake_takes_its_deadline_from_settings_and_minimises_per_partner(tmp_path):
    """us's policy sends sv no document number (§19(i)); mx, with no rule, gets it all."""
    from biox.handlers.base import Context
    from biox.routes import ROUTES
    from biox.settings import Settings
    from biox.wire.messages import Biographic, Query

    ctx = Context("us", REGISTRY, POLICIES.of("us"), Settings(answer_deadline_s=90))
    assert IntakeHandler.build(ctx).deadline == timedelta(seconds=90)
    who = Biographic(family_name="Cruz", document_number="G123")
    _, _, effects = submit(
        f"sqlite:///{tmp_path / 'us.db'}", a_submission(biographic=who, purpose="investigate")
    )
    sent = {
        o.envelope.recipient: ROUTES.decode("query", "query/1", o.body)
        for o in effects.outgoing
        if o.envelope.kind == "query"
    }
    assert all(isinstance(q, Query) for q in sent.values())
    assert sent["mx"].biographic.document_number == "G123"
    assert sent["sv"].biographic.document_number is None
    assert sent["sv"].biographic.family_name == "Cruz"


def test_intake_minimises_by_the_submissions_purpose(tmp_path):
    """A send rule scoped to one purpose strips only the queries made for it."""
    from biox.policy.release import ParticipantPolicy, SendRule
    from biox.routes import ROUTES
    from biox.wire.messages import Biographic

    policy = ParticipantPolicy(
        send=[
            SendRule(to=["sv"], purposes=["investigate"], biographic=["family_name"]),
            SendRule(biographic=["family_name", "document_number"]),
        ]
    )
    handler = IntakeHandler("us", REGISTRY, policy, answer_deadline_s=90)
    who = Biographic(family_name="Cruz", document_number="G123")
    sent: dict[str, str | None] = {}
    for n, purpose in enumerate(["investigate", "enforce"]):
        sub = a_submission(biographic=who, purpose=purpose, encounter_id=f"E-{n}")
        e = env(
            "encounter.submit",
            "us",
            "us",
            f"sub-{n}",
            reply_to="us.replies.poe",
            correlation_id=sub.encounter_id,
        )
        with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
            [effects] = handler.submit([Inbound(e, sub)], s)
        [to_sv] = [o for o in effects.outgoing if o.envelope.recipient == "sv"]
        sent[purpose] = ROUTES.decode("query", "query/1", to_sv.body).biographic.document_number
    assert sent == {"investigate": None, "enforce": "G123"}


def test_a_refusal_row_keeps_what_the_annual_review_counts():
    from biox.broker import failures

    env = codec.Envelope("m-9", "query", "query/1", "sv", "us", "q-9")
    row = failures.refusal("us.query", env, PermanentError(Reason.unknown_key), answered=False)
    assert (row.queue, row.kind, row.sender, row.correlation_id, row.message_id) == (
        "us.query",
        "query",
        "sv",
        "q-9",
        "m-9",
    )
    assert (row.reason, row.answered) == ("unknown_key", False)
    # an envelope too broken to name its kind or sender is still counted, under "?"
    blank = codec.Envelope("m-10", "", "", "", "us", "")
    row = failures.refusal("us.query", blank, PermanentError(Reason.undecodable), answered=False)
    assert (row.kind, row.sender, row.reason) == ("?", None, "undecodable")


def test_a_partner_whose_agreement_requires_fingerprints_is_skipped_without_them(tmp_path):
    """§5a (issue 20 (8)): mx requires fingerprints in us's queries; a face-only encounter
    goes to sv alone, and mx is shown skipped with the reason."""
    from biox.wire.messages import Biometrics

    face = a_submission().biometrics.face
    assert face is not None
    sub = a_submission(biometrics=Biometrics(face=face))
    _, _, effects = submit(f"sqlite:///{tmp_path / 'us.db'}", sub)
    encounter = next(r for r in effects.rows if isinstance(r, EncounterRow))
    assert (encounter.partners, encounter.skipped) == (["sv"], {"mx": "biometrics_required"})


@pytest.mark.parametrize(
    ("status", "decided"),
    [
        ("pending_review", None),  # nothing decided yet: the examiners' answer follows
        ("rejected", None),  # nothing was decided
        ("match", "examiner"),
        ("no_match", "examiner"),
        ("declined", "examiner"),
    ],
)
def test_only_a_decision_carries_who_decided_it(status, decided):
    """Issue 21 (4): the outcome table and encounter.result.v1.json say decided_by is
    absent on pending_review and rejected, whatever the partner's answer carried."""
    from biox.queries.results import EncounterViews
    from biox.store import EncounterRow, Transaction

    now = datetime(2026, 11, 20, tzinfo=UTC)
    encounter = EncounterRow(encounter_id="E-d", purpose="enforce", reply_to="us.replies.x")
    tx = Transaction(
        query_id="q-d",
        role="requester",
        encounter_id="E-d",
        requesting="us",
        providing="mx",
        purpose="enforce",
        sent_at=now,
        status=status,
        answer={
            "status": status,
            "decided_by": "examiner",
            "timings": {"answered_at": now.isoformat()},
        },
    )
    [outcome] = EncounterViews([encounter], [tx]).result("us", encounter).outcomes
    assert outcome.status.value == status
    assert (outcome.decided_by and outcome.decided_by.value) == decided
    assert outcome.answered_at is not None
