"""Issue 4's workflows over the real broker, between real worker processes: release policy
and declines, human review through the CLI, retrieval queries, enrolment with provenance,
and the consolidated result the encounter system receives."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable

import msgpack
import numpy as np
import pika
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from biox.cli import app
from biox.database import session_for
from biox.gallery.gallery import Gallery
from biox.queries.enrolment import enrolled_record_id
from biox.registry import Purpose
from biox.sim import encounters, galleries, plans, synth
from biox.store import Record, RetrievalRow, ReviewCaseRow, Transaction
from biox.wire import addresses, codec
from biox.wire.messages import Biometrics, Element, RetrievalRequest
from tests.integration.conftest import SEED, SIZE, Exchange, Peer, unpack
from tests.integration.ledger import Tap

pytestmark = pytest.mark.integration
runner = CliRunner()


def planned_for(
    exchange: Exchange,
    requester: str,
    person: int,
    purpose: Purpose = Purpose.enforce,
    biometrics: Biometrics | None = None,
    scenario: str = "mated",
) -> plans.Planned:
    return plans.single(exchange.registry, requester, person, SEED, purpose, biometrics, scenario)


def person(code: str, seed: int, *, sealed: bool = False, derogatory: bool | None = None) -> int:
    rng = np.random.default_rng(seed)
    while True:
        n = synth.known_to(code, SIZE, rng)
        if synth.sealed(n) != sealed or any(
            synth.in_gallery(c, SIZE, n) for c in ("us", "mx", "sv") if c != code
        ):
            continue  # known to one participant only: one match per encounter
        if derogatory is None or bool(synth.person(SEED, n).derogatory) == derogatory:
            return n


def wait_for(check: Callable[[], object], timeout: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def stranger_answered(exchange, system, requester: str, provider: str, seed: int):
    """An encounter of someone nobody knows, answered: the provider's no_match."""
    stranger = synth.stranger(SEED, exchange.sizes, np.random.default_rng(seed))
    planned = planned_for(exchange, requester, stranger, scenario="stranger")
    system.submit([planned])
    system.collect(timeout=60)
    answer = outcome_of(system.outcomes[planned.encounter_id], provider)
    assert answer.status.value == "no_match"
    return planned, answer


def outcome_of(o: encounters.Outcome, partner: str):
    assert o.result is not None
    return next(p for p in o.result.outcomes if p.partner == partner)


# --- release policy and declines (§7, §9) ----------------------------------------------


def test_release_policy_shapes_the_match_and_seals_decline(exchange, system):
    released = planned_for(exchange, "us", person("mx", 1), Purpose.adjudicate)
    sealed = planned_for(exchange, "us", person("mx", 2, sealed=True))
    system.submit([released, sealed])
    system.collect(timeout=60)
    rel, sea = system.outcomes[released.encounter_id], system.outcomes[sealed.encounter_id]
    assert rel.complete and sea.complete
    mx = outcome_of(rel, "mx")
    assert mx.status.value == "match"
    record = mx.candidates[0].record
    assert record.biographic is not None and record.encounters == []  # adjudicate: mx policy
    assert mx.withheld == [Element.encounters, Element.derogatory]
    assert "for immigration adjudication only" in mx.conditions
    # mx conceals a decline about the record it found (issue 20): us hears a no-match,
    # and only mx's row says why
    concealed = outcome_of(sea, "mx")
    assert concealed.status.value == "no_match" and concealed.reason_code is None
    assert concealed.candidates == []
    with session_for(exchange.settings.database_for("mx")) as s:
        row = s.get(Transaction, (concealed.query_id, "provider"))
        assert (row.status, row.reason_code) == ("declined", "record_not_releasable")
    # us and sv did not agree adjudication: sv is shown, not asked
    assert {(o.partner, o.status.value) for o in rel.result.outcomes} == {
        ("mx", "match"),
        ("sv", "skipped"),
    }
    assert outcome_of(rel, "sv").reason_code.value == "purpose_not_agreed"


# --- human review (§8) -----------------------------------------------------------------------


def test_gray_zone_case_survives_a_worker_restart_and_the_cli_decision_goes_out(
    exchange, system, cli_env, monkeypatch
):
    gallery = Gallery.load(exchange.settings.gallery_dir("mx"))
    s = exchange.settings
    n, bio = galleries.gray_zone_subject(
        gallery, "mx", SIZE, SEED, s.threshold_low, s.threshold_high, np.random.default_rng(3)
    )
    # adjudicate goes to mx alone: one smudged finger can be a gray case anywhere
    planned = planned_for(exchange, "us", n, Purpose.adjudicate, biometrics=bio, scenario="poor")
    # the review worker is frozen when its case arrives, and killed holding it unacked
    exchange.process("mx-review").send_signal(signal.SIGSTOP)
    system.submit([planned])
    outcome = system.outcomes[planned.encounter_id]
    assert system.collect(timeout=30, until=lambda: "mx" in outcome.in_review)
    assert outcome.result.status.value == "pending"
    query_id = outcome_of(outcome, "mx").query_id

    def case() -> ReviewCaseRow | None:
        with session_for(s.database_for("mx")) as db:
            return db.get(ReviewCaseRow, query_id)

    wait_for(lambda: exchange.ready("mx.review") == 0, what="the case handed to the worker")
    assert case() is None  # delivered to the frozen worker, not stored, not acked
    exchange.kill("mx-review")
    exchange.restart("mx-review")
    wait_for(case, what="the case row after the restart")  # the broker delivered it again

    listed = runner.invoke(app, ["review", "list", "-p", "mx", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.output) if r["case_id"] == query_id]
    assert row["status"] == "pending" and row["requesting"] == "us"
    monkeypatch.setenv("BIOX_REVIEW_OVERDUE_S", "0")
    late = runner.invoke(app, ["review", "overdue", "-p", "mx"])
    assert late.exit_code == 1 and query_id in late.output

    ref = synth.identity_ref("mx", n)
    done = runner.invoke(
        app,
        [
            "review",
            "next",
            "-p",
            "mx",
            "--examiner",
            "ex-42",
            "--decide",
            "match",
            "--candidate",
            ref,
        ],
    )
    assert done.exit_code == 0, done.output
    assert "family_name" in done.output  # shown side by side before deciding
    assert system.collect(timeout=30, until=lambda: outcome.complete), "no final answer"
    mx = outcome_of(outcome, "mx")
    assert mx.status.value == "match" and mx.decided_by.value == "examiner"
    assert mx.candidates[0].identity_ref == ref
    assert outcome.result.status.value == "complete"
    decided = case()
    assert decided.status == "decided" and decided.examiner == "ex-42"


# --- retrieval queries (§10) -----------------------------------------------------------------


def test_retrieval_request_from_the_cli_is_answered_and_kept_with_provenance(
    exchange, system, cli_env
):
    planned = planned_for(exchange, "us", person("mx", 4, derogatory=False))
    system.submit([planned])
    system.collect(timeout=60)
    outcome = system.outcomes[planned.encounter_id]
    mx = outcome_of(outcome, "mx")
    assert mx.status.value == "match"
    asked = runner.invoke(
        app,
        [
            "retrieval",
            "request",
            "-p",
            "mx",
            "--query",
            mx.query_id,
            "--elements",
            "biographic,encounters",
            "--operator",
            "op-7",
        ],
    )
    assert asked.exit_code == 0, asked.output

    def received() -> RetrievalRow | None:
        with session_for(exchange.settings.database_for("mx")) as db:
            rows = db.exec(select(RetrievalRow).where(RetrievalRow.query_id == mx.query_id))
            return next((r for r in rows if r.status != "pending"), None)

    row = wait_for(received, what="the retrieval response at mx")
    assert row.status == "released" and row.source == "us" and row.asked_by == "op-7"
    assert row.data["identity_ref"] == planned.encounter_id
    assert row.data["biographic"]["family_name"] == planned.submit.biographic.family_name
    assert row.conditions and row.retain_until and row.source_message_id

    # the requester's encounter system hears that mx asked and what was released
    assert system.collect(timeout=30, until=lambda: outcome_of(outcome, "mx").retrievals)
    [note] = outcome_of(outcome, "mx").retrievals
    assert note.status.value == "released"

    shown = runner.invoke(app, ["records", "show", mx.query_id, "-p", "mx"])
    assert shown.exit_code == 0, shown.output
    assert "data received from us" in shown.output and "op-7" in shown.output


def test_retrieval_about_an_unmatched_query_is_refused_on_both_sides(
    exchange, system, cli_env, peer: Peer
):
    planned, mx = stranger_answered(exchange, system, "us", "mx", seed=8)
    refused = runner.invoke(app, ["retrieval", "request", "-p", "mx", "--query", mx.query_id])
    assert refused.exit_code == 1 and "did not answer" in refused.output

    # a request that skips the asker's own check is refused by the holder (§10)
    observe = peer.observe(addresses.ingress("mx", "us"), "mx.retrieval.response")
    request = RetrievalRequest(
        retrieval_id=str(uuid.uuid4()),
        query_id=mx.query_id,
        asker="mx",
        holder="us",
        identity_ref="MX-000000001",
        elements=[Element.biographic],
        sent_at=planned.submit.encounter.encountered_at,
    )
    peer.publish(
        addresses.outbox("mx"),
        "us.retrieval.request",
        codec.encode_body(request),
        kind="retrieval.request",
        schema="retrieval.request/1",
        sender="mx",
        recipient="us",
        message_id=request.retrieval_id,
        correlation_id=mx.query_id,
    )
    [(_props, body)] = peer.take(observe, 1, correlation_id=mx.query_id)
    answer = unpack(body)
    assert answer["status"] == "declined" and answer["reason_code"] == "not_matched"
    assert "data" not in answer


def test_automatic_retrieval_after_a_derogatory_match(exchange, system):
    """us's policy asks on its own after a match on a record with derogatory data."""
    planned = planned_for(exchange, "mx", person("us", 5, derogatory=True))
    system.submit([planned])
    outcome = system.outcomes[planned.encounter_id]
    assert system.collect(
        timeout=30, until=lambda: outcome.complete and outcome_of(outcome, "us").retrievals
    ), "no retrieval reached mx's encounter system"
    us = outcome_of(outcome, "us")
    assert us.status.value == "match" and us.candidates[0].record.derogatory
    [note] = us.retrievals
    assert note.status.value == "released"
    assert set(note.released) == {Element.biographic, Element.encounters}


def test_a_retrieval_request_that_overtakes_its_match_waits_and_is_then_answered(exchange, system):
    """Forced: mx's response worker is frozen, so us's match answer waits unread while us's
    automatic retrieval request reaches mx's retrieval worker first. The request is seen
    in mx's retry tier (not declined), and answered once the match is in."""
    hops = Tap(exchange.url, [(addresses.inbox("mx"), "mx.retry.retrieval.*")])
    responder = exchange.process("mx-response")
    responder.send_signal(signal.SIGSTOP)
    try:
        planned = planned_for(exchange, "mx", person("us", 6, derogatory=True))
        system.submit([planned])
        outcome = system.outcomes[planned.encounter_id]
        hop = wait_for(lambda: hops.drain(quiet=0.05), timeout=30, what="a retry hop")[0]
    finally:
        responder.send_signal(signal.SIGCONT)
        hops.close()
    assert hop.kind == "retrieval.request"
    assert system.collect(
        timeout=30, until=lambda: outcome.complete and outcome_of(outcome, "us").retrievals
    ), "the overtaking request was never answered"
    [note] = outcome_of(outcome, "us").retrievals
    assert note.retrieval_id == hop.message_id and note.status.value == "released"

    def received() -> RetrievalRow | None:
        with session_for(exchange.settings.database_for("us")) as db:
            row = db.get(RetrievalRow, (hop.message_id, "asker"))
        return row if row is not None and row.status != "pending" else None

    asked = wait_for(received, what="the released data back at us")
    assert asked.status == "released" and asked.source == "mx"


# --- enrolment and provenance (§20-21) --------------------------------------------------------


def test_query_data_enrolled_by_the_provider_is_found_next_time(exchange, system, cli_env):
    first, us = stranger_answered(exchange, system, "mx", "us", seed=12)
    stranger = first.person
    with session_for(exchange.settings.database_for("us")) as db:
        record = db.get(Record, enrolled_record_id(us.query_id))
    assert record.source == "mx" and record.source_query_id == us.query_id
    assert record.retain_until is not None

    time.sleep(exchange.settings.gallery_sync_s + 0.5)  # matchers pick up enrolments
    second = planned_for(exchange, "mx", stranger, scenario="stranger")
    system.submit([second])
    system.collect(timeout=60)
    again = outcome_of(system.outcomes[second.encounter_id], "us")
    assert again.status.value == "match"
    assert again.candidates[0].identity_ref == record.identity_ref

    shown = runner.invoke(app, ["records", "show", record.identity_ref, "-p", "us"])
    assert shown.exit_code == 0, shown.output
    assert "mx (received, §20)" in shown.output and us.query_id in shown.output


def test_an_encounter_enrolled_on_request_answers_a_partner_later(exchange, system):
    rng = np.random.default_rng(14)
    stranger = synth.stranger(SEED, exchange.sizes, rng)
    first = planned_for(exchange, "us", stranger, scenario="stranger")
    first.submit.enroll = True  # the encounter system asks us to keep it (§5.2)
    system.submit([first])
    system.collect(timeout=60)
    with session_for(exchange.settings.database_for("us")) as db:
        record = db.get(Record, enrolled_record_id(f"encounter/{first.encounter_id}"))
    assert record is not None and record.source == "us"
    time.sleep(exchange.settings.gallery_sync_s + 0.5)  # matchers pick up enrolments
    second = planned_for(exchange, "mx", stranger, scenario="stranger")
    system.submit([second])
    system.collect(timeout=60)
    us = outcome_of(system.outcomes[second.encounter_id], "us")
    assert us.status.value == "match" and us.candidates[0].identity_ref == record.identity_ref


def test_a_partner_cannot_reach_the_kinds_a_participant_takes_only_from_itself(peer: Peer):
    """The outbox → ingress links carry partner kinds only: a forged examiner decision
    from mx never reaches us, whatever its headers claim. Nothing is bound to those keys
    on mx's outbox at all, so the broker returns the message to mx as unroutable instead
    of swallowing it."""
    forged = ("review.decision", "review.case", "retrieval.ask", "encounter.submit")
    observe = peer.observe(addresses.ingress("us", "mx"), "us.query")
    for kind in forged:  # anything arriving under these keys on us's ways in is seen too
        for way_in in (addresses.ingress("us", "mx"), addresses.inbox("us")):
            peer.ch.queue_bind(observe, way_in, f"us.{kind}")
    for kind in forged:
        with pytest.raises(pika.exceptions.UnroutableError):
            peer.publish(
                addresses.outbox("mx"),
                f"us.{kind}",
                b"\x80",
                kind=kind,
                schema=f"{kind}/1",
                sender="us",
                recipient="us",
            )
    probe = peer.publish(  # a partner kind on the same link does arrive
        addresses.outbox("mx"), "us.query", b"\x80", sender="mx", recipient="us"
    )
    got = peer.take(observe, 5, timeout=5)
    assert [props.message_id for props, _ in got] == [probe]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1 not msgpack", "undecodable"),
        (msgpack.packb({"retrieval_id": "r", "query_id": "q"}), "invalid_message"),
    ],
)
def test_a_broken_retrieval_request_is_rejected_to_its_sender(peer: Peer, body, reason):
    """Bad input from a partner gets a `rejected` retrieval response naming the reason,
    under the retrieval id the sender knows (its message id); the worker carries on."""
    observe = peer.observe(addresses.ingress("mx", "us"), "mx.retrieval.response")
    mid = peer.publish(
        addresses.outbox("mx"),
        "us.retrieval.request",
        body,
        kind="retrieval.request",
        schema="retrieval.request/1",
        sender="mx",
        recipient="us",
        correlation_id="some-query",
    )
    [(props, raw)] = peer.take(observe, 1, correlation_id="some-query")
    answer = unpack(raw)
    assert answer["status"] == "rejected" and answer["reason_code"] == reason
    assert answer["retrieval_id"] == mid and props.correlation_id == "some-query"
