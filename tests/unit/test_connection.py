"""``BIOX_AMQP_URL``: one broker or the nodes of one cluster (docs/operations.md,
"A participant on several broker nodes")."""

from __future__ import annotations

import pytest

from biox.broker.connection import nodes, parameters, redact, user_of
from biox.dev.pki import DevPKI
from biox.settings import Settings
from biox.trust.identity import Role, broker_user
from biox.trust.tls import ClientTLS

CLUSTER = (
    "amqps://n1.us.example:5671/%2F, amqps://n2.us.example:5671/%2F,amqps://n3.us.example:5671/%2F,"
)


@pytest.fixture(scope="module")
def pki_client(tmp_path_factory: pytest.TempPathFactory) -> ClientTLS:
    pki = DevPKI(tmp_path_factory.mktemp("pki")).ensure(["us"], {"us": []}, {"us": []})
    return pki.client(broker_user("us", Role.workers))


def test_a_list_is_the_nodes_of_one_cluster_in_their_order():
    assert nodes(CLUSTER) == [
        "amqps://n1.us.example:5671/%2F",
        "amqps://n2.us.example:5671/%2F",
        "amqps://n3.us.example:5671/%2F",
    ]
    assert nodes("amqp://guest:guest@127.0.0.1:5672/%2F") == [
        "amqp://guest:guest@127.0.0.1:5672/%2F"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "amqps://n1:5671/%2F,amqp://guest:guest@n2:5672/%2F",  # one node without TLS
        "amqp://a:x@n1:5672/%2F,amqp://b:x@n2:5672/%2F",  # two users
        " , ",
    ],
)
def test_a_list_that_mixes_schemes_or_users_or_names_nothing_is_refused(url):
    with pytest.raises(ValueError, match=r"one scheme and one user|no broker URL"):
        nodes(url)


def test_every_node_gets_the_tls_and_certificate_login_and_is_checked_under_its_own_name(
    pki_client: ClientTLS,
):
    params = parameters(CLUSTER, pki_client)
    assert [p.host for p in params] == ["n1.us.example", "n2.us.example", "n3.us.example"]
    assert [p.ssl_options.server_hostname for p in params] == [p.host for p in params]
    assert {type(p.credentials).__name__ for p in params} == {"ExternalCredentials"}
    assert user_of(CLUSTER, pki_client) == pki_client.user
    with pytest.raises(ValueError, match="is TLS: set BIOX_TLS_CA"):
        parameters(CLUSTER)


def test_passwords_are_redacted_on_every_node_and_the_user_is_the_one_they_share():
    url = "amqp://ops:s3cret@127.0.0.1:5672/%2F,amqp://ops:s3cret@localhost:5673/%2F"
    assert "s3cret" not in redact(url) and redact(url).count("ops:***@") == 2
    garbled = redact("not a url, ,amqp://u:pw@h:1/x")  # never raises: it names an error
    assert garbled.endswith(",amqp://u:***@h:1/x") and "pw" not in garbled
    assert user_of(url) == "ops"


def test_the_development_flag_is_refused_if_any_node_is_not_this_machine():
    local = "amqp://guest:guest@127.0.0.1:5672/%2F,amqp://guest:guest@localhost:5673/%2F"
    assert Settings(amqp_url=local, dev_shared_broker=True).amqp_url == local
    with pytest.raises(ValueError, match="honoured only for a development broker"):
        Settings(amqp_url=f"{local},amqp://guest:guest@10.0.0.5:5672/%2F", dev_shared_broker=True)
