"""What a local cluster's nodes are told (``biox.dev.cluster``): whom to join, the shared
cookie, and TLS between them from the nodes CA alone. The cluster itself, formed, attacked
and losing nodes under load, is in tests/integration/test_sovereign.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from biox.dev.cluster import DIST_OPTIONS, NODE_CRLS, ClusterMember, LocalCluster
from biox.dev.pki import DevPKI


def test_a_blank_joiner_is_told_its_seed_and_the_first_node_nothing():
    joiner = ClusterMember(4369, "c" * 40, seeds=("biox1@localhost",))
    assert joiner.conf() == (
        "cluster_formation.peer_discovery_backend = classic_config\n"
        "cluster_formation.classic_config.nodes.1 = biox1@localhost\n"
    )
    assert ClusterMember(4369, "c" * 40).conf() == ""


def test_the_cookie_is_private_and_the_distribution_verifies_both_ends(tmp_path: Path):
    pki = DevPKI(tmp_path / "pki").ensure(["us"])
    node = tmp_path / "n0"
    node.mkdir()
    [mine] = pki.nodes("us", 1)
    member = ClusterMember(4369, "secret-cookie", tls=mine, crls=pki.node_crl_dir("us"))
    member.prepare(node)
    cookie = node / ".erlang.cookie"
    assert cookie.read_text() == "secret-cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400  # the broker refuses a readable one
    options = (node / DIST_OPTIONS).read_text()
    server, client = options.split("{client,")
    for side in (server, client):
        assert "{verify, verify_peer}" in side
        assert f'{{cacertfile, "{node / "tls" / "node-ca.pem"}"}}' in side
        # a revoked node certificate is refused whichever end presents it
        crls = node / NODE_CRLS
        cache = f'{{ssl_crl_hash_dir, {{internal, [{{dir, "{crls}"}}]}}}}'
        assert f"{{crl_check, peer}}, {{crl_cache, {cache}}}" in side
    assert sorted(p.name for p in (node / NODE_CRLS).iterdir()) == sorted(
        p.name for p in pki.node_crl_dir("us").iterdir()
    )
    assert "{fail_if_no_peer_cert, true}" in server  # no certificate, no connection
    assert (node / "tls" / "node-ca.pem").read_bytes() == pki.node("us").ca.read_bytes()
    assert member.erl_args(node) == (
        f" -proto_dist inet_tls -ssl_dist_optfile {node / DIST_OPTIONS} -kernel net_setuptime 30"
    )
    assert ClusterMember(4369, "x").erl_args(node) == ""  # plain development nodes


def test_a_cluster_names_every_node_in_its_url(tmp_path: Path):
    cluster = LocalCluster(3, tmp_path / "c", amqp_ports=[5001, 5002, 5003])
    assert cluster.names == ["biox5001@localhost", "biox5002@localhost", "biox5003@localhost"]
    assert [n.cluster.seeds for n in cluster.nodes if n.cluster] == [
        (),
        ("biox5001@localhost",),
        ("biox5001@localhost",),
    ]
    assert len({n.cluster.epmd_port for n in cluster.nodes if n.cluster}) == 1
    with pytest.raises(ValueError, match="at least one node"):
        LocalCluster(0, tmp_path / "d")
    with pytest.raises(ValueError, match="3 nodes need 3 ports, not 2"):
        LocalCluster(3, tmp_path / "e", amqp_ports=[1, 2])


def test_each_node_presents_a_certificate_of_its_own(tmp_path: Path):
    """One key per host: a node's stolen key is revoked without shutting out the others."""
    pki = DevPKI(tmp_path / "pki").ensure(["us"])
    with pytest.raises(ValueError, match="3 nodes need 3 certificates, not 2"):
        LocalCluster(3, tmp_path / "c", node_tls=pki.nodes("us", 2))
    certs = pki.nodes("us", 3)
    cluster = LocalCluster(3, tmp_path / "d", node_tls=certs, node_crls=pki.node_crl_dir("us"))
    assert [n.cluster.tls for n in cluster.nodes if n.cluster] == certs
    assert {n.cluster.crls for n in cluster.nodes if n.cluster} == {pki.node_crl_dir("us")}
