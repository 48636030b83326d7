"""Every participant on its own local RabbitMQ, linked by shovels over TLS: the layout of
a real deployment, on one machine (docs/security.md, "One broker per participant").

Each node listens on TLS only, knows only certificate logins from its own participant's
CA (``biox.dev.pki``, checked against that CA's CRL), and boots with the definitions
``biox.broker.definitions`` generated for its participant. A participant's outbox feeds
one link queue per partner; the node's shovel moves each to the partner's ingress on
the partner's node, verifying that node against the partner's CA alone and logging in
as ``<code>.link`` with the certificate the partner's CA issued it. With ``relays``, each
shovel dials its partner through a ``LinkRelay`` (``biox.dev.partition``) before each of
the partner's nodes, so that a partner link can be cut like a network (``make chaos``).
With ``nodes``, a participant's broker is a cluster (``biox.dev.cluster``: TLS between
its nodes, its quorum queues on every node), and its partners' shovels name every node.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from biox.broker.definitions import definitions, shovel_uri
from biox.dev.broker import LocalBroker, SovereignConfig
from biox.dev.cluster import LocalCluster
from biox.dev.host import free_port
from biox.dev.partition import LinkRelay
from biox.dev.pki import DevPKI
from biox.registry import Registry
from biox.routes import routes_for
from biox.settings import Settings
from biox.trust.identity import Role, broker_user, encounter_user
from biox.trust.staff import Duty, Staff, operator_user
from biox.trust.tls import ClientTLS


@dataclass
class SovereignBrokers:
    codes: list[str]
    settings: Settings
    directory: Path | None = None
    brokers: dict[str, LocalBroker | LocalCluster] = field(default_factory=dict)
    relays: bool = False
    #: how many nodes each participant's broker has (default one)
    nodes: dict[str, int] = field(default_factory=dict)
    #: (from, to): the relays the shovel of ``from``'s broker dials to reach ``to``'s, one
    #: before each of ``to``'s nodes
    links: dict[tuple[str, str], list[LinkRelay]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = self.directory or Path(tempfile.mkdtemp(prefix="biox-sovereign-"))
        self.pki = DevPKI(self.directory / "pki")
        self.registry = Registry.load(self.settings.registry)
        self.staff = Staff.load(self.settings.staff)

    def systems(self, code: str) -> list[str]:
        """The encounter systems ``code`` registered: one broker user each."""
        p = self.registry.get(code)
        return list(p.encounter_systems) if p else []

    def start(self) -> SovereignBrokers:
        assert self.directory is not None
        self.pki.ensure(
            self.codes,
            {c: self.systems(c) for c in self.codes},
            {c: sorted(self.staff.of(c)) for c in self.codes},
        )
        ports = {code: [free_port() for _ in range(self.nodes.get(code, 1))] for code in self.codes}
        if self.relays:
            for code in self.codes:
                for partner in self.registry.linked(code):
                    if partner in self.codes:
                        self.links[(code, partner)] = [
                            LinkRelay(port, name=f"{code}->{partner}.{i}")
                            for i, port in enumerate(ports[partner])
                        ]
        for code in self.codes:
            # the node runs as the rabbitmq user, which must reach its directory: a fresh
            # one under the system's temporary directory, as for the development broker
            node_dir = Path(tempfile.mkdtemp(prefix=f"biox-rabbitmq-{code}-"))
            tls = node_dir / "tls"  # what the node's own processes (its shovels) read
            files: dict[str, Path] = {}
            uris: dict[str, str | list[str]] = {}
            for partner in self.codes:
                if partner == code or partner not in self.registry.linked(code):
                    continue  # two participants without an agreement have no link
                link = self.pki.link(code, partner)
                for suffix, source in (("ca", link.ca), ("link", link.cert), ("key", link.key)):
                    files[f"{partner}-{suffix}.pem"] = source
                relays = self.links.get((code, partner))
                nodes = [
                    shovel_uri(
                        "127.0.0.1",
                        port,
                        str(tls / f"{partner}-ca.pem"),  # that partner's CA alone
                        str(tls / f"{partner}-link.pem"),
                        str(tls / f"{partner}-key.pem"),
                    )
                    for port in ([r.port for r in relays] if relays else ports[partner])
                ]
                uris[partner] = nodes[0] if len(nodes) == 1 else nodes
            cert, key = self.pki.broker(code)
            config = SovereignConfig(
                server=ClientTLS(self.pki.ca(code), cert, key),
                crls=self.pki.crl_dir(code),
                shovel_files=files,
                probe=self.credentials(code, Role.workers),
                definitions=definitions(
                    code,
                    self.codes,
                    self.settings.retry_tiers,
                    self.settings.delivery_limit,
                    uris,
                    dead_letter_days=self.settings.dead_letter_retention_days,
                    encounter_systems=self.systems(code),
                    linked=[c for c in self.registry.linked(code) if c in self.codes],
                    staff=self.staff.of(code),
                    routes=routes_for(self.settings.shards),
                ),
                max_message_bytes=self.settings.max_message_bytes,
            )
            if len(ports[code]) == 1:
                self.brokers[code] = LocalBroker(
                    node_dir, sovereign=config, amqp_port=ports[code][0]
                )
            else:
                self.brokers[code] = LocalCluster(
                    len(ports[code]),
                    node_dir,
                    config,
                    self.pki.nodes(code, len(ports[code])),
                    ports[code],
                    self.pki.node_crl_dir(code),
                )
        try:
            with ThreadPoolExecutor(len(self.codes)) as pool:
                list(pool.map(lambda b: b.start(), self.brokers.values()))
        except BaseException:
            self.stop()  # the brokers that did start: none left running after a failure
            raise
        return self

    def revoke(self, code: str, cert: Path) -> None:
        """``code``'s CA (or its nodes CA) revokes a certificate it issued; its broker (or
        its cluster's nodes) refuses it from the next connection on."""
        self.pki.revoke(code, cert.read_bytes())
        broker = self.brokers[code]
        broker.refresh_crls(self.pki.crl_dir(code))
        if isinstance(broker, LocalCluster):
            broker.refresh_node_crls(self.pki.node_crl_dir(code))

    def cut(self, a: str, b: str) -> None:
        """The network between ``a``'s and ``b``'s nodes partitioned, both ways (needs
        ``relays``)."""
        for pair in ((a, b), (b, a)):
            for relay in self.links[pair]:
                relay.cut()

    def mend(self, a: str, b: str) -> None:
        for pair in ((a, b), (b, a)):
            for relay in self.links[pair]:
                relay.mend()

    def is_cut(self, a: str, b: str) -> bool:
        return all(relay.is_cut for relay in self.links[(a, b)])

    def url(self, code: str) -> str:
        return self.brokers[code].url

    def credentials(
        self, code: str, role: Role, system: str = "sim", person: str | None = None
    ) -> ClientTLS:
        """A certificate of ``code``'s own (an encounter system's: ``system``'s; one of its
        staff's: ``person``'s)."""
        if role is Role.encounters:
            return self.pki.client(encounter_user(code, system))
        if role is Role.operators:
            if person not in self.staff.of(code):
                known = ", ".join(sorted(self.staff.of(code))) or "nobody"
                raise ValueError(f"{person!r} is not on {code}'s staff ({known})")
            return self.pki.client(operator_user(code, person))
        if role is Role.link:
            raise ValueError("a link identity is per partner: SovereignBrokers.pki.link")
        return self.pki.client(broker_user(code, role))

    def officer(self, code: str) -> ClientTLS:
        """The certificate of ``code``'s first privacy officer (notices are theirs)."""
        person = next(
            (p for p, d in sorted(self.staff.of(code).items()) if Duty.privacy_officer in d), None
        )
        return self.credentials(code, Role.operators, person=person)

    def env(
        self, code: str, role: Role, system: str = "sim", person: str | None = None
    ) -> dict[str, str]:
        """The ``BIOX_*`` variables of a process of ``code`` in ``role`` on its own broker."""
        tls = self.credentials(code, role, system, person)
        return {
            "BIOX_AMQP_URL": self.url(code),
            "BIOX_TLS_CA": str(tls.ca),
            "BIOX_TLS_CERT": str(tls.cert),
            "BIOX_TLS_KEY": str(tls.key),
        }

    def stop(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.brokers))) as pool:
            list(pool.map(lambda b: b.stop(), self.brokers.values()))
        for relays in self.links.values():
            for relay in relays:
                relay.close()
