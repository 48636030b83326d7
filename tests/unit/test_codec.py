from __future__ import annotations

import struct
from datetime import UTC, datetime

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biox.registry import Purpose
from biox.routes import ROUTES
from biox.sim import synth
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.messages import EncounterSubmit, Query, References, SubjectStatus
from tests.budget import examples


def make_query() -> Query:
    when = datetime(2026, 11, 2, 10, 30, tzinfo=UTC)
    rng = np.random.default_rng(0)
    return Query(
        query_id="q-1",
        requesting="us",
        providing="mx",
        purpose=Purpose.enforce,
        references=References(transaction_id="q-1", encounter_id="E-1"),
        subject_status=synth.status_for("us", ["mx"], None),
        biometrics=synth.capture(7, 123, context=1),
        encounter=synth.encounter_here("us", rng),
        created_at=when,
        sent_at=when,
    )


def test_round_trip_keeps_templates_as_raw_bytes_and_times_as_timestamps():
    q = make_query()
    body = codec.encode_body(q)
    raw = msgpack.unpackb(body, timestamp=3)
    assert isinstance(raw["biometrics"]["face"]["template"], bytes)  # msgpack bin, not a list
    assert len(raw["biometrics"]["face"]["template"]) == 512 * 4
    assert isinstance(raw["created_at"], datetime)
    assert codec.decode_body(Query, "query/1", body) == q


def test_body_is_compact():
    body = codec.encode_body(make_query())
    assert len(body) < 12_000  # face 2 KB + up to ten fingers 768 B + irises


@pytest.mark.parametrize(
    ("kind", "schema", "body", "reason"),
    [
        ("query", "query/1", b"\xc1", Reason.undecodable),
        ("query", "query/1", msgpack.packb([1, 2]), Reason.undecodable),
        ("query", "query/2", b"\x80", Reason.unknown_schema),
        ("query", None, b"\x80", Reason.unknown_schema),
        ("telepathy", "telepathy/1", b"\x80", Reason.unknown_kind),
        ("query", "query/1", msgpack.packb({"query_id": "x"}), Reason.invalid_message),
    ],
)
def test_decode_names_the_reason(kind, schema, body, reason):
    with pytest.raises(PermanentError) as info:
        ROUTES.decode(kind, schema, body)
    assert info.value.reason is reason


def test_invalid_message_says_which_field():
    data = codec.encode_body(make_query())
    raw = msgpack.unpackb(data, timestamp=3)
    raw["purpose"] = "tourism"
    with pytest.raises(PermanentError) as info:
        codec.decode_body(Query, "query/1", msgpack.packb(raw, datetime=True))
    assert "purpose" in info.value.detail


def test_derived_ids_are_deterministic_and_distinct():
    a = codec.derived_id("m1", "query", "mx")
    assert a == codec.derived_id("m1", "query", "mx")
    assert a != codec.derived_id("m1", "query", "sv")
    assert a != codec.derived_id("m2", "query", "mx")


def test_outgoing_addresses_follow_the_topology():
    q = make_query()
    out = codec.to_partner(q, sender="us", recipient="mx", message_id="m", correlation_id="q-1")
    assert (out.exchange, out.routing_key) == ("biox.us.out", "mx.query")
    assert out.envelope.schema == "query/1"


@settings(max_examples=examples(300), deadline=None)
@given(
    kind=st.sampled_from([*ROUTES.kinds, "x"]),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**63), 2**64 - 1),
                st.floats(),
                st.text(),
                st.binary(),
            ),
            lambda c: (
                st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: msgpack.packb(v, use_bin_type=True)),
    ),
)
def test_fuzzed_bodies_only_ever_raise_a_permanent_error_with_a_reason(kind, body):
    schema = f"{kind}/1"
    try:
        ROUTES.decode(kind, schema, body)
    except PermanentError as exc:
        assert exc.reason in Reason


def test_submit_schema_rejects_extra_fields():
    with pytest.raises(PermanentError):
        codec.decode_body(EncounterSubmit, EncounterSubmit.schema_id(), msgpack.packb({"bogus": 1}))


def test_derived_ids_are_stable_across_versions():
    """Stored in idempotency records and sent to partners: a redelivery after an upgrade
    must reproduce the same id."""
    assert codec.derived_id("m1", "query", "mx") == "132c8a03-9fc3-5139-9878-7912ce156407"


def test_encoding_keeps_bytes_as_bin_and_leaves_out_what_is_unset():
    q = make_query()
    raw = msgpack.unpackb(codec.encode_body(q), raw=True, timestamp=3)
    assert isinstance(raw[b"biometrics"][b"face"][b"template"], bytes)
    assert isinstance(raw[b"query_id"], bytes)  # a str packed as str, a bytes as bin
    assert b"person_centric_id" not in raw[b"references"]  # None is not sent
    assert msgpack.unpackb(codec.encode_body(q), timestamp=3)["biometrics"]["face"]["template"]


def test_decoding_reads_text_as_text_and_refuses_keys_that_are_not_text():
    q = make_query()
    data = msgpack.unpackb(codec.encode_body(q), timestamp=3)
    assert codec.decode_body(Query, "query/1", codec.encode_body(q)).query_id == data["query_id"]
    data[1] = "a key that is a number"
    with pytest.raises(PermanentError) as info:
        codec.decode_body(Query, "query/1", msgpack.packb(data, datetime=True))
    assert info.value.reason is Reason.undecodable


@pytest.mark.parametrize(
    ("schema", "body", "reason", "says"),
    [
        (
            "query/9",
            b"\x80",
            Reason.unknown_schema,
            "got 'query/9', this participant reads query/1",
        ),
        # msgpack's message is empty here: the class alone still says what failed
        ("query/1", b"\xc1", Reason.undecodable, "not msgpack (FormatError)"),
        ("query/1", msgpack.packb([1]), Reason.undecodable, "top level is list, not a map"),
        (  # a timestamp past the year 9999: msgpack's datetime overflows
            "query/1",
            b"\x81\xa7sent_at\xc7\x0c\xff" + struct.pack(">Iq", 0, 2**40),
            Reason.undecodable,
            "not msgpack (OverflowError: date value out of range)",
        ),
    ],
)
def test_each_decoding_failure_says_what_it_found(schema, body, reason, says):
    with pytest.raises(PermanentError) as info:
        codec.decode_body(Query, schema, body)
    assert (info.value.reason, info.value.detail) == (reason, says)


def test_an_invalid_body_lists_up_to_five_problems_with_where_they_are():
    with pytest.raises(PermanentError) as info:
        codec.decode_body(Query, "query/1", msgpack.packb({"query_id": "x", "purpose": "nope"}))
    problems = info.value.detail.split("; ")
    assert len(problems) == 5
    assert problems[0].startswith("requesting: ")
    assert any(p.startswith("purpose: ") for p in problems)


def test_a_problem_with_the_body_as_a_whole_is_placed_at_body():
    """A rule across fields (a deletion notice must name its data) has no field to name."""
    from biox.wire.notices import About, Notice, NoticeType

    at = datetime(2026, 1, 1, tzinfo=UTC)
    good = Notice(
        type=NoticeType.deletion,
        notice_id="n-1",
        sender="mx",
        recipient="us",
        sent_at=at,
        about=About(message_ids=["m-9"]),
    )
    data = msgpack.unpackb(codec.encode_body(good), timestamp=3)
    data["about"] = {}
    with pytest.raises(PermanentError) as info:
        codec.decode_body(Notice, "notice/1", msgpack.packb(data, datetime=True))
    assert info.value.reason is Reason.invalid_message
    assert info.value.detail == "<body>: Value error, a deletion notice names the data it is about"


def test_every_builder_fills_the_whole_envelope():
    q = make_query()
    to_mx = codec.to_partner(
        q, sender="us", recipient="mx", message_id="m", correlation_id="c", reply_to="r"
    )
    assert to_mx.envelope == codec.Envelope("m", "query", "query/1", "us", "mx", "c", "r")
    own = codec.to_own_inbox(q, participant="us", message_id="m2", correlation_id="c2")
    assert (own.exchange, own.routing_key) == ("biox.us", "us.query")
    assert own.envelope == codec.Envelope("m2", "query", "query/1", "us", "us", "c2", None)
    assert own.envelope.attempt == 0 and own.envelope.headers == {}


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        (b"x" * (64 * 1024 + 1), "max_bin_len"),
        ("x" * (8 * 1024 + 1), "max_str_len"),
        (list(range(1001)), "max_array_len"),
        ({str(i): i for i in range(257)}, "max_map_len"),
    ],
)
def test_a_body_beyond_the_msgpack_limits_is_refused_as_too_large_before_it_is_built(value, limit):
    body = msgpack.packb({"encounter_id": value}, use_bin_type=True)
    with pytest.raises(PermanentError) as info:
        codec.decode_body(EncounterSubmit, EncounterSubmit.schema_id(), body)
    assert info.value.reason is Reason.too_large
    assert limit in info.value.detail


def test_texts_a_partner_writes_are_bounded_in_the_models():
    rng = np.random.default_rng(1)
    sub = EncounterSubmit(
        encounter_id="E-1",
        purpose=Purpose.enforce,
        subject_status=SubjectStatus(citizenships=["gt"]),
        biometrics=synth.capture(7, 1, context=3),
        biographic=synth.person(7, 1).biographic,
        encounter=synth.encounter_here("us", rng),
    )
    data = msgpack.unpackb(codec.encode_body(sub), timestamp=3)
    data["biographic"]["family_name"] = "x" * 201
    body = msgpack.packb(data, use_bin_type=True, datetime=True)
    with pytest.raises(PermanentError) as info:
        codec.decode_body(EncounterSubmit, EncounterSubmit.schema_id(), body)
    assert info.value.reason is Reason.invalid_message
    assert "biographic.family_name" in info.value.detail
