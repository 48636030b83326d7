"""Signed and sealed partner messages: what verifies, what is refused and why."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from biox import codec
from biox.codec import Outgoing
from biox.errors import PermanentError, Reason
from biox.messages import Element, RetrievalAsk
from biox.sealing import (
    H_SEALED_TO,
    H_SIGNATURE,
    H_SIGNED_AT,
    H_SIGNING_KEY,
    Trust,
    ensure_keys,
    load_ring,
    memory_rings,
    new_key,
    signed_bytes,
    trust_path,
)

RINGS = memory_rings(["us", "mx", "sv"])


def message(sender: str = "mx", recipient: str = "us", mid: str = "m-1") -> Outgoing:
    ask = RetrievalAsk(query_id="q-1", elements=[Element.biographic], asked_by="op")
    return codec.to_partner(
        ask, sender=sender, recipient=recipient, message_id=mid, correlation_id="q-1"
    )


def refused(ring_of: str, out: Outgoing) -> Reason:
    with pytest.raises(PermanentError) as caught:
        RINGS[ring_of].open(out.envelope, out.body)
    return caught.value.reason


def test_a_sealed_message_opens_only_for_its_recipient_to_the_original_body():
    plain = message()
    sealed = RINGS["mx"].seal(plain)
    assert sealed.body != plain.body and plain.body not in sealed.body
    assert sealed.envelope.headers[H_SIGNING_KEY] == "mx-memory"
    assert sealed.envelope.headers[H_SEALED_TO] == "us-memory"
    assert RINGS["us"].open(sealed.envelope, sealed.body) == plain.body
    # sv holds no key it was sealed to, even with a valid signature in front of it
    addressed_to_sv = replace(sealed.envelope, recipient="sv")
    with pytest.raises(PermanentError) as caught:
        RINGS["sv"].open(addressed_to_sv, sealed.body)
    assert caught.value.reason in (Reason.bad_signature, Reason.undecryptable)


def test_the_signature_covers_the_body_and_every_header_a_receiver_acts_on():
    sealed = RINGS["mx"].seal(message())
    env = sealed.envelope
    tampered_body = bytes([sealed.body[0] ^ 1]) + sealed.body[1:]
    assert refused("us", Outgoing("", "", tampered_body, env)) == Reason.bad_signature
    for change in (
        {"message_id": "m-other"},  # a signature lifted onto another message
        {"kind": "response"},
        {"recipient": "sv"},
        {"correlation_id": "q-2"},
    ):
        forged = Outgoing("", "", sealed.body, replace(env, **change))
        reason = refused("us", forged)
        assert reason in (Reason.bad_signature, Reason.undecryptable), change
        if change != {"recipient": "sv"}:
            assert reason == Reason.bad_signature, change
    later = {**env.headers, H_SIGNED_AT: "2031-01-01T00:00:00+00:00"}
    assert refused("us", Outgoing("", "", sealed.body, replace(env, headers=later))) == (
        Reason.bad_signature
    )


def test_a_participant_cannot_sign_for_another():
    # sv seals and signs with its own key, but says the message is mx's
    as_sv = RINGS["sv"].seal(message(sender="sv"))
    claims_mx = replace(as_sv.envelope, sender="mx")
    assert refused("us", Outgoing("", "", as_sv.body, claims_mx)) == Reason.bad_signature
    # and naming mx's key id does not help: the signature is not mx's
    headers = {**as_sv.envelope.headers, H_SIGNING_KEY: "mx-memory"}
    forged = replace(claims_mx, headers=headers)
    assert refused("us", Outgoing("", "", as_sv.body, forged)) == Reason.bad_signature


def test_missing_unknown_and_revoked_keys_are_refused_by_name():
    sealed = RINGS["mx"].seal(message())
    env = sealed.envelope
    for header in (H_SIGNATURE, H_SIGNING_KEY, H_SEALED_TO, H_SIGNED_AT):
        headers = {k: v for k, v in env.headers.items() if k != header}
        stripped = Outgoing("", "", sealed.body, replace(env, headers=headers))
        assert refused("us", stripped) == Reason.unsigned, header
    unknown = {**env.headers, H_SIGNING_KEY: "mx-2031"}
    assert refused("us", Outgoing("", "", sealed.body, replace(env, headers=unknown))) == (
        Reason.unknown_key
    )
    garbage = {**env.headers, H_SIGNATURE: "not base64!"}
    assert refused("us", Outgoing("", "", sealed.body, replace(env, headers=garbage))) == (
        Reason.bad_signature
    )
    rings = memory_rings(["us", "mx"])
    revoked = rings["us"].trust.keys["mx-memory"]
    rings["us"].trust.keys["mx-memory"] = replace(revoked, revoked=True)
    again = rings["mx"].seal(message())
    with pytest.raises(PermanentError) as caught:
        rings["us"].open(again.envelope, again.body)
    assert caught.value.reason == Reason.unknown_key


def test_sealing_to_a_participant_without_a_key_is_refused():
    rings = memory_rings(["mx"])
    with pytest.raises(PermanentError) as caught:
        rings["mx"].seal(message())
    assert caught.value.reason == Reason.unknown_key


def test_signed_bytes_name_every_covered_field_in_order():
    env = message().envelope
    a = signed_bytes(env, "2026-01-01T00:00:00+00:00", b"body")
    assert a == signed_bytes(env, "2026-01-01T00:00:00+00:00", b"body")
    assert a != signed_bytes(env, "2026-01-01T00:00:00+00:00", b"bodz")
    assert a != signed_bytes(replace(env, sender="sv"), "2026-01-01T00:00:00+00:00", b"body")
    assert a != signed_bytes(
        replace(env, correlation_id=None), "2026-01-01T00:00:00+00:00", b"body"
    )


def test_key_files_are_owner_only_and_rotation_keeps_old_messages_readable(tmp_path):
    ensure_keys(tmp_path, ["us", "mx"])
    ensure_keys(tmp_path, ["us", "mx"])  # idempotent: no second key
    trust = Trust.load(trust_path(tmp_path))
    assert sorted(k.code for k in trust.keys.values()) == ["mx", "us"]
    for path in (tmp_path / "us").iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "us").st_mode) == 0o700

    mx, us = load_ring(tmp_path, "mx"), load_ring(tmp_path, "us")
    old = mx.seal(message())
    first_us_kid = us.kid
    rotated = new_key(tmp_path, "us", now=datetime(2099, 1, 1, tzinfo=UTC))
    mx, us = load_ring(tmp_path, "mx"), load_ring(tmp_path, "us")
    assert us.kid == rotated.kid != first_us_kid  # the newest signs ...
    new = mx.seal(message(mid="m-2"))
    assert new.envelope.headers[H_SEALED_TO] == rotated.kid  # ... and is sealed to
    assert us.open(new.envelope, new.body) == message(mid="m-2").body
    assert us.open(old.envelope, old.body) == message().body  # the old key still opens


def test_a_participant_without_private_keys_is_told_how_to_make_them(tmp_path):
    with pytest.raises(SystemExit, match="biox keys new -p us"):
        load_ring(tmp_path, "us")
