"""How every biox process connects to its broker (docs/security.md, "Brokers, TLS and
identities").

``amqps://`` URLs log in by client certificate (EXTERNAL): the broker takes the user from
the certificate's common name, so no password exists to leak, and the ``user_id`` biox
stamps on what it publishes is that name. Plain ``amqp://`` URLs with a user and password
are for the development broker only (``BIOX_DEV_SHARED_BROKER``).
"""

from __future__ import annotations

import ssl
from urllib.parse import unquote, urlparse

import pika
from pika.credentials import ExternalCredentials

from biox.trust.tls import ClientTLS


def nodes(url: str) -> list[str]:
    """The brokers ``url`` names: one, or the nodes of one cluster, comma-separated
    (``BIOX_AMQP_URL=amqps://node1:5671/%2F,amqps://node2:5671/%2F``). A client connects to
    the first that answers and, when its connection is lost, to the next (a node lost
    is a node skipped). The nodes of one broker speak one scheme and log in as one user:
    a list that mixes them is refused, not half-honoured."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ValueError("no broker URL given (BIOX_AMQP_URL)")
    schemes = {urlparse(u).scheme for u in urls}
    users = {urlparse(u).username for u in urls}
    if len(schemes) > 1 or len(users) > 1:
        raise ValueError(
            f"the nodes of one broker use one scheme and one user, not {redact(url)}: "
            "a list is the nodes of one cluster (docs/operations.md)"
        )
    return urls


def parameters(url: str, tls: ClientTLS | None = None) -> list[pika.ConnectionParameters]:
    """One set of connection parameters per node of ``url`` (``nodes``), in its order:
    what ``pika.BlockingConnection`` tries in turn, and the ``Link`` cycles through."""
    return [_node(u, tls) for u in nodes(url)]


def _node(url: str, tls: ClientTLS | None) -> pika.ConnectionParameters:
    params = pika.URLParameters(url)
    if urlparse(url).scheme != "amqps":
        return params
    if tls is None:
        raise ValueError(
            f"{redact(url)} is TLS: set BIOX_TLS_CA, BIOX_TLS_CERT and BIOX_TLS_KEY "
            "(docs/security.md)"
        )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    host = params.host
    params.ssl_options = pika.SSLOptions(
        context, server_hostname="localhost" if host == "127.0.0.1" else host
    )
    params.credentials = ExternalCredentials()
    return params


def user_of(url: str, tls: ClientTLS | None = None) -> str:
    """The broker user a connection to ``url`` authenticates as."""
    first = nodes(url)[0]  # every node logs in as the same user (``nodes``)
    if urlparse(first).scheme == "amqps" and tls is not None:
        return tls.user
    parsed = urlparse(first)
    return unquote(parsed.username) if parsed.username else "guest"


def redact(url: str) -> str:
    """``url`` without its password, each node of a list (never raises: it names what an
    error is about)."""
    return ",".join(_redact_one(u.strip()) for u in url.split(",") if u.strip())


def _redact_one(url: str) -> str:
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)
    user = f"{unquote(parsed.username)}:***@" if parsed.username else ""
    return f"{parsed.scheme}://{user}{host}{parsed.path}"
