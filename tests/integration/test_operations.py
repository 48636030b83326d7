"""Retry tiers, dead letters and the on-call tool, against the live exchange."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from biox.agreement.ledgers import ErasureRow
from biox.broker.deadletters import DeadLetterQueues, Filters
from biox.broker.topology import PARKED_ARGUMENTS
from biox.cli import app
from biox.database import session_for
from biox.store import AuditEntry, EncounterRow, Transaction
from biox.wire import addresses, codec
from biox.wire.messages import Response, ResponseStatus, Timings, utcnow
from tests.integration.conftest import (
    Exchange,
    Peer,
    send_from_unknown_participant,
    unpack,
    wait_dead,
)
from tests.integration.test_bad_input import valid_query

pytestmark = pytest.mark.integration
runner = CliRunner()


def orphan_response(peer: Peer) -> tuple[str, str]:
    """A response from mx for a query us has no record of: us.response retries, then parks it."""
    qid = f"orphan-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    r = Response(
        query_id=qid,
        requesting="us",
        providing="mx",
        status=ResponseStatus.no_match,
        timings=Timings(received_at=now, answered_at=now),
    )
    mid = peer.publish(
        addresses.outbox("mx"),
        "us.response",
        codec.encode_body(r),
        kind="response",
        schema="response/1",
        sender="mx",
        recipient="us",
        correlation_id=qid,
    )
    assert mid
    return qid, mid


def record_query(exchange: Exchange, qid: str, reply_to: str) -> None:
    with session_for(exchange.settings.database_for("us")) as s:
        s.add(
            EncounterRow(
                encounter_id=f"E-{qid}", purpose="enforce", reply_to=reply_to, partners=["mx"]
            )
        )
        s.add(
            Transaction(
                query_id=qid,
                role="requester",
                encounter_id=f"E-{qid}",
                requesting="us",
                providing="mx",
                purpose="enforce",
                reply_to=reply_to,
                status="pending",
            )
        )
        s.commit()


def test_transient_failure_retries_twice_then_succeeds_with_hops_in_the_audit(
    exchange: Exchange, peer: Peer
):
    reply = f"test.reply.{uuid.uuid4().hex[:8]}"
    peer.ch.queue_declare(reply, exclusive=True)
    peer.ch.queue_bind(reply, addresses.results("us"), reply)
    qid, mid = orphan_response(peer)

    def retry_hops() -> list[AuditEntry]:
        with session_for(exchange.settings.database_for("us")) as s:
            return list(
                s.exec(
                    select(AuditEntry).where(
                        AuditEntry.message_id == mid, AuditEntry.direction == "retry"
                    )
                )
            )

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(retry_hops()) < 2:
        time.sleep(0.1)  # two attempts failed; the message now waits in the 2 s tier
    record_query(exchange, qid, reply)
    _props, body = peer.take(reply, 1, timeout=30)[0]
    assert unpack(body)["outcomes"][0]["query_id"] == qid
    hops = retry_hops()
    assert len(hops) == 2


def test_exhausted_retries_park_in_the_dlq_and_replay_after_the_fix(exchange, peer, cli_env):
    qid, mid = orphan_response(peer)
    dead = wait_dead(exchange, "us.response.dlq", mid)
    h = dead.headers
    assert h["biox-reason"] == "unknown_query"
    assert h["biox-permanent"] is False
    assert h["biox-attempt"] == 3  # two tiers (1 s, 2 s) in the test settings, then parked
    assert (h["biox-original-exchange"], h["biox-original-routing-key"]) == (
        "biox.mx.out",
        "us.response",
    )
    assert h["biox-worker"].startswith("us.response@")

    listed = runner.invoke(app, ["dlq", "list", "--queue", "us.response", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["messages"]
    assert any(r["id"] == mid and r["reason"].startswith("unknown_query") for r in rows)

    reply = f"test.reply.{uuid.uuid4().hex[:8]}"
    peer.ch.queue_declare(reply, exclusive=True)
    peer.ch.queue_bind(reply, addresses.results("us"), reply)
    record_query(exchange, qid, reply)  # the fix: the missing record is restored
    dry = runner.invoke(app, ["dlq", "replay", mid, "--dry-run"])
    assert "would replay 1" in dry.output
    done = runner.invoke(app, ["dlq", "replay", mid])
    assert done.exit_code == 0 and "replayed 1" in done.output, done.output
    _props, body = peer.take(reply, 1, timeout=30)[0]
    assert unpack(body)["outcomes"][0]["query_id"] == qid

    again = runner.invoke(app, ["dlq", "list", "--queue", "us.response", "--json"])
    assert mid not in [r["id"] for r in json.loads(again.output)["messages"]]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the replay is in the audit trail, with who ran it
        with session_for(exchange.settings.database_for("us")) as s:
            ops = list(s.exec(select(AuditEntry).where(AuditEntry.kind == "ops.dlq.replay")))
        if ops:
            break
        time.sleep(0.3)
    assert ops and ops[-1].actor


def test_show_redacts_templates_and_personal_data_and_purge_removes(exchange, peer, cli_env):
    q = valid_query()
    q.biographic.family_name = "Sánchez"
    mid = send_from_unknown_participant(peer, q)
    wait_dead(exchange, "mx.query.dlq", mid)
    shown = runner.invoke(app, ["dlq", "show", mid, "--queue", "mx.query"])
    assert shown.exit_code == 0, shown.output
    assert "2048 bytes sha256:" in shown.output  # face template: size and digest only
    assert "Sánchez" not in shown.output
    assert "unknown_participant" in shown.output
    refused = runner.invoke(app, ["dlq", "purge", mid, "--queue", "mx.query"])
    assert refused.exit_code == 2
    purged = runner.invoke(app, ["dlq", "purge", mid, "--queue", "mx.query", "--yes"])
    assert "purged 1" in purged.output
    listed = runner.invoke(app, ["dlq", "list", "--queue", "mx.query", "--json"])
    assert mid not in [r["id"] for r in json.loads(listed.output)["messages"]]


def test_export_and_import_are_lossless(exchange, peer, cli_env, tmp_path):
    q = valid_query()
    mid = send_from_unknown_participant(peer, q)
    before = wait_dead(exchange, "mx.query.dlq", mid)
    file = tmp_path / "dead.jsonl"
    assert runner.invoke(app, ["dlq", "export", str(file), "--queue", "mx.query"]).exit_code == 0
    assert file.stat().st_mode & 0o777 == 0o600  # owner-only: headers are not sealed
    assert runner.invoke(app, ["dlq", "purge", mid, "--queue", "mx.query", "--yes"]).exit_code == 0
    # whoever edits the file cannot choose the identity a replay is checked against
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    for line in lines:
        line["properties"]["headers"]["biox-original-user-id"] = "mx.encounters.sim"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert runner.invoke(app, ["dlq", "import", str(file)]).exit_code == 0
    after = wait_dead(exchange, "mx.query.dlq", mid)
    assert after.headers["biox-original-user-id"] != "mx.encounters.sim"
    assert after.headers["biox-original-user-id"] == after.properties.user_id  # the importer
    assert after.headers["biox-imported-by"]
    assert after.body == before.body
    assert after.headers["biox-reason"] == before.headers["biox-reason"]
    assert after.properties.correlation_id == before.properties.correlation_id
    deadline = time.monotonic() + 15
    kinds: set[str] = set()
    while time.monotonic() < deadline and not {"ops.dlq.export", "ops.dlq.import"} <= kinds:
        with session_for(exchange.settings.database_for("mx")) as s:
            kinds = {e.kind for e in s.exec(select(AuditEntry)) if e.kind.startswith("ops.")}
        time.sleep(0.3)
    assert {"ops.dlq.export", "ops.dlq.import"} <= kinds  # both in mx's audit trail


def test_an_import_leaves_out_what_expired_or_was_deleted_since_the_export(
    exchange, peer, cli_env, tmp_path
):
    """Issue 20 (1): an export file keeps nothing longer than its dead-letter queue would
    (each line carries ``expires_at``), and cannot bring back data deleted since."""
    mids = [send_from_unknown_participant(peer, valid_query()) for _ in range(3)]
    for mid in mids:
        wait_dead(exchange, "mx.query.dlq", mid)
    file = tmp_path / "dead.jsonl"
    assert runner.invoke(app, ["dlq", "export", str(file), "--queue", "mx.query"]).exit_code == 0
    for mid in mids:
        runner.invoke(app, ["dlq", "purge", mid, "--queue", "mx.query", "--yes"])
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    mine = {line["properties"]["message_id"]: line for line in lines}
    assert all(mine[m]["expires_at"] for m in mids)
    expired, deleted, kept = mids
    mine[expired]["expires_at"] = (utcnow() - timedelta(minutes=1)).isoformat()
    file.write_text("".join(json.dumps(mine[m]) + "\n" for m in mids))
    with session_for(exchange.settings.database_for("mx")) as s:
        s.add(ErasureRow(source="zz", kind="message", key=deleted, cause="notice:test"))
        s.commit()
    out = runner.invoke(app, ["dlq", "import", str(file)])
    assert out.exit_code == 0, out.output
    assert "imported 1 message(s)" in out.output
    assert f"{expired}: expired" in out.output and f"{deleted}: deleted" in out.output
    wait_dead(exchange, "mx.query.dlq", kept)
    listed = runner.invoke(app, ["dlq", "list", "--queue", "mx.query", "--json"])
    ids = [r["id"] for r in json.loads(listed.output)["messages"]]
    assert kept in ids and expired not in ids and deleted not in ids
    runner.invoke(app, ["dlq", "purge", kept, "--queue", "mx.query", "--yes"])


def test_a_crafted_dead_letter_cannot_be_replayed_into_an_own_only_queue(
    exchange, peer, cli_env, tmp_path
):
    """A dead letter says it is an examiner's decision and that it came from us's inbox:
    replay takes the destination from the dead-letter queue it sits in, and sends a kind
    only to a queue the route table gives it."""
    mid = f"crafted-{uuid.uuid4().hex[:8]}"
    peer.ch.basic_publish(
        "",
        "us.response.dlq",
        b"\x80",
        pika.BasicProperties(
            message_id=mid,
            type="review.decision",
            headers={
                "biox-from": "us",
                "biox-reason": "unknown_query",
                "biox-original-exchange": "biox.us",
                "biox-original-routing-key": "us.review.decision",
            },
        ),
        mandatory=True,
    )
    for to_queue in ([], ["--to-queue", "us.intake"], ["--to-queue", "mx.review"]):
        out = runner.invoke(app, ["dlq", "replay", mid, "--queue", "us.response", *to_queue])
        assert out.exit_code == 0, out.output
        assert "replayed 0" in out.output and "not replayed" in out.output, out.output
    listed = runner.invoke(app, ["dlq", "list", "--queue", "us.response", "--json"])
    assert mid in [r["id"] for r in json.loads(listed.output)["messages"]]  # still there
    runner.invoke(app, ["dlq", "purge", mid, "--queue", "us.response", "--yes"])

    # an import writes only into dead-letter queues: a file naming a work queue is refused
    crafted = tmp_path / "crafted.jsonl"
    crafted.write_text(
        json.dumps(
            {
                "queue": "us.review",
                "properties": {"message_id": mid, "type": "review.decision"},
                "body": "gA==",
            }
        )
        + "\n"
    )
    out = runner.invoke(app, ["dlq", "import", str(crafted)])
    assert out.exit_code == 1 and "nothing imported" in out.output, out.output
    assert exchange.ready("us.review") == 0


def test_a_look_straight_after_another_finds_everything_still_there(broker_url: str):
    """A quorum DLQ returns the messages of a closed channel after the close is
    confirmed: without waiting for them, about one look in sixty straight after another
    found the queue short, and an operator was told that nothing was held."""
    queue = f"us.look-{uuid.uuid4().hex[:6]}.dlq"
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    dlqs = DeadLetterQueues(broker_url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments=PARKED_ARGUMENTS)
        ch.confirm_delivery()
        for i in range(2):
            ch.basic_publish("", queue, b"held", pika.BasicProperties(message_id=str(i)))
        looks = [len(dlqs.find([queue], Filters())) for _ in range(200)]
        assert looks == [2] * 200, [n for n in looks if n != 2]
    finally:
        dlqs.close()
        conn.channel().queue_delete(queue)
        conn.close()
