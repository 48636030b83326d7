"""Signed and sealed partner messages: what verifies, what is refused and why."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from dataclasses import replace
from datetime import UTC, datetime

import msgpack
import pytest
from nacl.public import SealedBox
from nacl.signing import SigningKey

from biox.trust.sealing import (
    Trust,
    ensure_keys,
    load_ring,
    memory_rings,
    new_key,
    signed_bytes,
    trust_path,
)
from biox.wire import codec
from biox.wire.codec import H_SEALED_TO, H_SIGNATURE, H_SIGNED_AT, H_SIGNING_KEY, Outgoing
from biox.wire.errors import PermanentError, Reason
from biox.wire.messages import Element, RetrievalAsk

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
    with pytest.raises(SystemExit) as told:
        load_ring(tmp_path, "us")
    assert str(told.value).endswith(
        "run `biox keys new -p us` (and share the public key in trust.toml with the partners)"
    )


# --- the wire format, pinned: another implementation must produce these bytes ---------------

KNOWN_SIGNED = (
    "98b162696f782d7369676e61747572652d7631a36d2d31ad72657472696576616c2e61736ba26d78a27573"
    "a3712d31b9323032362d30312d30315430303a30303a30302b30303a3030c420230d8358dc8e8890b4c58d"
    "eeb62912ee2f20357ae92a5cc861b98e68fe31acb5"
)


def test_the_signed_bytes_are_the_documented_msgpack_array():
    """docs/security.md, "Signed bytes": an array of eight, strings as str, the digest as
    bin. A change here breaks every partner that verifies our signatures."""
    env = codec.Envelope("m-1", "retrieval.ask", "retrieval.ask/1", "mx", "us", "q-1")
    assert signed_bytes(env, "2026-01-01T00:00:00+00:00", b"body").hex() == KNOWN_SIGNED
    unpacked = msgpack.unpackb(bytes.fromhex(KNOWN_SIGNED), raw=False)
    assert unpacked[:7] == [
        "biox-signature-v1",
        "m-1",
        "retrieval.ask",
        "mx",
        "us",
        "q-1",
        "2026-01-01T00:00:00+00:00",
    ]
    assert unpacked[7] == hashlib.sha256(b"body").digest()
    no_correlation = msgpack.unpackb(signed_bytes(replace(env, correlation_id=None), "t", b""))
    assert no_correlation[5] == ""


def test_the_signing_time_is_utc_to_the_second():
    sealed = RINGS["mx"].seal(message())
    at = sealed.envelope.headers[H_SIGNED_AT]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", at), at


def test_header_values_that_arrive_as_bytes_are_read_as_utf8():
    """pika hands some header values over as bytes: a signature still verifies."""
    sealed = RINGS["mx"].seal(message())
    as_bytes = {
        k: v.encode() if isinstance(v, str) else v for k, v in sealed.envelope.headers.items()
    }
    env = replace(sealed.envelope, headers=as_bytes)
    assert RINGS["us"].open(env, sealed.body) == message().body


@pytest.mark.parametrize(
    ("header", "value", "why"),
    [
        (H_SIGNATURE, b"\xff\xfe not utf-8", Reason.bad_signature),  # read, then fails to verify
        (H_SIGNATURE, 12345, Reason.unsigned),  # not text at all: as if absent
        (H_SIGNING_KEY, b"\xffmx-memory", Reason.unknown_key),
    ],
)
def test_header_values_that_are_not_text_are_refused_by_reason_not_by_a_crash(header, value, why):
    sealed = RINGS["mx"].seal(message())
    env = replace(sealed.envelope, headers={**sealed.envelope.headers, header: value})
    with pytest.raises(PermanentError) as caught:
        RINGS["us"].open(env, sealed.body)
    assert caught.value.reason is why


def test_a_message_sealed_to_us_but_addressed_to_another_is_not_opened():
    """mx signs a message for sv but seals it to us's key and routes it to us: us holds the
    key, the signature is mx's, and still us refuses what was not addressed to it."""
    mx, us = RINGS["mx"], RINGS["us"]
    to_sv = message(recipient="sv")
    body = SealedBox(us.trust.keys["us-memory"].box).encrypt(to_sv.body)
    at = "2026-11-22T12:00:00+00:00"
    signature = mx.signing.sign(signed_bytes(to_sv.envelope, at, body)).signature
    headers = {
        H_SIGNING_KEY: mx.kid,
        H_SEALED_TO: "us-memory",
        H_SIGNED_AT: at,
        H_SIGNATURE: base64.b64encode(signature).decode(),
    }
    with pytest.raises(PermanentError) as caught:
        us.open(replace(to_sv.envelope, headers=headers), body)
    assert caught.value.reason is Reason.undecryptable


# --- the trust file and key files -----------------------------------------------------------


def test_the_trust_file_keeps_each_keys_creation_and_revocation(tmp_path):
    ensure_keys(tmp_path, ["us", "mx"])
    trust = Trust.load(trust_path(tmp_path))
    [us] = [k for k in trust.keys.values() if k.code == "us"]
    trust.keys[us.kid] = replace(us, revoked=True)
    text = trust.dump()
    assert text.startswith("# Public keys of the participants (biox keys).")
    assert trust_path(tmp_path) == tmp_path / "trust.toml"
    trust_path(tmp_path).write_text(text)
    back = Trust.load(trust_path(tmp_path))
    assert {k: (v.code, v.created, v.revoked) for k, v in back.keys.items()} == {
        k: (v.code, v.created, v.revoked) for k, v in trust.keys.items()
    }
    assert back.keys[us.kid].revoked and back.newest("us") is None
    assert back.newest("mx") is not None and not back.newest("mx").revoked


def test_a_trust_file_written_by_hand_may_leave_out_creation_revocation_and_keys(tmp_path):
    path = tmp_path / "trust.toml"
    path.write_text("# nothing yet\n")
    assert Trust.load(path).keys == {}
    sign = bytes(RINGS["us"].signing.verify_key).hex()
    box = bytes(RINGS["us"].trust.keys["us-memory"].box).hex()
    path.write_text(f'[keys."us-1"]\nparticipant = "us"\nsign = "{sign}"\nbox = "{box}"\n')
    [key] = Trust.load(path).keys.values()
    assert (key.kid, key.code, key.created, key.revoked) == ("us-1", "us", "", False)


def test_a_key_id_names_its_participant_and_utc_creation_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "America/Mexico_City")  # a local zone six hours from UTC
    time.tzset()
    try:
        before = datetime.now(UTC)
        key = new_key(tmp_path / "nested" / "keys", "mx")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert re.fullmatch(r"mx-\d{8}T\d{6}-[0-9a-f]{6}", key.kid), key.kid
    created = datetime.strptime(key.created, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    assert abs((created - before).total_seconds()) < 5
    assert key.kid.split("-")[1] == key.created


def test_missing_private_keys_are_made_again_even_when_the_trust_file_names_some(tmp_path):
    ensure_keys(tmp_path, ["us"])
    lost = load_ring(tmp_path, "us").kid
    for path in (tmp_path / "us").iterdir():
        path.unlink()
    (tmp_path / "us").rmdir()
    ensure_keys(tmp_path, ["us"])
    trust = Trust.load(trust_path(tmp_path))
    assert load_ring(tmp_path, "us").kid == trust.newest("us").kid != lost
    assert trust.keys[lost].revoked  # nothing can open what is sealed to it any more


def test_a_private_key_file_the_trust_file_does_not_name_never_signs(tmp_path):
    ensure_keys(tmp_path, ["us"])
    known = load_ring(tmp_path, "us").kid
    (tmp_path / "us" / "us-zzzz.sign").write_text(bytes(SigningKey.generate()).hex())
    assert load_ring(tmp_path, "us").kid == known


def test_keys_are_made_for_every_participant_that_lacks_them_whatever_the_order(tmp_path):
    ensure_keys(tmp_path, ["us"])
    ensure_keys(tmp_path, ["us", "mx", "sv"])  # us has keys: the others still get theirs
    trust = Trust.load(trust_path(tmp_path))
    assert {k.code for k in trust.keys.values()} == {"us", "mx", "sv"}
    assert all(load_ring(tmp_path, c).me == c for c in ("us", "mx", "sv"))


def test_a_signed_body_not_sealed_to_the_key_it_names_is_undecryptable_and_said_so():
    """mx signs correctly but sealed the body to a key that is not the one us holds under
    that id (a stale trust file on mx's side): the signature holds, the box does not open."""
    from nacl.public import PrivateKey

    rings = memory_rings(["us", "mx"])
    stale = rings["mx"].trust.keys["us-memory"]
    rings["mx"].trust.keys["us-memory"] = replace(stale, box=PrivateKey.generate().public_key)
    sealed = rings["mx"].seal(message())
    with pytest.raises(PermanentError) as caught:
        rings["us"].open(sealed.envelope, sealed.body)
    assert (caught.value.reason, caught.value.detail) == (
        Reason.undecryptable,
        "sealed to 'us-memory'",
    )


def test_each_refusal_names_what_failed_for_the_dead_letter():
    sealed = RINGS["mx"].seal(message())
    env = sealed.envelope

    def detail(ring: str, headers: dict | None = None, **change) -> str:
        e = replace(env, headers=headers if headers is not None else env.headers, **change)
        with pytest.raises(PermanentError) as caught:
            RINGS[ring].open(e, sealed.body)
        return caught.value.detail

    no_signature = {k: v for k, v in env.headers.items() if k != H_SIGNATURE}
    assert detail("us", no_signature) == "retrieval.ask from 'mx'"
    assert detail("us", {**env.headers, H_SIGNING_KEY: "mx-2031"}) == "signing key 'mx-2031'"
    assert detail("us", sender="sv") == "key 'mx-memory' is 'mx''s, not 'sv''s"
    assert detail("us", {**env.headers, H_SIGNATURE: "not base64!"}) == "retrieval.ask from 'mx'"
    assert detail("sv") == "sealed to 'us-memory'"  # signed for us, sv holds no such key
    with pytest.raises(PermanentError) as caught:
        memory_rings(["mx"])["mx"].seal(message())
    assert caught.value.detail == "no key for 'us' to seal to"


def test_a_partners_keys_are_imported_only_from_it_and_only_with_its_fingerprint(tmp_path):
    """sv exports its public keys and reads the fingerprint to us by telephone. us takes
    sv's keys only: a file carrying a key for mx (or another key under a known id), or
    one whose fingerprint differs, changes nothing."""
    from dataclasses import replace as changed

    from biox.trust.sealing import Trust, export_keys, fingerprint, import_keys, new_key

    new_key(tmp_path / "sv", "sv")
    new_key(tmp_path / "mx", "mx")
    sv_trust = Trust.load(trust_path(tmp_path / "sv"))
    text = export_keys(sv_trust, "sv")
    ours = Trust()
    assert import_keys(ours, text, "sv", fingerprint(text)) == list(sv_trust.keys)
    with pytest.raises(ValueError, match="fingerprint"):
        import_keys(Trust(), text, "sv", "0000 " * 8)
    mx_text = export_keys(Trust.load(trust_path(tmp_path / "mx")), "mx")
    both = text + "\n" + mx_text
    with pytest.raises(ValueError, match="keys of mx"):
        import_keys(Trust(), both, "sv", fingerprint(both))
    [kid] = sv_trust.keys
    other = Trust.load(trust_path(tmp_path / "mx"))
    [mx_key] = other.keys.values()
    swapped = Trust({kid: changed(mx_key, kid=kid, code="sv")}).dump()
    with pytest.raises(ValueError, match="already another key"):
        import_keys(ours, swapped, "sv", fingerprint(swapped))
    revoked = Trust({kid: changed(sv_trust.keys[kid], revoked=True)}).dump()
    assert import_keys(ours, revoked, "sv", fingerprint(revoked)) == []
    assert ours.keys[kid].revoked  # sv's revocation, taken
