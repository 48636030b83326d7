"""Signed and sealed partner messages (docs/architecture.md, "Signatures and sealing").

Every message that crosses to another participant is sealed to the recipient's X25519
key (libsodium's sealed box) and signed with the sender's Ed25519 key. The signature
covers the digest of the sealed body and the headers a receiver acts on (message id,
kind, from, to, correlation, signing time), so a signature lifted onto another message
id, another kind or another recipient does not verify. Brokers, shovels, the audit queue
and dead-letter exports only ever hold ciphertext; only the recipient's workers open it.

Keys carry ids so that they can rotate: a sender seals to the recipient's newest key and
names it; a receiver keeps every private key it has not retired, and accepts any public
key its trust file lists and has not revoked. Private keys live in
``<keys_dir>/<code>/`` (owner-only); public keys of every participant in
``<keys_dir>/trust.toml``, which in a real deployment is exchanged out of band.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
import tomllib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from biox.wire.codec import (
    H_SEALED_TO,
    H_SIGNATURE,
    H_SIGNED_AT,
    H_SIGNING_KEY,
    Envelope,
    Outgoing,
)
from biox.wire.errors import PermanentError, Reason

_CONTEXT = "biox-signature-v1"


@dataclass(frozen=True)
class PublicKeys:
    """One key id of one participant: what others verify its signatures with and seal to."""

    kid: str
    code: str
    verify: VerifyKey
    box: PublicKey
    created: str
    revoked: bool = False


@dataclass
class Trust:
    """The public keys of every participant, by key id."""

    keys: dict[str, PublicKeys] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Trust:
        if not path.exists():
            return cls()
        return cls.loads(path.read_text())

    @classmethod
    def loads(cls, text: str) -> Trust:
        raw = tomllib.loads(text)
        keys = {}
        for kid, body in raw.get("keys", {}).items():
            keys[kid] = PublicKeys(
                kid=kid,
                code=body["participant"],
                verify=VerifyKey(bytes.fromhex(body["sign"])),
                box=PublicKey(bytes.fromhex(body["box"])),
                created=body.get("created", ""),
                revoked=bool(body.get("revoked", False)),
            )
        return cls(keys)

    def dump(self) -> str:
        lines = ["# Public keys of the participants (biox keys). Exchanged out of band.", ""]
        for k in sorted(self.keys.values(), key=lambda k: (k.code, k.created, k.kid)):
            lines += [
                f'[keys."{k.kid}"]',
                f'participant = "{k.code}"',
                f'sign = "{bytes(k.verify).hex()}"',
                f'box = "{bytes(k.box).hex()}"',
                f'created = "{k.created}"',
                f"revoked = {'true' if k.revoked else 'false'}",
                "",
            ]
        return "\n".join(lines)

    def newest(self, code: str) -> PublicKeys | None:
        live = [k for k in self.keys.values() if k.code == code and not k.revoked]
        return max(live, key=lambda k: (k.created, k.kid), default=None)


@dataclass
class KeyRing:
    """A participant's private keys and everyone's public keys."""

    me: str
    kid: str
    signing: SigningKey
    boxes: dict[str, PrivateKey]  # every private box key not yet retired, by key id
    trust: Trust
    #: the trust file this ring was read from: ``refresh`` re-reads it when it changes
    source: Path | None = None
    _seen: tuple[float, float] = (0.0, float("-inf"))  # (file mtime, when last looked)

    def refresh(self, every_s: float = 1.0) -> bool:
        """Re-reads the trust file if it changed (a key revoked or added), looking at most
        every ``every_s``: a running worker honours a revocation within a second, without
        a restart. True when it re-read."""
        if self.source is None or time.monotonic() - self._seen[1] < every_s:
            return False
        try:
            mtime = self.source.stat().st_mtime
        except OSError:
            return False
        changed = mtime != self._seen[0]
        self._seen = (mtime, time.monotonic())
        if changed:
            self.trust = Trust.load(self.source)
        return changed

    # --- sending ---------------------------------------------------------------------------

    def seal(self, out: Outgoing, signed_at: datetime | None = None) -> Outgoing:
        """The message sealed to its recipient's newest key and signed by us."""
        env = out.envelope
        to = self.trust.newest(env.recipient)
        if to is None:
            raise PermanentError(Reason.unknown_key, f"no key for {env.recipient!r} to seal to")
        body = SealedBox(to.box).encrypt(out.body)
        at = (signed_at or datetime.now(UTC)).isoformat(timespec="seconds")
        headers = {
            **env.headers,
            H_SIGNING_KEY: self.kid,
            H_SEALED_TO: to.kid,
            H_SIGNED_AT: at,
        }
        signature = self.signing.sign(signed_bytes(env, at, body)).signature
        headers[H_SIGNATURE] = base64.b64encode(signature).decode()
        return Outgoing(out.exchange, out.routing_key, body, replace(env, headers=headers))

    # --- receiving -------------------------------------------------------------------------

    def open(
        self, env: Envelope, body: bytes, window: tuple[datetime, datetime] | None = None
    ) -> bytes:
        """The plaintext body of a partner's message, once its signature is verified.

        ``window``: when the signature may have been made (a first arrival's freshness,
        docs/security.md, "Freshness"); a copy we replay ourselves is not held to it.
        Refusals are permanent and name what failed: ``unsigned``, ``unknown_key``,
        ``bad_signature``, ``stale``, ``undecryptable``.
        """
        h = env.headers
        signature, kid = _text(h.get(H_SIGNATURE)), _text(h.get(H_SIGNING_KEY))
        sealed_to, at = _text(h.get(H_SEALED_TO)), _text(h.get(H_SIGNED_AT))
        if not (signature and kid and sealed_to and at):
            raise PermanentError(Reason.unsigned, f"{env.kind} from {env.sender!r}")
        key = self.trust.keys.get(kid)
        if key is None or key.revoked:
            raise PermanentError(Reason.unknown_key, f"signing key {kid!r}")
        if key.code != env.sender:
            raise PermanentError(
                Reason.bad_signature, f"key {kid!r} is {key.code!r}'s, not {env.sender!r}'s"
            )
        try:
            key.verify.verify(signed_bytes(env, at, body), base64.b64decode(signature))
        except (BadSignatureError, ValueError) as exc:
            raise PermanentError(Reason.bad_signature, f"{env.kind} from {env.sender!r}") from exc
        if window is not None:
            _check_fresh(at, window)
        private = self.boxes.get(sealed_to)
        if private is None or env.recipient != self.me:
            raise PermanentError(Reason.undecryptable, f"sealed to {sealed_to!r}")
        try:
            plain: bytes = SealedBox(private).decrypt(body)
        except CryptoError as exc:
            raise PermanentError(Reason.undecryptable, f"sealed to {sealed_to!r}") from exc
        return plain


def _check_fresh(at: str, window: tuple[datetime, datetime]) -> None:
    try:
        signed = datetime.fromisoformat(at)
    except ValueError as exc:
        raise PermanentError(Reason.stale, f"signed at {at[:40]!r}, not a time") from exc
    if signed.tzinfo is None:
        raise PermanentError(Reason.stale, f"signed at {at[:40]!r}, without a time zone")
    earliest, latest = window
    if not earliest <= signed <= latest:
        raise PermanentError(
            Reason.stale,
            f"signed at {signed.isoformat()}, outside {earliest:%Y-%m-%dT%H:%M}Z"
            f" to {latest:%Y-%m-%dT%H:%M}Z",
        )


def signed_bytes(env: Envelope, signed_at: str, body: bytes) -> bytes:
    """What a signature covers: the headers a receiver acts on and the body's digest."""
    fields = [
        _CONTEXT,
        env.message_id,
        env.kind,
        env.sender,
        env.recipient,
        env.correlation_id or "",
        signed_at,
        hashlib.sha256(body).digest(),
    ]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


# --- key files ------------------------------------------------------------------------------


def trust_path(keys_dir: Path) -> Path:
    return keys_dir / "trust.toml"


def fingerprint(text: str) -> str:
    """What two people read to each other over the telephone before one imports the
    other's public keys: SHA-256 of the exported file, in groups of four."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def export_keys(trust: Trust, code: str) -> str:
    """``code``'s public keys alone, as a trust file a partner imports."""
    return Trust({k: v for k, v in trust.keys.items() if v.code == code}).dump()


def import_keys(trust: Trust, text: str, source: str, expected: str) -> list[str]:
    """Adds ``source``'s public keys from a file ``source`` exported, once its
    fingerprint is the one ``source`` read out (``expected``). Refuses a file that holds
    a key of anyone else, or one that changes a key already held under its id (a key id
    names one key for good); a revocation in the file is taken. Returns the new ids."""
    if " ".join(expected.lower().split()) != fingerprint(text):
        raise ValueError("the fingerprint does not match: do not import this file")
    try:
        theirs = Trust.loads(text)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"not a trust file: {exc}") from exc
    others = sorted({k.code for k in theirs.keys.values() if k.code != source})
    if others:
        raise ValueError(f"the file holds keys of {', '.join(others)}, not only {source}'s")
    added = []
    for kid, key in theirs.keys.items():
        held = trust.keys.get(kid)
        if held is not None and (held.code, bytes(held.verify), bytes(held.box)) != (
            key.code,
            bytes(key.verify),
            bytes(key.box),
        ):
            raise ValueError(f"{kid} is already another key: refused")
        if held is None:
            added.append(kid)
        trust.keys[kid] = replace(key, revoked=key.revoked or (held.revoked if held else False))
    return added


def new_key(keys_dir: Path, code: str, now: datetime | None = None) -> PublicKeys:
    """A fresh key pair for ``code``: private halves owner-only under ``keys_dir/code``,
    public halves added to the trust file."""
    created = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    kid = f"{code}-{created}-{secrets.token_hex(3)}"
    signing, box = SigningKey.generate(), PrivateKey.generate()
    own = keys_dir / code
    own.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(own, 0o700)
    for name, secret in (("sign", bytes(signing)), ("box", bytes(box))):
        path = own / f"{kid}.{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex())
    public = PublicKeys(kid, code, signing.verify_key, box.public_key, created)
    trust = Trust.load(trust_path(keys_dir))
    trust.keys[kid] = public
    trust_path(keys_dir).write_text(trust.dump())
    return public


def ensure_keys(keys_dir: Path, codes: list[str]) -> None:
    """Development: a key pair for every participant that has none. A participant whose
    private keys are gone has its public ones revoked first: nobody may seal to a key that
    nothing can open."""
    for code in codes:
        trust = Trust.load(trust_path(keys_dir))
        if (keys_dir / code).is_dir() and trust.newest(code) is not None:
            continue
        orphans = [k for k in trust.keys.values() if k.code == code and not k.revoked]
        if orphans and not (keys_dir / code).is_dir():
            for k in orphans:
                trust.keys[k.kid] = replace(k, revoked=True)
            trust_path(keys_dir).write_text(trust.dump())
        new_key(keys_dir, code)


def load_ring(keys_dir: Path, code: str) -> KeyRing:
    """``code``'s private keys (newest signs) and the trust file."""
    trust = Trust.load(trust_path(keys_dir))
    own = keys_dir / code
    kids = sorted(
        (p.name.removesuffix(".sign") for p in own.glob("*.sign")),
        key=lambda kid: (trust.keys[kid].created, kid) if kid in trust.keys else ("", kid),
    )
    if not kids:
        raise SystemExit(
            f"no private keys for {code!r} in {own}: run `biox keys new -p {code}` "
            "(and share the public key in trust.toml with the partners)"
        )
    newest = kids[-1]
    boxes = {
        kid: PrivateKey(bytes.fromhex((own / f"{kid}.box").read_text().strip()))
        for kid in kids
        if (own / f"{kid}.box").exists()
    }
    signing = SigningKey(bytes.fromhex((own / f"{newest}.sign").read_text().strip()))
    ring = KeyRing(code, newest, signing, boxes, trust, source=trust_path(keys_dir))
    ring.refresh(every_s=0)  # remembers the file's time, so the next change is seen
    return ring


def memory_rings(codes: list[str]) -> dict[str, KeyRing]:
    """Key rings for the in-memory exchange and tests: one fresh key per participant."""
    trust = Trust()
    secrets_of: dict[str, tuple[str, SigningKey, PrivateKey]] = {}
    for code in codes:
        kid = f"{code}-memory"
        signing, box = SigningKey.generate(), PrivateKey.generate()
        trust.keys[kid] = PublicKeys(kid, code, signing.verify_key, box.public_key, "0")
        secrets_of[code] = (kid, signing, box)
    return {
        code: KeyRing(code, kid, signing, {kid: box}, trust)
        for code, (kid, signing, box) in secrets_of.items()
    }
