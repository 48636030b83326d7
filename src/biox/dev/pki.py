"""A development PKI: one CA, a server certificate per participant's broker, and a client
certificate per broker user (docs/security.md, "Brokers, TLS and identities").

A deployment uses its agency's PKI instead; what biox needs from it is the same: brokers
that present a certificate the clients trust, and client certificates whose common name
is the broker user (``<code>.<role>``, ``biox.trust.identity``), which RabbitMQ's
``rabbitmq_auth_mechanism_ssl`` turns into the authenticated user (EXTERNAL). Nobody
holds a password.

Layout under ``<dir>``::

    ca.pem                     the CA certificate everyone trusts
    ca.key                     the CA key (owner-only; never leaves the machine)
    brokers/<code>.pem|.key    each participant's broker
    clients/<user>.pem|.key    each broker user: us.workers, us.link, ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from biox.trust.identity import Role, broker_user
from biox.trust.tls import ClientTLS

VALID_DAYS = 825


class DevPKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def broker(self, code: str) -> tuple[Path, Path]:
        return self.dir / "brokers" / f"{code}.pem", self.dir / "brokers" / f"{code}.key"

    def client(self, user: str) -> ClientTLS:
        return ClientTLS(
            self.ca, self.dir / "clients" / f"{user}.pem", self.dir / "clients" / f"{user}.key"
        )

    def ensure(self, codes: list[str]) -> DevPKI:
        """CA, broker and client certificates for ``codes``; existing ones are kept."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.ca.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "biox development CA")])
            cert = (
                _builder(name, name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
            _write(self.dir / "ca.key", key)
            self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        for code in codes:
            cert_path, key_path = self.broker(code)
            if not cert_path.exists():
                self._issue(f"{code}-broker", cert_path, key_path, server=True)
            for role in Role:
                creds = self.client(broker_user(code, role))
                if not creds.cert.exists():
                    self._issue(broker_user(code, role), creds.cert, creds.key, server=False)
        return self

    def _issue(self, cn: str, cert_path: Path, key_path: Path, server: bool) -> None:
        ca_key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(subject, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )


def _write(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
