"""A CA's certificate revocation list, written where a broker reads it: ``crl.pem`` and a
copy in a hashed directory, named as OpenSSL's ``c_rehash`` would (``<hash>.r0``), which
Erlang's ``ssl_crl_hash_dir`` looks up by the issuer's name on each new connection, for
AMQP clients and for the nodes of a cluster alike (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def publish(
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    serials: Iterable[int],
    crl_path: Path,
    hashed: Path,
    valid_days: int,
) -> None:
    """A CRL of ``serials`` signed by ``ca``, at ``crl_path`` and under ``hashed``."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=valid_days))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    crl_path.write_bytes(crl)
    hashed.mkdir(exist_ok=True)
    (hashed / f"{subject_hash(ca.subject)}.r0").write_bytes(crl)


def subject_hash(name: x509.Name) -> str:
    """OpenSSL's ``X509_NAME_hash`` of a name (``openssl x509 -hash``), which names a CRL
    in the hashed directory the broker reads: SHA-1 of the name's canonical encoding
    (each value a lower-cased UTF8String, spaces folded, no outer SEQUENCE), first four
    bytes, little-endian."""
    canon = b""
    for rdn in name.rdns:
        items = b""
        for attr in rdn:
            value = " ".join(str(attr.value).split()).lower().encode()
            oid = _der(0x06, _oid(attr.oid.dotted_string))
            items += _der(0x30, oid + _der(0x0C, value))
        canon += _der(0x31, items)
    digest = hashlib.sha1(canon).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    out = bytes([40 * first + second])
    for part in rest:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(reversed(chunk))
    return out
