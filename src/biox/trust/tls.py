"""What a TLS client of a broker presents (docs/security.md, "Brokers, TLS and
identities"): kept apart from the connection code so that settings, and every handler that
reads them, name a client's certificate without loading pika.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ClientTLS:
    """What one TLS client presents: its certificate and key, and the CA it trusts."""

    ca: Path
    cert: Path
    key: Path

    @property
    def user(self) -> str:
        """The broker user this certificate logs in as: its common name."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return value if isinstance(value, str) else value.decode()
