"""A CA per participant: what each CA signs, what it refuses, and what it revokes
(docs/security.md, "Brokers, TLS and identities"). The brokers' refusals are shown on
real TLS brokers in tests/integration/test_sovereign.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography import x509

from biox.dev.pki import DevPKI, PKIError
from biox.dev.revocation import subject_hash


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> DevPKI:
    people = {"us": ["ana", "oscar"]}
    return DevPKI(tmp_path_factory.mktemp("pki")).ensure(
        ["mx", "sv", "us"], {"us": ["poe"]}, people
    )


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_participant_has_its_own_ca_and_its_users_chain_to_it_alone(pki):
    cas = {c: cert(pki.ca(c)) for c in ("mx", "sv", "us")}
    assert len({ca.subject for ca in cas.values()}) == 3
    for user in ("us.workers", "us.operators.ana", "us.operators.oscar", "us.encounters.poe"):
        assert cert(pki.client(user).cert).issuer == cas["us"].subject, user
    assert not pki.client("us.operators").cert.exists()  # no shared login: one per person
    # us's link identity on mx's broker: us's key, mx's CA, mx's CA pinned by us
    link = pki.link("us", "mx")
    assert cert(link.cert).issuer == cas["mx"].subject
    assert cert(link.cert).subject.rfc4514_string() == "CN=us.link"
    assert link.ca.read_bytes() == pki.ca("mx").read_bytes()


@pytest.mark.parametrize("cn", ["us.operators", "us.workers", "mx.link", "sv.operators", "x"])
def test_a_ca_signs_only_partners_link_users(pki, cn):
    """sv asks mx's CA for anything but sv.link (or mx's own link): refused."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PKIError, match="signs only partners' link users"):
        pki.sign("mx", csr.public_bytes(Encoding.PEM))
    assert cert_ok(pki.sign("mx", pki.request("sv", "mx")))


def cert_ok(pem: bytes) -> bool:
    c = x509.load_pem_x509_certificate(pem)
    days = (c.not_valid_after_utc - c.not_valid_before_utc).days
    return c.subject.rfc4514_string() == "CN=sv.link" and days <= 91


def test_a_revocation_lists_the_serial_in_the_ca_s_crl_under_its_hashed_name(pki):
    minted = pki.mint("mx", "us.operators", trusting="us")  # what mx's CA could issue
    with pytest.raises(PKIError, match="not issued by us's CA"):
        pki.revoke("us", minted.cert.read_bytes())
    victim = pki.client("us.encounters.poe").cert
    serial = pki.revoke("us", victim.read_bytes())
    ca = cert(pki.ca("us"))
    crl = x509.load_pem_x509_crl(
        (pki.crl_dir("us") / f"{subject_hash(ca.subject)}.r0").read_bytes()
    )
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.is_signature_valid(ca.public_key())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to compare with")
def test_the_crl_file_name_is_openssls_subject_hash(pki):
    for code in ("mx", "us"):
        out = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca(code))],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == subject_hash(cert(pki.ca(code)).subject)


def test_each_node_has_its_own_certificate_from_the_nodes_ca_which_revokes_it_alone(pki):
    """The nodes CA issues the cluster's nodes and nothing else; revoking one node's
    certificate lists it in that CA's CRL, which the nodes read, not in the CA's that the
    AMQP listener reads."""
    first, second = pki.nodes("us", 2)
    nodes_ca = cert(pki.node("us").ca)
    assert nodes_ca.subject != cert(pki.ca("us")).subject
    for i, node in enumerate((first, second)):
        c = cert(node.cert)
        assert c.issuer == nodes_ca.subject
        assert c.subject.rfc4514_string() == f"CN=us-node-{i}"
    assert first.key.read_bytes() != second.key.read_bytes()
    assert pki.nodes("us", 2) == [first, second]  # issued once, kept
    before = pki.crl_dir("us") / f"{subject_hash(cert(pki.ca('us')).subject)}.r0"
    unchanged = before.read_bytes()
    serial = pki.revoke("us", second.cert.read_bytes())
    hashed = pki.node_crl_dir("us") / f"{subject_hash(nodes_ca.subject)}.r0"
    crl = x509.load_pem_x509_crl(hashed.read_bytes())
    assert crl.is_signature_valid(nodes_ca.public_key())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(cert(first.cert).serial_number) is None
    assert before.read_bytes() == unchanged


def test_the_cli_revokes_a_node_certificate_into_the_nodes_crl_and_says_where_it_goes(tmp_path):
    from typer.testing import CliRunner

    from biox.cli import app

    pki = DevPKI(tmp_path / "pki").ensure(["us", "mx"])
    [node] = pki.nodes("us", 1)
    run = CliRunner().invoke(
        app, ["broker", "pki", "revoke", "-p", "us", str(node.cert), "--dir", str(pki.dir)]
    )
    assert run.exit_code == 0, run.output
    assert f"copy {pki.node_crl_dir('us')} to each node's node-crls/" in " ".join(
        run.output.split()
    )
    crl = x509.load_pem_x509_crl((pki.home("us") / "nodes-crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert(node.cert).serial_number)
    [mx_node] = pki.nodes("mx", 1)  # another participant's nodes CA: not us's to revoke
    run = CliRunner().invoke(
        app, ["broker", "pki", "revoke", "-p", "us", str(mx_node.cert), "--dir", str(pki.dir)]
    )
    assert run.exit_code == 2 and "not issued by us's CA" in run.output
