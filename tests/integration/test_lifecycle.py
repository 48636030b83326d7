"""Issue 11's data lifecycle over the real broker, between real worker processes: notices
sent from the CLI, applied by the partner's notice worker and acknowledged; deletion and
retention that reach every matcher; a discontinued partner left alone; incidents."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pika
import pytest
from sqlmodel import select

from biox.agreement.ledgers import NoticeRow
from biox.broker.deadletters import DeadLetterQueues, Filters
from biox.cli import app
from biox.database import session_for
from biox.queries.enrolment import enrolled_record_id
from biox.store import AuditEntry, ParticipantRow, Record, Transaction
from biox.wire.messages import utcnow
from tests.integration.conftest import Exchange, Peer
from tests.integration.test_workflows import (
    outcome_of,
    person,
    planned_for,
    runner,
    stranger_answered,
    wait_for,
)

pytestmark = pytest.mark.integration


def db(exchange: Exchange, code: str):
    return session_for(exchange.settings.database_for(code))


def cli(*args: str) -> str:
    out = runner.invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def notice_id(output: str) -> str:
    return output.split(" notice ")[1].split(" ")[0]


def acknowledged(exchange: Exchange, code: str, nid: str) -> NoticeRow:
    def check() -> NoticeRow | None:
        with db(exchange, code) as s:
            row = s.get(NoticeRow, nid)
        return row if row is not None and row.status == "acknowledged" else None

    got = wait_for(check, 30, f"{code}'s notice {nid} acknowledged")
    assert isinstance(got, NoticeRow)
    return got


def dead_letter(peer: Peer, queue: str, sender: str, correlation_id: str) -> str:
    """A dead letter as a worker parks one: a copy of ``sender``'s message about
    ``correlation_id`` (a query), its body unreadable to anyone but its recipient."""
    mid = f"copy-{uuid.uuid4().hex[:8]}"
    peer.ch.basic_publish(
        "",
        queue,
        b"\x80",
        pika.BasicProperties(
            message_id=mid,
            correlation_id=correlation_id,
            type="response",
            delivery_mode=2,
            headers={"biox-from": sender, "biox-reason": "unknown_query"},
        ),
        mandatory=True,
    )
    return mid


def test_a_deletion_notice_withdraws_the_answer_and_the_encounter_system_sees_it(
    exchange, system, cli_env, peer
):
    """And it reaches the broker: a dead-lettered copy of the deleted answer leaves us's
    dead-letter queue at once, a copy of another answer stays, and a replay of the
    deleted one is refused while it is there (issue 20)."""
    planned = planned_for(exchange, "us", person("mx", 31, derogatory=False))
    system.submit([planned])
    system.collect(timeout=60)
    mx = outcome_of(system.outcomes[planned.encounter_id], "mx")
    assert mx.status.value == "match"
    copy = dead_letter(peer, "us.response.dlq", "mx", mx.query_id)
    other = dead_letter(peer, "us.response.dlq", "mx", "some-other-query")
    refused = runner.invoke(app, ["dlq", "replay", other, "--queue", "us.response", "--dry-run"])
    assert "would replay 1" in refused.output, refused.output

    said = cli(
        "notice",
        "send",
        "-p",
        "mx",
        "--to",
        "us",
        "--type",
        "deletion",
        "--query",
        mx.query_id,
        "--text",
        "entered in error",
    )
    nid = notice_id(said)
    sent = acknowledged(exchange, "mx", nid)
    assert sent.done == {"answers": 1, "stored_messages": 1, "erasures": 1}
    assert sent.details["outcome"] == "applied"

    def swept() -> bool:
        time.sleep(1.5)  # a listing holds what it reads: a sweep meanwhile cannot see it
        dlqs = DeadLetterQueues(exchange.url)
        try:
            ids = {d.id for d in dlqs.find(["us.response.dlq"], Filters())}
        finally:
            dlqs.close()
        return copy not in ids and other in ids

    # swept at once, and again 10 s and 60 s later (a listing like this one may hold the
    # copy at the moment of a sweep)
    wait_for(swept, 75, "the deleted answer's dead letter swept, the other kept")
    runner.invoke(app, ["dlq", "purge", other, "--queue", "us.response", "--yes"])
    late = dead_letter(peer, "us.response.dlq", "mx", mx.query_id)  # parked after the sweep
    replayed = runner.invoke(app, ["dlq", "replay", late, "--queue", "us.response"])
    assert "replayed 0" in replayed.output and "deleted" in replayed.output, replayed.output
    runner.invoke(app, ["dlq", "purge", late, "--queue", "us.response", "--yes"])

    def withdrawn() -> bool:
        return outcome_of(system.outcomes[planned.encounter_id], "mx").status.value == "withdrawn"

    assert system.collect(timeout=30, until=withdrawn), "the encounter system saw no withdrawal"
    with db(exchange, "us") as s:
        tx = s.get(Transaction, (mx.query_id, "requester"))
        assert (tx.status, tx.answer) == ("withdrawn", None)
        kinds = {e.kind for e in s.exec(select(AuditEntry).where(AuditEntry.kind == "notice"))}
    assert kinds == {"notice"}  # received and acknowledged notices are in us's audit trail
    listed = cli("notice", "list", "-p", "us")
    assert "deletion" in listed and "applied" in listed


def test_deleted_or_expired_query_data_no_longer_matches_even_after_a_restart(
    exchange, system, cli_env
):
    """us enrols mx's queries (§21). One enrolment is deleted on mx's notice, another
    expires and is purged: neither matches again, in the running matcher or in one started
    afterwards."""
    deleted, us_a = stranger_answered(exchange, system, "mx", "us", seed=41)
    expired, us_b = stranger_answered(exchange, system, "mx", "us", seed=42)
    with db(exchange, "us") as s:
        for qid in (us_a.query_id, us_b.query_id):
            assert s.get(Record, enrolled_record_id(qid)) is not None

    nid = notice_id(
        cli(
            "notice",
            "send",
            "-p",
            "mx",
            "--to",
            "us",
            "--type",
            "deletion",
            "--query",
            us_a.query_id,
        )
    )
    assert acknowledged(exchange, "mx", nid).done == {
        "records": 1,
        "stored_messages": 1,
        "erasures": 1,
    }
    with db(exchange, "us") as s:  # the notice worker purges at once after a deletion,
        rec = s.get(Record, enrolled_record_id(us_b.query_id))  # so this one expires after
        rec.retain_until = utcnow() - timedelta(days=1)  # as if its 75 years had passed
        s.add(rec)
        s.commit()
    purged = cli("retention", "purge", "-p", "us")
    # by the CLI, or by the notice worker's purge if that ran after the change above: then
    # the CLI's purge takes out of the snapshot on disk what the worker's deleted after
    # its own refresh (a purge refreshes the snapshot first, then purges the tables)
    assert any(word in purged for word in ("records", "gallery_snapshot", "nothing is past"))
    with db(exchange, "us") as s:
        for qid in (us_a.query_id, us_b.query_id):
            assert s.get(Record, enrolled_record_id(qid)) is None

    def audited() -> bool:
        with db(exchange, "us") as s:
            return bool(
                s.exec(select(AuditEntry).where(AuditEntry.kind == "ops.retention.purge")).all()
            )

    wait_for(audited, 30, "the purge in the audit trail")

    exchange.kill("us-query")
    exchange.restart("us-query")
    time.sleep(exchange.settings.gallery_sync_s + 0.5)
    for first in (deleted, expired):
        again = planned_for(exchange, "mx", first.person, scenario="stranger")
        system.submit([again])
        system.collect(timeout=60)
        assert outcome_of(system.outcomes[again.encounter_id], "us").status.value == "no_match"


def test_a_discontinued_partner_is_not_queried_until_it_is_ready_again(exchange, system, cli_env):
    nid = notice_id(
        cli(
            "notice",
            "send",
            "-p",
            "sv",
            "--to",
            "us",
            "--type",
            "discontinuation",
            "--text",
            "§36 written notice",
        )
    )
    acknowledged(exchange, "sv", nid)
    time.sleep(exchange.settings.registry_refresh_s + 0.5)  # every worker has re-read it
    try:
        with db(exchange, "us") as s:
            assert s.get(ParticipantRow, "sv").status == "discontinued"
        planned = planned_for(exchange, "us", person("mx", 33, derogatory=False))
        system.submit([planned])
        system.collect(timeout=60)
        result = system.outcomes[planned.encounter_id].result
        assert result is not None
        outcomes = {o.partner: o for o in result.outcomes}
        assert outcomes["sv"].status.value == "skipped"  # shown, not asked
        assert outcomes["sv"].reason_code.value == "inactive_provider"
        assert outcomes["mx"].status.value not in ("skipped", "pending", "timed_out")
    finally:
        ready = notice_id(cli("notice", "send", "-p", "sv", "--to", "us", "--type", "readiness"))
        acknowledged(exchange, "sv", ready)
        time.sleep(exchange.settings.registry_refresh_s + 0.5)
    with db(exchange, "us") as s:
        assert s.get(ParticipantRow, "sv").status == "active"


def test_an_incident_is_overdue_until_its_notice_is_sent(exchange, cli_env):
    aware = (utcnow() - timedelta(hours=49)).strftime("%Y-%m-%dT%H:%M:%S")
    opened = cli(
        "incident",
        "open",
        "-p",
        "mx",
        "--summary",
        "export sent to the wrong agency",
        "--partner",
        "us",
        "--aware-at",
        aware,
    )
    incident = opened.split(":")[0]
    late = runner.invoke(app, ["incident", "overdue", "-p", "mx"])
    assert late.exit_code == 1 and "us not notified" in late.output
    cli("incident", "notify", "-p", "mx", incident)
    assert runner.invoke(app, ["incident", "overdue", "-p", "mx"]).exit_code == 0

    def received():
        with db(exchange, "us") as s:
            return s.exec(select(NoticeRow).where(NoticeRow.type == "incident")).all()

    [row] = wait_for(received, 30, "us to receive the incident notice")
    assert row.partner == "mx" and "wrong agency" in row.text


def test_a_blocked_record_is_not_matched_until_it_is_unblocked(exchange, system, cli_env):
    """mx blocks the query data us enrolled from it (§23): mx's next query about that
    person finds nothing at us; once unblocked, the same query matches it again."""
    first, us = stranger_answered(exchange, system, "mx", "us", seed=51)
    ref = None
    with db(exchange, "us") as s:
        ref = s.get(Record, enrolled_record_id(us.query_id)).identity_ref
    nid = notice_id(
        cli("notice", "send", "-p", "mx", "--to", "us", "--type", "block", "--query", us.query_id)
    )
    assert acknowledged(exchange, "mx", nid).done == {"records": 1}
    time.sleep(exchange.settings.gallery_sync_s + 0.5)  # the matchers have the enrolment
    blocked = planned_for(exchange, "mx", first.person, scenario="stranger")
    system.submit([blocked])
    system.collect(timeout=60)
    assert outcome_of(system.outcomes[blocked.encounter_id], "us").status.value == "no_match"

    nid = notice_id(
        cli("notice", "send", "-p", "mx", "--to", "us", "--type", "unblock", "--query", us.query_id)
    )
    acknowledged(exchange, "mx", nid)
    again = planned_for(exchange, "mx", first.person, scenario="stranger")
    system.submit([again])
    system.collect(timeout=60)
    found = outcome_of(system.outcomes[again.encounter_id], "us")
    assert found.status.value == "match" and found.candidates[0].identity_ref == ref
