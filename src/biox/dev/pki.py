"""A development PKI the way three governments would run theirs: a CA per participant
(docs/security.md, "Brokers, TLS and identities").

Each participant's broker trusts its own CA alone for client certificates, so no other
government's CA can mint one of its users. A partner's link certificate (the identity
its shovel logs in with on our broker) is issued by *our* CA from the partner's
certificate request: the partner keeps its key, we decide what the certificate may be
(``<partner>.link``, client use, a short life). Each shovel verifies the partner's broker
against that partner's CA alone, exchanged out of band and pinned. Revocation is a CRL
per CA that the broker checks on every connection (``crl.pem``, and the hashed copy
under ``crls/`` that Erlang's ``ssl_crl_hash_dir`` reads; ``biox.dev.revocation``); the
nodes of a cluster check each other's against the nodes CA's the same way.

A deployment uses its agency's PKI instead; what biox needs from it is the same, and
``biox broker pki request|sign|revoke`` are the steps between two participants.

Layout under ``<dir>/<code>/``::

    ca.pem, ca.key             the participant's CA (the key is owner-only)
    crl.pem, crls/<hash>.r0    what it has revoked
    broker.pem|.key            its broker's server certificate
    clients/<user>.pem|.key    its own users: <code>.workers, .encounters.<system>, and
                               .operators.<person> for each of its staff
    links/<partner>.key|.csr   its link identity on <partner>'s broker: key and request
    links/<partner>.pem        ... and the certificate <partner>'s CA issued for it
    partners/<partner>.pem     <partner>'s CA certificate, pinned
    nodes-ca.pem, nodes-ca.key the CA of its broker's cluster nodes, which issues nothing else
    nodes-crl.pem, nodes-crls/ what that CA has revoked (a node's stolen key, say)
    nodes/<i>.pem|.key         node ``i``'s certificate, one per node as one per host
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from biox.dev import revocation
from biox.trust.identity import Role, broker_user, encounter_user, parse_user
from biox.trust.staff import operator_user
from biox.trust.tls import ClientTLS

#: a participant's own users' certificates; a link certificate lives shorter, so that a
#: partner's access lapses by itself unless the host renews it
VALID_DAYS = 825
LINK_VALID_DAYS = 90


class PKIError(ValueError):
    """A request or a revocation that does not add up, said in one line."""


class DevPKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    # --- where things are ------------------------------------------------------------------

    def home(self, code: str) -> Path:
        return self.dir / code

    def ca(self, code: str) -> Path:
        return self.home(code) / "ca.pem"

    def crl(self, code: str) -> Path:
        return self.home(code) / "crl.pem"

    def crl_dir(self, code: str) -> Path:
        return self.home(code) / "crls"  # the nodes CA's: node_crl_dir

    def broker(self, code: str) -> tuple[Path, Path]:
        return self.home(code) / "broker.pem", self.home(code) / "broker.key"

    def node(self, code: str, index: int = 0) -> ClientTLS:
        """Node ``index`` of ``code``'s broker cluster, to its peers: server and client at
        once, from ``code``'s nodes CA, which issues nothing else (``biox.dev.cluster``),
        so that no client certificate of ``code``'s opens the cluster's own traffic. One
        per node, as each host has its own key: one stolen is revoked alone."""
        base = self.home(code)
        return ClientTLS(
            base / "nodes-ca.pem", base / "nodes" / f"{index}.pem", base / "nodes" / f"{index}.key"
        )

    def node_crl_dir(self, code: str) -> Path:
        return self.home(code) / "nodes-crls"

    def nodes(self, code: str, count: int) -> list[ClientTLS]:
        """The first ``count`` nodes' certificates, issued where missing."""
        self.authority(code)
        found = [self.node(code, i) for i in range(count)]
        for i, node in enumerate(found):
            if not node.cert.exists():
                cn = f"{code}-node-{i}"
                self._issue(code, cn, node.cert, node.key, server=True, peer=True)
        return found

    def client(self, user: str) -> ClientTLS:
        """One of a participant's own users, verifying its own broker against its own CA."""
        code = _owner(user)
        base = self.home(code) / "clients"
        return ClientTLS(self.ca(code), base / f"{user}.pem", base / f"{user}.key")

    def link(self, code: str, partner: str) -> ClientTLS:
        """``code``'s link identity on ``partner``'s broker: ``partner``'s CA, pinned."""
        base = self.home(code) / "links"
        return ClientTLS(
            self.home(code) / "partners" / f"{partner}.pem",
            base / f"{partner}.pem",
            base / f"{partner}.key",
        )

    # --- the development layout: every side at once ----------------------------------------

    def ensure(
        self,
        codes: list[str],
        systems: dict[str, list[str]] | None = None,
        people: dict[str, list[str]] | None = None,
    ) -> DevPKI:
        """Each participant's CA, broker and own users (its workers, each encounter system
        of ``systems``, each person of ``people``: a certificate per person); each pair's
        link certificates, requested by one side and signed by the other. Existing files
        are kept."""
        systems, people = systems or {}, people or {}
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for code in codes:
            self.authority(code)
            cert, key = self.broker(code)
            if not cert.exists():
                self._issue(code, f"{code}-broker", cert, key, server=True)
            users = [broker_user(code, Role.workers)]
            users += [encounter_user(code, s) for s in systems.get(code, [])]
            users += [operator_user(code, p) for p in people.get(code, [])]
            for user in users:
                creds = self.client(user)
                if not creds.cert.exists():
                    self._issue(code, user, creds.cert, creds.key, server=False)
        for code in codes:
            for partner in codes:
                if partner == code or self.link(code, partner).cert.exists():
                    continue
                pinned = self.home(code) / "partners" / f"{partner}.pem"
                pinned.parent.mkdir(parents=True, exist_ok=True)
                pinned.write_bytes(self.ca(partner).read_bytes())  # out of band, in life
                csr = self.request(code, partner)
                self.link(code, partner).cert.write_bytes(self.sign(partner, csr))
        return self

    # --- the steps between two participants --------------------------------------------------

    def authority(self, code: str) -> Path:
        """``code``'s CA and its nodes CA (made once), each with an empty CRL, so that the
        broker and its nodes can check from the start."""
        home = self.home(code)
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        for ca, name in ((self.ca(code), "CA"), (self.node(code).ca, "nodes CA")):
            if not ca.exists():
                self._root(ca, f"biox {code} {name}")
            if not (home / f"{_prefix(ca)}crl.pem").exists():  # a layout from before the CRL
                self._publish_crl(code, ca, self._revoked(code, ca))
        return self.ca(code)

    @staticmethod
    def _root(path: Path, name: str) -> None:
        """A self-signed CA at ``path``, its key beside it (``.key``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key(), VALID_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_key(path.with_suffix(".key"), key)
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def request(self, code: str, partner: str) -> bytes:
        """``code``'s certificate request for its link user on ``partner``'s broker; the
        key stays with ``code``."""
        creds = self.link(code, partner)
        creds.key.parent.mkdir(parents=True, exist_ok=True)
        if creds.key.exists():
            key = serialization.load_pem_private_key(creds.key.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            _write_key(creds.key, key)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, broker_user(code, Role.link))])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        pem = csr.public_bytes(serialization.Encoding.PEM)
        (creds.key.parent / f"{partner}.csr").write_bytes(pem)
        return pem

    def sign(self, host: str, csr_pem: bytes) -> bytes:
        """``host``'s CA issues a partner's link certificate from its request. Only a
        link user of another participant, for client use, for ``LINK_VALID_DAYS``: a
        request for any other name (``us.operators`` asked of us's CA by sv) is refused."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PKIError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise PKIError("the request's signature does not verify")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if len(names) == 1 else ""
        who = parse_user(cn)
        if who is None or who[1] is not Role.link or who[0] == host:
            raise PKIError(f"{cn!r}: {host}'s CA signs only partners' link users (<code>.link)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PKIError("the request's key is not an EC key")
        return self._certificate(host, cn, public, server=False, days=LINK_VALID_DAYS)

    def revoke(self, code: str, cert_pem: bytes) -> int:
        """Adds a certificate ``code``'s CA or nodes CA issued to that CA's CRL; returns its
        serial. The broker reads the CRL on each new connection, a client's or another
        node's: a revoked certificate no longer gets in, whatever its expiry (open
        connections are closed by the operator)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        authority = self._issuer(code, cert)
        listed = self._revoked(code, authority)
        if cert.serial_number not in listed:
            listed.append(cert.serial_number)
        self._publish_crl(code, authority, listed)
        return cert.serial_number

    def crl_dir_of(self, code: str, cert_pem: bytes) -> Path:
        """Where the CRL that would list this certificate lies: ``crls/`` for the broker's
        clients, ``nodes-crls/`` for its cluster's nodes."""
        authority = self._issuer(code, x509.load_pem_x509_certificate(cert_pem))
        return self.home(code) / f"{_prefix(authority)}crls"

    def _issuer(self, code: str, cert: x509.Certificate) -> Path:
        for authority in (self.ca(code), self.node(code).ca):
            ca = x509.load_pem_x509_certificate(authority.read_bytes())
            if cert.issuer == ca.subject:
                return authority
        raise PKIError(f"not issued by {code}'s CA ({cert.issuer.rfc4514_string()})")

    def mint(self, code: str, cn: str, trusting: str) -> ClientTLS:
        """What whoever runs ``code``'s CA can do with it: issue a client certificate for
        any name. The tests and the demo use it to show that ``trusting``'s broker (whose
        CA the certificate verifies the server against) refuses such a certificate."""
        base = self.dir / "minted" / f"by-{code}"
        creds = ClientTLS(self.ca(trusting), base / f"{cn}.pem", base / f"{cn}.key")
        self._issue(code, cn, creds.cert, creds.key, server=False)
        return creds

    # --- inside ------------------------------------------------------------------------------

    def _revoked(self, code: str, authority: Path) -> list[int]:
        path = self.home(code) / f"{_prefix(authority)}revoked.json"
        return [int(s) for s in json.loads(path.read_text())] if path.exists() else []

    def _publish_crl(self, code: str, authority: Path, serials: list[int]) -> None:
        """``crl.pem``, ``crls/``, ``revoked.json`` for the CA; ``nodes-`` before each for
        the nodes CA."""
        prefix, home = _prefix(authority), self.home(code)
        (home / f"{prefix}revoked.json").write_text(json.dumps([str(s) for s in serials]))
        ca = x509.load_pem_x509_certificate(authority.read_bytes())
        key = self._ca_key(code, authority)
        crl, hashed = home / f"{prefix}crl.pem", home / f"{prefix}crls"
        revocation.publish(ca, key, serials, crl, hashed, VALID_DAYS)

    def _ca_key(self, code: str, authority: Path | None = None) -> ec.EllipticCurvePrivateKey:
        path = (authority or self.ca(code)).with_suffix(".key")
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _issue(
        self, code: str, cn: str, cert_path: Path, key_path: Path, server: bool, peer: bool = False
    ) -> None:
        """``peer``: a server that is also its peers' client (a cluster node), issued by
        the nodes CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = self._certificate(code, cn, key.public_key(), server, VALID_DAYS, peer)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write_key(key_path, key)
        cert_path.write_bytes(pem)

    def _certificate(
        self,
        code: str,
        cn: str,
        public: ec.EllipticCurvePublicKey,
        server: bool,
        days: int,
        peer: bool = False,
    ) -> bytes:
        authority = self.node(code).ca if peer else self.ca(code)
        ca = x509.load_pem_x509_certificate(authority.read_bytes())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
        usage += [ExtendedKeyUsageOID.CLIENT_AUTH] if peer else []
        builder = (
            _builder(subject, ca.subject, public, days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("broker"),  # the compose file's service name
                        x509.DNSName(f"{code}-broker"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key(code, authority), hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)


def _prefix(authority: Path) -> str:
    """``""`` for a participant's CA (``ca.pem``), ``"nodes-"`` for its nodes CA."""
    return authority.name.removesuffix("ca.pem")


def _owner(user: str) -> str:
    return user.partition(".")[0]


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
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
