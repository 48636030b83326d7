"""Bad input gets a specific error and never stops a worker (issue: 'Bad input')."""

from __future__ import annotations

import uuid

import msgpack
import numpy as np
import pytest

from biox.registry import Purpose
from biox.sim import synth
from biox.wire import addresses, codec
from biox.wire.messages import Query, References
from tests.integration.conftest import SEED, Exchange, Peer, send_from_unknown_participant, unpack

pytestmark = pytest.mark.integration


def valid_query(
    requesting: str = "us", providing: str = "mx", purpose: Purpose = Purpose.enforce
) -> Query:
    rng = np.random.default_rng(1)
    qid = str(uuid.uuid4())
    now = synth.encounter_here(requesting, rng).encountered_at
    return Query(
        query_id=qid,
        requesting=requesting,
        providing=providing,
        purpose=purpose,
        references=References(transaction_id=qid, encounter_id=f"E-{qid[:8]}"),
        subject_status=synth.status_for(requesting, [providing], None),
        biometrics=synth.capture(SEED, 12345, context=1),
        encounter=synth.encounter_here(requesting, rng),
        created_at=now,
        sent_at=now,
    )


def send_query(peer: Peer, body: bytes, qid: str, **kw) -> None:
    peer.publish(addresses.outbox("us"), "mx.query", body, correlation_id=qid, **kw)


@pytest.fixture
def responses(peer: Peer) -> str:
    return peer.observe(addresses.ingress("us", "mx"), "us.response")


def expect_rejected(
    peer: Peer, queue: str, qid: str, reason: str, status: str = "rejected"
) -> dict:
    got = peer.take(queue, 1)
    assert got, f"no response for {qid}"
    props, body = got[0]
    answer = unpack(body)
    assert props.correlation_id == qid
    assert answer["status"] == status
    assert answer["reason_code"] == reason, answer
    assert answer["reason"]
    return answer


def with_template(q: Query, **changes) -> bytes:
    data = q.model_dump(mode="python", exclude_none=True)
    data["biometrics"]["face"].update(changes)
    return msgpack.packb(data, use_bin_type=True, datetime=True)


CASES = {
    "undecodable": lambda q: b"\xc1 not msgpack at all",
    "invalid_message": lambda q: msgpack.packb({"query_id": q.query_id}),
    "template_size": lambda q: with_template(q, template=b"\x00" * 12),
    "unknown_algorithm": lambda q: with_template(q, algorithm="acme-face-768/3"),
    "template_invalid": lambda q: with_template(q, template=np.full(512, np.nan, "<f4").tobytes()),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_bad_query_is_rejected_to_the_sender_with_its_reason(peer, responses, reason):
    q = valid_query()
    send_query(peer, CASES[reason](q), q.query_id)
    expect_rejected(peer, responses, q.query_id, reason)


def test_zero_vector_is_rejected(peer, responses):
    q = valid_query()
    send_query(peer, with_template(q, template=bytes(2048)), q.query_id)
    answer = expect_rejected(peer, responses, q.query_id, "template_invalid")
    assert "zero" in answer["reason"]


def test_unknown_schema_version_is_rejected(peer, responses):
    q = valid_query()
    send_query(peer, codec.encode_body(q), q.query_id, schema="query/9")
    expect_rejected(peer, responses, q.query_id, "unknown_schema")


def test_purpose_not_agreed_is_declined(peer: Peer):
    """sv answers us only for enforce/investigate (deploy/participants.toml): a readable
    query outside the agreement is a decision not to answer (§9), not a broken message."""
    observe = peer.observe(addresses.ingress("us", "sv"), "us.response")
    q = valid_query(providing="sv", purpose=Purpose.adjudicate)
    peer.publish(
        addresses.outbox("us"),
        "sv.query",
        codec.encode_body(q),
        recipient="sv",
        correlation_id=q.query_id,
    )
    expect_rejected(peer, observe, q.query_id, "purpose_not_agreed", status="declined")


def test_unknown_participant_goes_to_the_dead_letter_queue(peer: Peer):
    q = valid_query()
    mid = send_from_unknown_participant(peer, q)
    dead = _dead_letter(peer, "mx.query.dlq", mid)
    assert dead.headers["biox-reason"] == "unknown_participant"
    assert dead.headers["biox-permanent"] is True
    assert dead.headers["biox-original-routing-key"] == "mx.query"


def test_message_without_id_goes_to_the_dead_letter_queue(peer: Peer):
    q = valid_query()
    peer.publish(
        addresses.outbox("us"),
        "mx.query",
        codec.encode_body(q),
        message_id=None,
        correlation_id=q.query_id,
    )
    dead = _dead_letter(peer, "mx.query.dlq", None, corr=q.query_id)
    assert dead.headers["biox-reason"] == "invalid_message"


def test_refused_encounter_gets_a_specific_reason_on_reply_to(peer: Peer):
    reply = f"test.reply.{uuid.uuid4().hex[:8]}"
    peer.ch.queue_declare(reply, exclusive=True)
    peer.ch.queue_bind(reply, addresses.results("us"), reply)
    peer.publish(
        addresses.submissions("us"),
        "us.encounter.submit",
        msgpack.packb({"encounter_id": "E-1", "purpose": "tourism"}),
        kind="encounter.submit",
        schema="encounter.submit/1",
        sender="us",
        recipient="us",
        correlation_id="E-1",
        reply_to=reply,
    )
    props, body = peer.take(reply, 1)[0]
    result = unpack(body)
    assert props.correlation_id == "E-1"
    assert result["status"] == "refused"
    assert result["reason_code"] == "invalid_message"
    assert "purpose" in result["reason"]


def test_workers_keep_serving_after_bad_input(exchange: Exchange, peer: Peer, responses):
    for reason in sorted(CASES):
        q = valid_query()
        send_query(peer, CASES[reason](q), q.query_id)
    good = valid_query()
    send_query(peer, codec.encode_body(good), good.query_id)
    seen = {}
    for props, body in peer.take(responses, len(CASES) + 1):
        seen[props.correlation_id] = unpack(body)
    assert seen[good.query_id]["status"] in ("match", "no_match")
    assert all(p.poll() is None for _, p in exchange.workers.processes)


def _dead_letter(peer: Peer, queue: str, message_id: str | None, corr: str | None = None):
    for _ in range(100):
        method, props, _body = peer.ch.basic_get(queue, auto_ack=False)
        if method is None:
            peer.conn.sleep(0.2)
            continue
        if (message_id and props.message_id == message_id) or (
            corr and props.correlation_id == corr
        ):
            peer.ch.basic_ack(method.delivery_tag)
            return props
        peer.ch.basic_nack(method.delivery_tag, requeue=True)
    raise AssertionError(f"nothing for {message_id or corr} in {queue}")


def test_a_body_over_the_limit_is_refused_by_the_development_broker_as_by_a_participants(
    exchange: Exchange,
):
    """Issue 21 (5): the shared development broker has the same max_message_size as a
    participant's own, so an oversize submission meets the broker's refusal on both."""
    import pika

    from biox.settings import Settings

    conn = pika.BlockingConnection(pika.URLParameters(exchange.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        big = b"\x00" * (Settings().max_message_bytes + 1)
        props = pika.BasicProperties(message_id=str(uuid.uuid4()), type="encounter.submit")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish("biox.us.submit", "us.encounter.submit", big, props, mandatory=True)
        assert refused.value.reply_code == 406 and "max size" in refused.value.reply_text
    finally:
        if conn.is_open:
            conn.close()
