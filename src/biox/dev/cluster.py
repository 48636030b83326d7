"""One participant's broker as a RabbitMQ cluster of local nodes: no single node to lose
(docs/operations.md, "A participant on several broker nodes"; issue 23, item 7).

Each node is a ``LocalBroker`` with its own ports, data and log, as a node on its own host
would be. They share what the members of one cluster share: the Erlang cookie, one epmd
(on one machine; on several, each host has its own), and TLS between the nodes, so that
cluster traffic (queue replication, the metadata, the CLI) is encrypted and each node is
checked against its participant's CA, as clients are.

The first node boots with the generated definitions; the others join it (peer discovery,
``classic_config``) and, once all run, every quorum queue is grown onto them
(``rabbitmq-queues grow``), since a queue declared on a one-node cluster has one member.
Queues declared later (an encounter system's reply queue) start on every node. A node
killed and started again rejoins by itself: it keeps its data and its membership.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from biox.dev.broker import SERVER, BrokerError, LocalBroker, SovereignConfig, erlang_tls
from biox.dev.host import chown_tree, free_port, kill_epmd, setpriv_args
from biox.trust.tls import ClientTLS

DIST_OPTIONS = "inter_node_tls.config"
NODE_CRLS = "node-crls"  # under the node's directory: what its nodes CA revoked


@dataclass(frozen=True)
class ClusterMember:
    """What a node shares with the rest of its cluster.

    ``seeds``: the nodes a blank node joins (none for the first); ``tls``: the node's
    own certificate (server and client: a node dials its peers) and the CA both ends of
    a cluster link must chain to. ``None`` only for a cluster of plain development nodes.
    ``crls``: that CA's revocation list, in a hashed directory, checked on every link in
    both directions, so that a node's stolen key is shut out by revoking its certificate.
    """

    epmd_port: int
    cookie: str
    seeds: tuple[str, ...] = ()
    tls: ClientTLS | None = None
    crls: Path | None = None

    def conf(self) -> str:
        """``rabbitmq.conf`` lines: whom to join when blank."""
        if not self.seeds:
            return ""
        lines = ["cluster_formation.peer_discovery_backend = classic_config"]
        nodes = enumerate(self.seeds, 1)
        lines += [f"cluster_formation.classic_config.nodes.{i} = {n}" for i, n in nodes]
        return "\n".join(lines) + "\n"

    def prepare(self, directory: Path) -> None:
        """The cookie (the broker refuses one others can read) and the options of TLS
        between the nodes, under the node's directory (its ``HOME``)."""
        cookie = directory / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        if self.tls is None:
            return
        common = erlang_tls(directory / "tls", self.tls, "node") + ", {secure_renegotiate, true}"
        if self.crls is not None:
            crls = directory / NODE_CRLS
            shutil.copytree(self.crls, crls, dirs_exist_ok=True)
            cache = f'{{ssl_crl_hash_dir, {{internal, [{{dir, "{crls}"}}]}}}}'
            common += f", {{crl_check, peer}}, {{crl_cache, {cache}}}"
        (directory / DIST_OPTIONS).write_text(
            f"[{{server, [{common}, {{fail_if_no_peer_cert, true}}]}},\n {{client, [{common}]}}].\n"
        )

    def erl_args(self, directory: Path) -> str:
        """The Erlang distribution over TLS, for the node and for its CLI tools alike."""
        if self.tls is None:
            return ""
        # net_setuptime: a link's TLS handshake on a loaded machine outlasts the default 7 s
        dist = f" -proto_dist inet_tls -ssl_dist_optfile {directory / DIST_OPTIONS}"
        return dist + " -kernel net_setuptime 30"


class LocalCluster:
    """``size`` local nodes of one broker. ``url``: every node's, comma-separated, as
    ``BIOX_AMQP_URL`` takes them (``broker.connection.nodes``)."""

    def __init__(
        self,
        size: int,
        directory: Path | None = None,
        sovereign: SovereignConfig | None = None,
        node_tls: list[ClientTLS] | None = None,
        amqp_ports: list[int] | None = None,
        node_crls: Path | None = None,
    ) -> None:
        """``directory``: each node's under it (``n0``, ``n1``...) and, in ``tls/``, what
        every node's shovels read, at one path whichever node runs them. ``node_tls``:
        each node's own certificate; ``node_crls``: their CA's revocation list."""
        if size < 1:
            raise ValueError(f"a cluster has at least one node, not {size}")
        ports = amqp_ports or [free_port() for _ in range(size)]
        if len(ports) != size:
            raise ValueError(f"{size} nodes need {size} ports, not {len(ports)}")
        if node_tls is not None and len(node_tls) != size:
            raise ValueError(f"{size} nodes need {size} certificates, not {len(node_tls)}")
        self.ports = ports
        # the nodes run as the rabbitmq user, which must reach their directories
        self.directory = directory or Path(tempfile.mkdtemp(prefix="biox-rabbitmq-"))
        self.sovereign = sovereign
        self.names = [f"biox{p}@localhost" for p in ports]  # LocalBroker's own naming
        member = ClusterMember(free_port(), secrets.token_hex(20), crls=node_crls)
        self.epmd_port, self.cookie = member.epmd_port, member.cookie
        self.nodes = [
            LocalBroker(
                self.directory / f"n{i}",
                sovereign=sovereign,
                amqp_port=port,
                cluster=replace(
                    member,
                    seeds=(self.names[0],) if i else (),
                    tls=node_tls[i] if node_tls else None,
                ),
            )
            for i, port in enumerate(ports)
        ]
        self._turn = 0  # the node ``restart`` takes next

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """The first node with the definitions, then the others joining it, then every
        quorum queue grown onto them."""
        shared = self.directory / "tls"
        shared.mkdir(parents=True, exist_ok=True)
        for name, source in (self.sovereign.shovel_files if self.sovereign else {}).items():
            shutil.copyfile(source, shared / name)
        if os.geteuid() == 0:
            chown_tree(self.directory, "rabbitmq")
        self.nodes[0].start(timeout)
        rest = self.nodes[1:]
        if rest:
            with ThreadPoolExecutor(len(rest)) as pool:
                list(pool.map(lambda n: n.start(timeout), rest))
            for name in self.names[1:]:
                self.nodes[0].cli("rabbitmq-queues", "grow", name, "all", timeout=timeout)
        self.wait_formed(timeout)
        return self

    def running(self) -> list[str]:
        """The nodes the cluster says run now (``cluster_status``, from a live node)."""
        said = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return sorted(said.get("running_nodes", []))

    def wait_formed(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = self.running()
            if seen == sorted(self.names):
                return
            time.sleep(0.5)
        raise BrokerError(f"the cluster did not form: running {seen}, expected {self.names}")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl`` against the first node that runs."""
        last: Exception | None = None
        for node in self.nodes:
            if node.running():
                try:
                    return node.ctl(*args, timeout=timeout)
                except BrokerError as exc:
                    last = exc
        raise BrokerError(f"no node of the cluster answers: {last}")

    def ctl_from_outside(
        self, tls: ClientTLS | None, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl`` against the first node from a host that holds the cluster's
        cookie and ``tls`` (``None``: the plain Erlang distribution): what the cluster lets
        in without a certificate from its nodes CA (``tests/integration/test_sovereign.py``)."""
        home = Path(tempfile.mkdtemp(prefix="biox-outsider-"))
        try:
            member = ClusterMember(self.epmd_port, self.cookie, tls=tls)
            member.prepare(home)
            cmd = [str(SERVER.with_name("rabbitmqctl")), "-n", self.names[0], "-q", *args]
            if os.geteuid() == 0:
                chown_tree(home, "rabbitmq")
                cmd = ["setpriv", *setpriv_args("rabbitmq"), *cmd]
            erl = "-kernel inet_dist_use_interface {127,0,0,1}" + member.erl_args(home)
            env = {
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "HOME": str(home),
                "LANG": "C.UTF-8",
                "ERL_EPMD_PORT": str(self.epmd_port),
                # the CLI names itself on the nodes' host, which they reach it on
                "RABBITMQ_NODENAME": self.names[0],
                "RABBITMQ_CTL_ERL_ARGS": erl,
            }
            return subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=60, cwd=home
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def kill(self, index: int) -> None:
        """Node ``index`` SIGKILLed, its data kept: a crash or a pulled plug."""
        self.nodes[index].stop(remove=False, hard=True)

    def revive(self, index: int, timeout: float = 120.0) -> None:
        self.nodes[index].start(timeout)

    def restart(self, down_for: float = 0.0, timeout: float = 120.0, hard: bool = False) -> int:
        """One node stopped and started again, each in turn from one call to the next:
        the others carry the queues meanwhile. Returns which."""
        index, self._turn = self._turn, (self._turn + 1) % len(self.nodes)
        self.nodes[index].restart(down_for, timeout, hard)
        return index

    def refresh_crls(self, crls: Path) -> None:
        for node in self.nodes:
            node.refresh_crls(crls)

    def refresh_node_crls(self, crls: Path) -> None:
        """The nodes CA's new revocation list where each node reads it, on its next link
        (a running node keeps the links it has: restart the revoked node's peers' links by
        stopping it)."""
        for i in range(len(self.nodes)):
            shutil.copytree(crls, self.directory / f"n{i}" / NODE_CRLS, dirs_exist_ok=True)

    def stop(self, timeout: float = 30.0, remove: bool = True, hard: bool = False) -> None:
        # the joiners first: the first node stopping last leaves no queue without a leader
        # to hand over to while the others go
        for node in reversed(self.nodes):
            node.stop(timeout, remove=remove, hard=hard)
        kill_epmd(self.epmd_port)
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)
