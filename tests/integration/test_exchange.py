"""The main flow over a real broker, with real worker processes."""

from __future__ import annotations

import signal
import time

import pytest

from biox.broker.connection import user_of
from biox.database import every_participant, session_for
from biox.registry import Purpose
from biox.sim import encounters, synth
from biox.sim.plans import Planned, plan, repeat
from biox.trust import audit
from biox.trust.audit import trail_across
from biox.wire import addresses
from biox.wire.messages import SubjectStatus
from tests.integration.conftest import SEED, Exchange
from tests.integration.ledger import (
    Tap,
    check_each_query_answered_once,
    check_results_once,
    copies,
)

pytestmark = pytest.mark.integration


def run_encounters(exchange: Exchange, planned: list[Planned], timeout: float = 120):
    with encounters.EncounterSystem(exchange.url, exchange.sizes) as system:
        system.submit(planned)
        system.collect(timeout=timeout, idle_timeout=60)
        return system, list(system.outcomes.values())


def pick(planned: list[Planned], scenario: str, n: int = 1) -> list[Planned]:
    chosen = [p for p in planned if p.scenario == scenario][:n]
    assert len(chosen) == n, f"plan has fewer than {n} {scenario} encounters"
    return chosen


@pytest.fixture(scope="module")
def plans(exchange: Exchange) -> list[Planned]:
    return plan(exchange.registry, exchange.sizes, 40, SEED, requesters=["us"])


def test_mated_query_is_answered_match_with_the_right_identity(exchange, plans):
    mated = pick(plans, "mated", 5)
    system, outcomes = run_encounters(exchange, mated)
    for o in outcomes:
        assert o.complete, f"{o.planned.encounter_id} incomplete: {o.answers}"
        for partner, answer in o.answers.items():
            if synth.in_gallery(partner, exchange.sizes[partner], o.planned.person):
                if synth.sealed(o.planned.person):  # the provider's policy holds it back
                    assert (answer.status, answer.reason_code) == (
                        "declined",
                        "record_not_releasable",
                    )
                    continue
                assert answer.status == "match"
                assert answer.identity_ref == synth.identity_ref(partner, o.planned.person)
                assert answer.conditions  # every shipped release rule attaches conditions
            else:
                assert answer.status == "no_match"
    assert system.duplicates == 0


def test_non_mated_query_is_answered_no_match(exchange, plans):
    strangers = pick(plans, "stranger", 5)
    _, outcomes = run_encounters(exchange, strangers)
    for o in outcomes:
        assert o.complete
        assert o.answers and set(o.answers) == set(o.planned.expected_partners)
        assert {a.status for a in o.answers.values()} == {"no_match"}
        assert all(a.identity_ref is None for a in o.answers.values())


@pytest.mark.parametrize(
    ("scenario", "reason"), [("citizen", "excluded_citizen"), ("resident", "excluded_resident")]
)
def test_excluded_subject_is_refused_at_intake(exchange, plans, scenario, reason):
    excluded = pick(plans, scenario)
    _, outcomes = run_encounters(exchange, excluded)
    assert outcomes[0].refused == reason
    assert outcomes[0].answers == {}


def test_partner_citizen_is_only_excluded_from_that_partner(exchange, plans):
    """§4a applies per pair: an sv citizen may be queried to mx, not to sv."""
    base = pick(plans, "stranger")[0]
    submit = base.submit.model_copy(
        update={
            "encounter_id": base.encounter_id + "-mxcitizen",
            "purpose": Purpose.enforce,
            "subject_status": SubjectStatus(citizenships=["mx"]),
        }
    )
    p = Planned(submit.encounter_id, "us", base.person, "partner_citizen", submit, ["sv"])
    _, outcomes = run_encounters(exchange, [p])
    assert outcomes[0].refused is None
    assert set(outcomes[0].answers) == {"sv"}


def test_worker_killed_mid_message_still_answers_each_query_exactly_once(exchange):
    """SIGKILL the mx matcher while it holds unacked queries; a fresh one finishes them.

    The test shows the kill lands mid-flight: it freezes the matcher (SIGSTOP), then counts
    queries sent to mx (a tap on us's outbox), queries still waiting in mx.query, and
    queries answered (a tap on mx's outbox). What is neither waiting nor answered was
    delivered to the frozen matcher and not acked. Then every message is counted by id on
    both sides and at the encounter system."""
    planned = plan(exchange.registry, exchange.sizes, 300, SEED, requesters=["us"], draw=1)
    planned = [p for p in planned if "mx" in p.expected_partners]
    queries = Tap(exchange.url, [(addresses.outbox("us"), "mx.query")], exchange.settings.keys())
    responses = Tap(
        exchange.url, [(addresses.outbox("mx"), "us.response")], exchange.settings.keys()
    )
    matcher = exchange.process("mx-query")
    try:
        with encounters.EncounterSystem(exchange.url, exchange.sizes) as system:
            system.submit(planned)
            deadline = time.monotonic() + 30
            while not responses.drain(quiet=0.05) and time.monotonic() < deadline:
                pass  # until mx has started answering
            # on a slow machine the first freeze can find the matcher between deliveries
            # (everything us sent so far answered): thaw it and freeze it again
            for _ in range(20):
                matcher.send_signal(signal.SIGSTOP)
                time.sleep(0.5)  # what the matcher published before it froze reaches the taps
                sent = {t.correlation_id for t in queries.drain()}
                waiting = exchange.ready("mx.query")
                answered = {t.correlation_id for t in responses.drain()}
                in_flight = len(sent) - waiting - len(answered & sent)
                if in_flight > 0:
                    break
                matcher.send_signal(signal.SIGCONT)
                time.sleep(0.1)
            assert in_flight > 0, (len(sent), waiting, len(answered))
            exchange.kill("mx-query")  # SIGKILL lands on a stopped process: no last words
            exchange.restart("mx-query")
            system.collect(timeout=120, idle_timeout=60)
            outcomes = list(system.outcomes.values())
        missing = [
            (o.planned.encounter_id, o.planned.expected_partners, sorted(o.answers))
            for o in outcomes
            if not o.complete
        ]
        assert missing == [], f"{len(missing)} of {len(outcomes)} incomplete"
        assert system.duplicates == 0
        wrong = [(o.planned, a) for o in outcomes for a in o.answers.values() if not a.correct]
        assert wrong == []
        check_each_query_answered_once(
            queries.drain(),
            responses.drain(),
            provider="mx",
            requester="us",
            requester_db=exchange.settings.database_for("us"),
            provider_db=exchange.settings.database_for("mx"),
        )
        check_results_once(system)
        print(
            f"killed with {in_flight} queries unacked at the matcher; "
            f"{copies(responses.seen)} response copies republished and absorbed"
        )
    finally:
        if matcher.poll() is None:  # failed before the kill: the next tests need it running
            matcher.send_signal(signal.SIGCONT)
        queries.close()
        responses.close()


def test_every_hop_of_a_query_is_in_the_audit_trails_without_biometrics(exchange, plans):
    mated = repeat(pick(plans, "mated", 1), 1, "trail")  # a fresh encounter id
    _, outcomes = run_encounters(exchange, mated)
    answer = next(iter(outcomes[0].answers.values()))
    partner = answer.partner
    expected = {
        ("us", "in", "encounter.submit"),
        ("us", "out", "query"),
        (partner, "in", "query"),
        (partner, "out", "response"),
        ("us", "in", "response"),
    }
    deadline = time.monotonic() + 20
    rows, seen = [], set()
    while time.monotonic() < deadline:  # the audit consumers run beside the pipeline
        with every_participant(exchange.settings) as sessions:
            rows = trail_across(sessions, answer.query_id)
        seen = {(code, e.direction, e.kind) for code, e in rows}
        if expected <= seen:
            break
        time.sleep(0.2)
    assert expected <= seen
    for code, e in rows:
        assert e.sender_user == user_of(exchange.url)  # the user the broker checked
        assert len(e.body_sha256) == 64
        assert e.provenance == (code if e.direction == "out" else e.sender)
    for code in exchange.sizes:
        with session_for(exchange.settings.database_for(code)) as s:
            assert audit.verify(s)[1] is None
