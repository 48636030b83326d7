"""Hypothesis-generated garbage through a live matcher: never a crash, always a reason."""

from __future__ import annotations

import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biox.routes import ROUTES
from biox.wire import addresses, codec
from tests.budget import examples
from tests.integration.conftest import Exchange, Peer, unpack, wait_dead
from tests.integration.test_bad_input import valid_query

pytestmark = pytest.mark.integration
TRIED: list[str] = []

json_like = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=64),
    ),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=25,
)


def mutated_query(draw_value: object, field: str) -> bytes:
    data = valid_query().model_dump(mode="python", exclude_none=True)
    data[field] = draw_value
    return msgpack.packb(data, use_bin_type=True, datetime=True)


bodies = st.one_of(
    st.binary(max_size=400),
    json_like.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.tuples(
        json_like, st.sampled_from(["biometrics", "purpose", "requesting", "encounter", "query_id"])
    ).map(lambda t: mutated_query(*t)),
)
headers = st.fixed_dictionaries(
    {
        "schema": st.sampled_from(["query/1", "query/1", "query/0", "", "response/1"]),
        "kind": st.sampled_from(["query", "query", "response", "", "x" * 200]),
        # sv has no agreement with mx: a stranger to it, never answered
        "sender": st.sampled_from(["us", "us", "sv", "zz", ""]),
    }
)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, head=headers)
def test_fuzzed_messages_are_rejected_or_dead_lettered_with_a_reason(
    exchange: Exchange, body: bytes, head: dict
):
    peer = Peer(exchange.url, exchange.settings.keys())
    try:
        sender = head["sender"] or None
        # only a known participant speaking a known kind is proven, so answered: whoever
        # biox-from names for an unknown kind may not be the one speaking
        observe = (
            peer.observe(addresses.ingress(sender, "mx"), f"{sender}.response")
            if sender == "us" and head["kind"] in ROUTES.routes
            else None
        )
        qid = f"fuzz-{uuid.uuid4().hex[:10]}"
        mid = peer.publish(
            addresses.ingress("mx", "us"),
            "mx.query",
            body,
            kind=head["kind"] or None,
            schema=head["schema"] or None,
            sender=sender,
            recipient="mx",
            correlation_id=qid,
        )
        TRIED.append(qid)
        if observe:  # an identifiable sender gets a rejected response naming the reason...
            got = peer.take(observe, 1, timeout=20, correlation_id=qid)
            assert got, f"no answer to {qid}"
            answer = unpack(got[0][1])
            if answer["status"] == "rejected":
                assert answer["reason_code"] and answer["reason"]
            else:  # hypothesis may build a valid query by chance: then it is answered
                assert answer["status"] in ("match", "no_match")
        else:  # ...anything else ends in the dead-letter queue with one
            dead = wait_dead(exchange, "mx.query.dlq", mid, timeout=20)
            assert dead.headers["biox-reason"]
    finally:
        peer.close()


def test_the_matcher_survived_the_fuzzing(exchange: Exchange, peer: Peer):
    assert all(p.poll() is None for _, p in exchange.workers.processes)
    observe = peer.observe(addresses.ingress("us", "mx"), "us.response")
    good = valid_query()
    peer.publish(
        addresses.outbox("us"), "mx.query", codec.encode_body(good), correlation_id=good.query_id
    )
    ((_props, body),) = peer.take(observe, 1, correlation_id=good.query_id)
    assert unpack(body)["status"] in ("match", "no_match")
    print(f"fuzzed messages tried through the live matcher: {len(TRIED)}")
