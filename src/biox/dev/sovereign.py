"""Every participant on its own local RabbitMQ, linked by shovels over TLS: the layout of
a real deployment, on one machine (docs/security.md, "One broker per participant").

Each node listens on TLS only, knows only certificate logins, and boots with the
definitions ``biox.broker.definitions`` generated for its participant. A participant's
outbox feeds one link queue per partner; the node's shovel moves each to the partner's
inbox on the partner's node, logging in there as ``<code>.link``.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from biox.broker.definitions import definitions, shovel_uri
from biox.dev.broker import LocalBroker, SovereignConfig, free_port
from biox.dev.pki import DevPKI
from biox.settings import Settings
from biox.trust.identity import Role, broker_user
from biox.trust.tls import ClientTLS


@dataclass
class SovereignBrokers:
    codes: list[str]
    settings: Settings
    directory: Path | None = None
    brokers: dict[str, LocalBroker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = self.directory or Path(tempfile.mkdtemp(prefix="biox-sovereign-"))
        self.pki = DevPKI(self.directory / "pki")

    def start(self) -> SovereignBrokers:
        assert self.directory is not None
        self.pki.ensure(self.codes)
        ports = {code: free_port() for code in self.codes}
        for code in self.codes:
            # the node runs as the rabbitmq user, which must reach its directory: a fresh
            # one under the system's temporary directory, as for the development broker
            node_dir = Path(tempfile.mkdtemp(prefix=f"biox-rabbitmq-{code}-"))
            link = self.pki.client(broker_user(code, Role.link))
            tls = node_dir / "tls"  # what the node's own processes (its shovels) read
            tls.mkdir()
            for name, source in (("link.pem", link.cert), ("link.key", link.key)):
                shutil.copyfile(source, tls / name)
            uris = {
                partner: shovel_uri(
                    "127.0.0.1",
                    ports[partner],
                    str(tls / "ca.pem"),
                    str(tls / "link.pem"),
                    str(tls / "link.key"),
                )
                for partner in self.codes
                if partner != code
            }
            cert, key = self.pki.broker(code)
            config = SovereignConfig(
                server=ClientTLS(self.pki.ca, cert, key),
                probe=self.credentials(code, Role.operators),
                definitions=definitions(
                    code,
                    self.codes,
                    self.settings.retry_tiers,
                    self.settings.delivery_limit,
                    uris,
                    dead_letter_days=self.settings.dead_letter_retention_days,
                ),
                max_message_bytes=self.settings.max_message_bytes,
            )
            self.brokers[code] = LocalBroker(node_dir, sovereign=config, amqp_port=ports[code])
        with ThreadPoolExecutor(len(self.codes)) as pool:
            list(pool.map(lambda b: b.start(), self.brokers.values()))
        return self

    def url(self, code: str) -> str:
        return self.brokers[code].url

    def credentials(self, code: str, role: Role) -> ClientTLS:
        return self.pki.client(broker_user(code, role))

    def env(self, code: str, role: Role) -> dict[str, str]:
        """The ``BIOX_*`` variables of a process of ``code`` in ``role`` on its own broker."""
        tls = self.credentials(code, role)
        return {
            "BIOX_AMQP_URL": self.url(code),
            "BIOX_TLS_CA": str(tls.ca),
            "BIOX_TLS_CERT": str(tls.cert),
            "BIOX_TLS_KEY": str(tls.key),
        }

    def stop(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.brokers))) as pool:
            list(pool.map(lambda b: b.stop(), self.brokers.values()))
