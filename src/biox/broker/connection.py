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


def parameters(url: str, tls: ClientTLS | None = None) -> pika.ConnectionParameters:
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
    if urlparse(url).scheme == "amqps" and tls is not None:
        return tls.user
    parsed = urlparse(url)
    return unquote(parsed.username) if parsed.username else "guest"


def redact(url: str) -> str:
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)
    user = f"{unquote(parsed.username)}:***@" if parsed.username else ""
    return f"{parsed.scheme}://{user}{host}{parsed.path}"
