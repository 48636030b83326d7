"""Who may send what, as the broker and the signature prove it: identities and refusals."""

from __future__ import annotations

from dataclasses import replace

import pika
import pytest

from biox.broker import failures
from biox.broker.link import Delivery
from biox.broker.publisher import republish_properties
from biox.handlers.intake import foreign_reply_to
from biox.routes import ROUTES
from biox.trust.identity import (
    Role,
    broker_user,
    check_identity,
    encounter_system,
    encounter_user,
    parse_user,
)
from biox.wire.codec import Envelope
from biox.wire.errors import PermanentError, Reason, TransientError
from biox.wire.inbound import arrived, first_arrival, read_envelope


def env(kind: str, sender: str, user: str | None, recipient: str = "us") -> Envelope:
    return Envelope("m-1", kind, f"{kind}/1", sender, recipient, "q-1", user_id=user)


def reason(e: Envelope, me: str = "us") -> Reason | None:
    try:
        check_identity(e, me, ROUTES.sender_roles(e.kind))
    except PermanentError as exc:
        return exc.reason
    return None


def test_broker_users_name_a_participant_and_a_role():
    assert broker_user("mx", Role.link) == "mx.link"
    assert parse_user("mx.link") == ("mx", Role.link)
    assert parse_user("us.encounters") == ("us", Role.encounters)
    for user in (
        None,
        "",
        "guest",
        "mx",
        "mx.",
        ".workers",
        "mx.admin",
        "mx.workers.x",
        "mx.x.workers",
        "mx.link.link",
    ):  # a role is the whole rest of the name
        assert parse_user(user) is None, user


@pytest.mark.parametrize(
    ("kind", "sender", "user", "expected"),
    [
        # a partner kind: from that partner's workers (one broker) or its link (shovel)
        ("query", "mx", "mx.workers", None),
        ("query", "mx", "mx.link", None),
        ("query", "mx", "sv.link", Reason.forged_sender),  # sv speaking as mx
        ("query", "mx", "mx.operators", Reason.forged_sender),
        ("query", "mx", "mx.encounters", Reason.forged_sender),
        ("query", "mx", "guest", Reason.unauthenticated),
        ("query", "mx", None, Reason.unauthenticated),
        ("query", "us", "us.workers", Reason.forged_sender),  # nobody queries itself
        # an own kind: our workers or operators, never a partner or an encounter system
        ("review.decision", "us", "us.operators", None),
        ("review.decision", "us", "us.workers", None),
        ("review.decision", "us", "us.encounters", Reason.forged_sender),
        ("review.decision", "mx", "mx.link", Reason.forged_sender),
        ("review.decision", "us", "mx.link", Reason.forged_sender),
        # a submission: our encounter systems only
        ("encounter.submit", "us", "us.encounters", None),
        ("encounter.submit", "us", "us.operators", Reason.forged_sender),
        ("encounter.submit", "mx", "mx.link", Reason.forged_sender),
        ("encounter.submit", "us", "mx.encounters", Reason.forged_sender),
    ],
)
def test_the_broker_identity_must_speak_for_biox_from(kind, sender, user, expected):
    assert reason(env(kind, sender, user)) == expected


def test_partner_input_loses_the_headers_only_biox_writes():
    headers = {
        "biox-from": "mx",
        "biox-to": "us",
        "biox-schema": "query/1",
        "biox-signature": "s",
        "biox-signing-key": "k",
        "biox-sealed-to": "t",
        "biox-signed-at": "a",
        "biox-original-exchange": "",
        "biox-original-routing-key": "us.intake",
        "biox-original-user-id": "us.encounters",
        "biox-actor": "chief",
        "biox-attempt": 9,
        "biox-replays": 3,
        "biox-reason": "x",
        "x-trace": "kept",
    }
    e = replace(env("query", "mx", "mx.link"), headers=headers, attempt=9)
    fresh = arrived(e, "biox.us", "us.query", "us")
    assert set(fresh.headers) == {
        "biox-from",
        "biox-to",
        "biox-schema",
        "biox-signature",
        "biox-signing-key",
        "biox-sealed-to",
        "biox-signed-at",
        "x-trace",
    }
    assert fresh.attempt == 0 and fresh.user_id == "mx.link"
    # our own messages keep theirs (the examiner behind a decision)
    own = replace(env("review.decision", "us", "us.operators"), headers={"biox-actor": "ana"})
    assert arrived(own, "biox.us", "us.review.decision", "us").headers == {"biox-actor": "ana"}
    # our own hops through the inbox keep why they were made (the audit records it)
    hop = replace(e, user_id="us.workers", headers={**headers, "biox-reason": "bad_signature"})
    assert arrived(hop, "biox.us", "us.dead-letter.query", "us").headers["biox-reason"] == (
        "bad_signature"
    )


def test_a_copy_back_from_our_retry_tier_is_checked_against_its_first_sender():
    # the tier copy was republished by our worker (user us.workers); the first sender's
    # broker identity travels in biox-original-user-id, written by us
    e = replace(
        env("query", "mx", "us.workers"),
        headers={"biox-original-user-id": "mx.link", "biox-attempt": 1},
        attempt=1,
    )
    back = arrived(e, "", "us.query", "us")
    assert back.user_id == "mx.link" and back.attempt == 1
    assert reason(back) is None
    no_header = replace(e, headers={})
    assert arrived(no_header, "", "us.query", "us").user_id == "us.workers"


def test_only_our_own_hop_keys_make_a_delivery_one_of_our_copies():
    """A replay, retry or dead-letter key is ours only with our code in front; the same
    word under another participant's code, or a kind's key, is a fresh delivery."""
    headers = {"biox-original-user-id": "mx.link", "biox-reason": "bad_signature"}
    e = replace(env("query", "mx", "us.operators"), headers=headers, attempt=2)
    replayed = arrived(e, "biox.us", "us.replay.query", "us")
    assert replayed.user_id == "mx.link" and replayed.attempt == 2  # checked as the first sender
    for key in ("us.retry.query.5", "us.dead-letter.query"):
        assert arrived(e, "biox.us", key, "us").headers == headers  # our hop: kept whole
        # the same key from a partner's user is no hop of ours
        theirs = arrived(replace(e, user_id="sv.link"), "biox.us", key, "us")
        assert theirs.headers == {} and theirs.user_id == "sv.link"
    for key in ("mx.replay.query", "mx.retry.query.5", "us.query"):
        fresh = arrived(e, "biox.us", key, "us")
        assert fresh.user_id == "us.operators" and fresh.attempt == 0
        assert fresh.headers == {}  # internal headers a sender wrote: dropped


def test_the_route_table_says_which_roles_send_each_kind_and_which_kinds_are_sealed():
    assert ROUTES.sender_roles("query") == {
        "own": frozenset(),
        "partner": frozenset({Role.workers, Role.link}),
    }
    assert ROUTES.sender_roles("retrieval.ask") == {
        "own": frozenset({Role.workers, Role.operators}),
        "partner": frozenset(),
    }
    assert ROUTES.sender_roles("encounter.submit")["own"] == frozenset({Role.encounters})
    assert ROUTES.sealed("query", "us", "mx")
    assert ROUTES.sealed("retrieval.request", "mx", "us")
    assert not ROUTES.sealed("query", "us", "us")
    assert not ROUTES.sealed("review.case", "us", "us")
    assert not ROUTES.sealed("encounter.result", "us", "us")
    assert not ROUTES.sealed("no.such.kind", "us", "mx")


def test_a_worker_refuses_plain_amqp_outside_the_development_broker():
    from biox.runtime import run_worker
    from biox.settings import Settings

    settings = Settings(amqp_url="amqp://guest:guest@localhost:5672/%2F")
    with pytest.raises(SystemExit, match="plain AMQP"):
        run_worker("query", "mx", settings)


@pytest.mark.parametrize(
    ("kind", "sender", "user", "detail"),
    [
        ("query", "mx", "guest", "broker user 'guest'"),
        ("query", "mx", None, "broker user None"),
        ("query", "mx", "sv.link", "biox-from 'mx' sent by broker user 'sv.link'"),
        (
            "encounter.submit",
            "us",
            "us.operators",
            "encounter.submit may not come from 'us.operators'",
        ),
    ],
)
def test_a_refusal_names_who_the_broker_says_spoke(kind, sender, user, detail):
    """The dead letter's biox-error is what on-call staff read: it names the broker user
    and the sender it claimed to be."""
    with pytest.raises(PermanentError) as refused:
        check_identity(env(kind, sender, user), "us", ROUTES.sender_roles(kind))
    assert refused.value.detail == detail


def test_a_sender_naming_us_in_biox_from_keeps_no_internal_header():
    """sv writes ``biox-from: us`` and a forged first sender: on arrival both the forged
    ``biox-original-user-id`` and the actor are dropped, so a later retry or replay is
    checked against sv's own broker user, and refused (issue: forged identity replayed)."""
    forged = replace(
        env("notice.send", "us", "sv.link"),
        headers={"biox-original-user-id": "us.operators", "biox-actor": "chief", "x": 1},
    )
    fresh = arrived(forged, "biox.us.partners", "us.notice.send", "us")
    assert fresh.headers == {"x": 1} and fresh.user_id == "sv.link"
    assert reason(fresh) == Reason.forged_sender
    # our own operators' fresh message keeps the person behind it, not an identity claim
    own = replace(forged, user_id="us.operators")
    assert arrived(own, "biox.us", "us.notice.send", "us").headers == {
        "biox-actor": "chief",
        "x": 1,
    }


@pytest.mark.parametrize("hops", [1, 2, 3, 5])
def test_a_partners_message_is_checked_as_the_partner_after_every_retry_hop(hops):
    """Each hop is republished by our workers (the broker stamps ``us.workers``) and comes
    back from the tier on the default exchange; the first sender's identity rides along
    in ``biox-original-user-id`` and is what the identity check sees, hop after hop."""
    props = pika.BasicProperties(
        message_id="m-1",
        type="query",
        user_id="mx.link",
        headers={"biox-from": "mx", "biox-to": "us", "biox-original-user-id": "us.operators"},
    )
    exchange, key = "biox.us.partners", "us.query"
    for n in range(hops + 1):
        e = arrived(read_envelope(props), exchange, key, "us")
        assert e.user_id == "mx.link" and reason(e) is None, n
        d = Delivery(0, n, exchange, key, False, props, b"", 0.0)
        headers = failures.headers(e, d, TransientError(Reason.unknown_query), n + 1, "w")
        props = republish_properties(props, headers, "us.workers")  # into the retry tier
        exchange, key = "", "us.query"  # and back by the broker's dead-lettering
    assert props.headers["biox-original-user-id"] == "mx.link"
    # the same copy replayed by our operators: still the first sender
    props.user_id = "us.operators"
    replayed = arrived(read_envelope(props), "biox.us", "us.replay.query", "us")
    assert replayed.user_id == "mx.link" and reason(replayed) is None


def test_each_encounter_system_has_its_own_user_and_its_own_reply_queues():
    assert encounter_user("us", "poe") == "us.encounters.poe"
    assert parse_user("us.encounters.poe") == ("us", Role.encounters)
    assert encounter_system("us.encounters.poe") == "poe"
    assert encounter_system("us.encounters") is None and encounter_system("us.workers") is None
    assert parse_user("us.workers.poe") is None  # only encounter systems name one
    ok = replace(env("encounter.submit", "us", "us.encounters.poe"), reply_to="us.replies.poe.d1")
    assert foreign_reply_to("us", ok) is None
    assert foreign_reply_to("us", replace(ok, reply_to="us.replies.poe")) is None
    for theirs in ("us.replies.gate-7", "us.replies.poex", "us.review", ""):
        assert "not one of us.replies.poe's" in (
            foreign_reply_to("us", replace(ok, reply_to=theirs)) or ""
        ), theirs


def test_on_the_shared_development_broker_biox_from_is_all_there_is():
    """Everyone is guest there: our own operators' message keeps the person behind it;
    a named broker user still counts for what it is."""
    own = replace(env("review.decision", "us", "guest"), headers={"biox-actor": "ana"})
    assert arrived(own, "biox.us", "us.review.decision", "us").headers == {}
    shared = arrived(own, "biox.us", "us.review.decision", "us", shared_broker=True)
    assert shared.headers == {"biox-actor": "ana"}
    theirs = replace(own, user_id="sv.link")
    assert arrived(theirs, "biox.us", "us.review.decision", "us", shared_broker=True).headers == {}


def test_a_first_arrival_is_anything_but_our_own_tier_copies_and_replays():
    def props(user: str | None) -> pika.BasicProperties:
        return pika.BasicProperties(user_id=user)

    assert first_arrival("biox.us.partners.mx", "us.query", "us", props("mx.link"))
    assert not first_arrival("", "us.query", "us", props("us.workers"))  # back from a tier
    assert not first_arrival("biox.us", "us.replay.query", "us", props("us.operators"))
    # the same word under another participant's code, or by someone else: a first arrival
    assert first_arrival("biox.us", "mx.replay.query", "us", props("us.operators"))
    assert first_arrival("biox.us", "us.replay.query", "us", props("mx.link"))
    assert first_arrival("biox.us", "us.replay.query", "us", props(None))
