"""The envelope on the wire: what a handler's output becomes as AMQP properties, what a
delivery's properties become as an envelope, and what the idempotency record keeps of an
output to republish it (docs/architecture.md, "The envelope")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pika
import pytest

from biox.broker import failures
from biox.broker.link import Delivery
from biox.broker.publisher import (
    pack_outgoing,
    properties_for,
    republish_properties,
    unpack_outgoing,
)
from biox.wire import codec
from biox.wire.codec import Envelope, Outgoing
from biox.wire.errors import PermanentError, Reason, TransientError
from biox.wire.inbound import read_envelope
from biox.wire.messages import Element, EncounterResult, EncounterResultStatus, RetrievalAsk


def an_output() -> Outgoing:
    ask = RetrievalAsk(query_id="q-1", elements=[Element.biographic], asked_by="op")
    out = codec.to_own_inbox(
        ask, participant="mx", message_id="m-1", correlation_id="q-1", reply_to="replies"
    )
    return codec.with_actor(out, "j.perez")


def test_an_output_becomes_persistent_properties_with_every_header():
    out = an_output()
    p = properties_for(out.envelope, "mx-workers")
    assert (p.message_id, p.correlation_id, p.reply_to, p.type) == (
        "m-1",
        "q-1",
        "replies",
        "retrieval.ask",
    )
    assert p.delivery_mode == 2 and p.content_type == "application/msgpack"
    assert p.user_id == "mx-workers" and p.app_id == "biox" and p.timestamp > 0
    assert p.headers == {
        "biox-actor": "j.perez",
        "biox-schema": "retrieval.ask/1",
        "biox-from": "mx",
        "biox-to": "mx",
        "biox-attempt": 0,
    }


def test_properties_read_back_as_the_envelope_they_came_from():
    out = an_output()
    env = read_envelope(properties_for(out.envelope, "mx-workers"))
    assert (env.message_id, env.kind, env.schema, env.sender, env.recipient) == (
        "m-1",
        "retrieval.ask",
        "retrieval.ask/1",
        "mx",
        "mx",
    )
    assert (env.correlation_id, env.reply_to, env.user_id, env.attempt) == (
        "q-1",
        "replies",
        "mx-workers",
        0,
    )
    assert env.headers["biox-actor"] == "j.perez"
    assert env.timestamp is not None and env.timestamp.tzinfo is UTC


def test_missing_or_odd_properties_read_as_empty_not_as_errors():
    env = read_envelope(pika.BasicProperties(headers={"biox-from": b"sv", "biox-attempt": "x"}))
    assert (env.message_id, env.kind, env.schema, env.recipient) == ("", "", "", "")
    assert env.sender == "sv"  # a bytes header is text
    assert env.attempt == 0 and env.timestamp is None and env.correlation_id is None
    assert read_envelope(pika.BasicProperties(headers={"biox-attempt": True})).attempt == 0
    assert read_envelope(pika.BasicProperties(headers={"biox-attempt": 3})).attempt == 3
    assert read_envelope(pika.BasicProperties()).headers == {}


def test_the_idempotency_record_keeps_every_part_of_an_output():
    first, second = (
        an_output(),
        codec.to_partner(
            RetrievalAsk(query_id="q-2", elements=[Element.encounters], asked_by="x"),
            sender="us",
            recipient="sv",
            message_id="m-2",
            correlation_id="q-2",
        ),
    )
    back = unpack_outgoing(pack_outgoing([first, second]))
    assert back == [first, second]
    assert back[0].envelope.headers == {"biox-actor": "j.perez"}
    assert unpack_outgoing(b"") == []


def test_a_record_written_before_headers_were_kept_still_reads():
    old = msgpack.packb([["ex", "rk", b"body", "m", "kind", "kind/1", "us", "mx", "c", None]])
    [out] = unpack_outgoing(old)
    assert (out.exchange, out.routing_key, out.body) == ("ex", "rk", b"body")
    assert out.envelope == Envelope("m", "kind", "kind/1", "us", "mx", "c", None)


def test_a_copy_we_republish_keeps_the_original_but_carries_our_user():
    original = pika.BasicProperties(
        content_type="application/msgpack",
        content_encoding="identity",
        message_id="m",
        correlation_id="c",
        reply_to="r",
        type="query",
        app_id="biox",
        timestamp=123,
        user_id="partner",
    )
    copy = republish_properties(original, {"h": 1}, "us-workers")
    assert (copy.message_id, copy.correlation_id, copy.reply_to, copy.type) == (
        "m",
        "c",
        "r",
        "query",
    )
    assert (copy.content_type, copy.content_encoding, copy.app_id, copy.timestamp) == (
        "application/msgpack",
        "identity",
        "biox",
        123,
    )
    assert copy.user_id == "us-workers" and copy.headers == {"h": 1}
    assert copy.delivery_mode == 2


def test_a_result_goes_to_the_reply_queue_correlated_by_encounter():
    result = EncounterResult(
        encounter_id="E-1",
        requesting="us",
        status=EncounterResultStatus.refused,
        reason_code=Reason.no_partner,
    )
    out = codec.to_reply_queue(result, participant="us", reply_to="replies", message_id="r-1")
    assert (out.exchange, out.routing_key) == ("biox.us.results", "replies")
    assert out.envelope.correlation_id == "E-1" and out.envelope.message_id == "r-1"
    assert (out.envelope.sender, out.envelope.recipient) == ("us", "us")


def test_with_actor_adds_the_person_and_keeps_the_rest():
    out = an_output()
    again = codec.with_actor(out, "other")
    assert again.envelope.headers == {"biox-actor": "other"}
    assert (again.exchange, again.routing_key, again.body) == (
        out.exchange,
        out.routing_key,
        out.body,
    )
    assert again.envelope.message_id == out.envelope.message_id


@pytest.mark.parametrize(
    ("error", "reason", "permanent"),
    [
        (PermanentError(Reason.undecodable, "bad"), "undecodable", True),
        (TransientError(Reason.unknown_query, "later"), "unknown_query", False),
        (RuntimeError("bug"), "handler_error", False),
    ],
)
def test_a_failure_carries_its_why_and_keeps_the_first_where_and_when(error, reason, permanent):
    props = pika.BasicProperties(user_id="partner", headers={"biox-from": "mx"})
    d = Delivery(1, 1, "biox.mx.out", "us.query", False, props, b"", 0.0)
    env = read_envelope(props)
    h = failures.headers(env, d, error, 2, "us.query@host:1")
    assert h["biox-reason"] == reason and h["biox-permanent"] is permanent
    assert h["biox-attempt"] == 2 and h["biox-worker"] == "us.query@host:1"
    assert h["biox-error-class"] == type(error).__name__ and h["biox-error"] == getattr(
        error, "detail", str(error)
    )
    assert (h["biox-original-exchange"], h["biox-original-routing-key"]) == (
        "biox.mx.out",
        "us.query",
    )
    assert h["biox-original-user-id"] == "partner" and h["biox-from"] == "mx"
    assert h["biox-first-failed-at"] == h["biox-failed-at"]
    again = failures.headers(read_envelope(pika.BasicProperties(headers=h)), d, error, 3, "w")
    assert again["biox-first-failed-at"] == h["biox-first-failed-at"]  # kept across hops
    assert datetime.fromisoformat(again["biox-failed-at"]) >= datetime.fromisoformat(
        h["biox-failed-at"]
    )


def test_failures_go_through_the_inbox_on_keys_the_audit_records_except_its_own():
    assert failures.retry_target("us", "query", 5, True) == ("biox.us", "us.retry.query.5")
    assert failures.retry_target("us", "audit", 5, False) == (
        "biox.us",
        "us.unrecorded.retry.audit.5",
    )
    assert failures.dead_letter_target("us", "query", True) == ("biox.us", "us.dead-letter.query")
    assert failures.dead_letter_target("us", "audit", False) == (
        "biox.us",
        "us.unrecorded.dead-letter.audit",
    )


def test_an_error_message_is_cut_to_a_readable_length():
    d = Delivery(1, 1, "", "q", False, pika.BasicProperties(), b"", 0.0)
    h = failures.headers(read_envelope(d.properties), d, RuntimeError("x" * 5000), 1, "w")
    assert len(h["biox-error"]) == 1000


def test_failure_times_are_utc_whatever_the_machine_zone(monkeypatch):
    """On-call staff compare failure times across participants' machines."""
    import time as time_mod

    monkeypatch.setenv("TZ", "America/Mexico_City")
    time_mod.tzset()
    try:
        d = Delivery(1, 1, "biox.mx.out", "us.query", False, pika.BasicProperties(), b"", 0.0)
        h = failures.headers(read_envelope(d.properties), d, ValueError("x"), 1, "w")
        assert h["biox-failed-at"].endswith("+00:00")
        assert datetime.fromisoformat(h["biox-failed-at"]).utcoffset() == timedelta(0)
        assert h["biox-permanent"] is False  # an unexpected error is worth another try
    finally:
        monkeypatch.delenv("TZ")
        time_mod.tzset()


def test_what_a_delivery_does_not_say_is_left_empty_not_invented():
    env = read_envelope(pika.BasicProperties())
    assert (env.message_id, env.kind, env.schema, env.sender, env.recipient) == ("", "", "", "", "")
    assert env.attempt == 0  # a first delivery, not a retry
    assert env.correlation_id is None and env.user_id is None and env.timestamp is None
    assert read_envelope(pika.BasicProperties(headers={"biox-attempt": True})).attempt == 0


def test_header_text_reads_text_and_bytes_and_nothing_else():
    from biox.wire.inbound import header_text

    assert header_text("mx") == "mx"
    assert header_text(b"mx") == "mx"
    assert header_text(b"m\xffx") == "m\ufffdx"  # a broken byte is replaced, never raised
    assert header_text(5) is None and header_text(None) is None and header_text(["mx"]) is None
