"""Settings that would switch a safeguard off are refused at start, and an operator's view
of a dead letter shows what it is, never whom it is about (docs/security.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pika
import pytest
from pydantic import ValidationError

from biox.broker.deadletters import DeadLetter
from biox.broker.exports import redacted_body
from biox.settings import Settings


@pytest.mark.parametrize(
    "url",
    [
        "amqps://us-broker.example:5671/%2F",  # a sovereign broker: TLS
        "amqp://guest:guest@broker:5672/%2F",  # plain, but not this machine (compose)
        "amqp://guest:guest@10.0.0.5:5672/%2F",
    ],
)
def test_the_development_flag_is_refused_anywhere_but_a_loopback_plain_broker(url):
    with pytest.raises(ValidationError, match="BIOX_DEV_SHARED_BROKER"):
        Settings(dev_shared_broker=True, amqp_url=url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_development_flag_is_honoured_on_this_machine(host):
    assert Settings(
        dev_shared_broker=True, amqp_url=f"amqp://guest:guest@{host}:5672/"
    ).dev_shared_broker


def test_duplicate_markers_must_outlive_the_freshness_window():
    with pytest.raises(ValidationError, match="BIOX_MARKER_RETENTION_DAYS"):
        Settings(marker_retention_days=2, signature_max_age_s=3 * 86_400)
    assert Settings(marker_retention_days=4, signature_max_age_s=3 * 86_400)


def dead(body: bytes) -> DeadLetter:
    return DeadLetter("us.query.dlq", 1, pika.BasicProperties(type="query"), body)


def test_a_dead_letter_is_shown_by_what_it_is_never_by_whom_it_is_about():
    body = msgpack.packb(
        {
            "query_id": "q-1",
            "purpose": "enforce",
            "biographic": {"family_name": "Sánchez", "nickname": "el Flaco", "alias": "\x1b[31m"},
            "biometrics": [{"modality": "face", "template": b"\x01" * 2048}],
            "encounter": {"location": "US-POE-22", "note": "secret"},
        },
        use_bin_type=True,
    )
    shown = redacted_body(dead(body))
    assert shown["query_id"] == "q-1" and shown["purpose"] == "enforce"
    assert shown["biometrics"][0]["modality"] == "face"
    assert shown["biometrics"][0]["template"].startswith("<2048 bytes sha256:")
    text = repr(shown)
    for value in ("Sánchez", "el Flaco", "\x1b", "US-POE-22", "secret"):
        assert value not in text  # any key not on the allow-list, known or not


def test_a_crafted_body_is_not_decoded_past_the_limits():
    bomb = msgpack.packb([[0] * 10] * 100_000)  # small on the wire, large in memory
    assert "<undecodable>" in redacted_body(dead(bomb))
    assert "<too large>" in redacted_body(dead(b"\x00" * (3 * 1024 * 1024)))


def test_a_body_of_many_small_containers_is_refused_before_it_fills_memory():
    """1 000 lists of 1 000 zeros each: within every per-container limit, about 8 MB of
    pointers from a 1 MB body; stopped once it holds more than MAX_ITEMS."""
    from biox.wire import codec
    from biox.wire.errors import PermanentError, Reason
    from biox.wire.messages import Query

    bomb = msgpack.packb({"biometrics": [[0] * 1000] * 1000})
    with pytest.raises(PermanentError) as refused:
        codec.decode_body(Query, Query.schema_id(), bomb)
    assert refused.value.reason is Reason.too_large and "items" in refused.value.detail


def test_headers_are_measured_names_and_values_nested_included():
    from biox.broker.admission import header_bytes

    assert header_bytes({"biox-from": "us"}) == len("biox-from") + 2
    assert header_bytes({"CC": ["a" * 100] * 200}) > 16 * 1024
    deep: dict = {}
    for _ in range(20):
        deep = {"x": deep}
    assert header_bytes(deep) > 16 * 1024  # nested past reason


def test_the_prefetch_fits_the_worker_buffer():
    assert Settings().worker_prefetch == 128  # 256 MiB of 2 MiB messages
    assert Settings(max_message_bytes=64 * 1024).worker_prefetch == 256  # the configured one
    assert Settings(max_message_bytes=512 * 1024 * 1024).worker_prefetch == 1


def test_a_running_worker_sees_a_revoked_key_without_a_restart(tmp_path):
    from biox.trust.sealing import Trust, ensure_keys, load_ring, trust_path

    ensure_keys(tmp_path, ["us", "mx"])
    ring = load_ring(tmp_path, "us")
    [mx] = [k for k in ring.trust.keys.values() if k.code == "mx"]
    assert ring.refresh(every_s=0) is False  # nothing changed
    trust = Trust.load(trust_path(tmp_path))
    from dataclasses import replace

    trust.keys[mx.kid] = replace(trust.keys[mx.kid], revoked=True)
    path = trust_path(tmp_path)
    path.write_text(trust.dump())
    import os

    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert ring.refresh(every_s=0) is True
    assert ring.trust.keys[mx.kid].revoked


def test_a_failure_is_described_without_the_values_that_caused_it():
    """A gallery record whose name is longer than the schema allows makes building the
    answer fail: the log line and the dead letter's biox-error name the field, never the
    name itself."""
    from biox.broker.failures import describe
    from biox.wire.messages import Biographic

    secret = "Sánchez" * 100
    try:
        Biographic(family_name=secret)
    except Exception as exc:  # the pydantic error, as a handler meets it
        text = describe(exc)
    assert text.startswith("family_name")
    assert "Sánchez" not in text


def test_header_size_counts_names_values_and_depth_exactly():
    from biox.broker.admission import header_bytes

    assert header_bytes({"a": 1}) == 1 + 8
    assert header_bytes({"ab": [1, "xyz", b"\x00\x01"]}) == 2 + 8 + 3 + 2
    nested: object = 1
    for _ in range(8):
        nested = {"k": nested}
    assert header_bytes(nested) == 8 + 8  # eight names and a number, within depth
    nested = {"k": nested}
    assert header_bytes(nested) == 9 + (1 << 30)  # one level more: too large by definition
    listed: object = 1
    for _ in range(9):
        listed = [listed]
    assert header_bytes(listed) == 1 << 30


def test_a_dead_letter_exports_as_a_lossless_json_line():
    import base64
    import json

    from biox.broker.exports import export_line

    props = pika.BasicProperties(
        message_id="m-1",
        correlation_id="q-1",
        reply_to="us.replies.sim",
        type="query",
        timestamp=1_700_000_000,
        user_id="us.workers",
        delivery_mode=2,
        headers={
            "biox-reason": b"forged_sender",
            "x-death": [{"count": 1, "reason": b"rejected"}],
            "biox-failed-at": "2026-12-02T10:00:00+00:00",
        },
    )
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    line = export_line(DeadLetter("us.query.dlq", 7, props, b"\x80\x01"), expires)
    assert json.loads(json.dumps(line)) == line  # JSON as it stands
    assert line["expires_at"] == "2027-01-01T00:00:00+00:00"
    assert line["queue"] == "us.query.dlq" and base64.b64decode(line["body"]) == b"\x80\x01"
    p = line["properties"]
    assert (p["message_id"], p["correlation_id"], p["reply_to"], p["type"]) == (
        "m-1",
        "q-1",
        "us.replies.sim",
        "query",
    )
    assert (p["timestamp"], p["user_id"], p["delivery_mode"]) == (1_700_000_000, "us.workers", 2)
    assert p["headers"]["biox-reason"] == "forged_sender"  # bytes as text
    assert p["headers"]["x-death"] == [{"count": 1, "reason": "rejected"}]
    assert "content_type" not in p  # what was not set is not written
    back = pika.BasicProperties(**p)
    assert back.message_id == "m-1" and back.headers["biox-reason"] == "forged_sender"


def test_the_redacted_view_keeps_the_shape_and_names_what_it_could_not_read():
    import hashlib

    body = msgpack.packb(
        {1: "an integer key", "elements": ["biographic", "a name"], "blob": b"\x00" * 5},
        use_bin_type=True,
    )
    shown = redacted_body(dead(body))
    assert shown[1] == "<redacted: 14 characters>"  # a key that is not a string: redacted
    assert shown["elements"] == ["biographic", "a name"]  # an allowed list, item by item
    digest = hashlib.sha256(b"\x00" * 5).hexdigest()[:16]
    assert shown["blob"] == f"<5 bytes sha256:{digest}>"
    assert redacted_body(dead(b"\xc1")) == {"<undecodable>": "1 bytes (FormatError)"}
    edge = b"\x00" * (2 * 1024 * 1024)  # exactly the limit: decoded (and undecodable here)
    assert "<undecodable>" in redacted_body(dead(edge))
