"""A local RabbitMQ from Debian's ``rabbitmq-server``, as a child process.

Used by the demo, the tests and ``biox broker start`` when no BIOX_AMQP_URL is given. It
runs with its own node name, data, log and config directories in a throwaway directory
(owned by the ``rabbitmq`` user when we are root: the broker refuses to run as root),
on free ports, with its own epmd, so it never touches a system broker and leaves nothing
behind when stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import structlog

from biox.broker.connection import parameters
from biox.broker.definitions import split_shovels
from biox.dev.host import alive, chown_tree, free_port, kill_epmd, setpriv_args
from biox.settings import Settings
from biox.trust.tls import ClientTLS

if TYPE_CHECKING:
    from biox.dev.cluster import ClusterMember

log = structlog.get_logger("biox.launcher")

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
PLUGINS = [
    "rabbitmq_management",
    "rabbitmq_shovel",
    "rabbitmq_shovel_management",
    "rabbitmq_auth_mechanism_ssl",
    "rabbitmq_prometheus",  # queue depths, per queue (docs/operations.md, "Metrics")
]
EX_UNAVAILABLE = 69  # what the CLI exits with when it cannot reach the node (among others)
UNREACHED = "unable to perform an operation on node"
CLI_ATTEMPTS = 3


@dataclass(frozen=True)
class SovereignConfig:
    """One participant's own broker: TLS only, certificate logins, its definitions.

    ``server``: the broker's certificate and key, and the CA its clients' certificates
    must chain to (its participant's own CA, and no other); ``crls``: that CA's
    revocation list, in the hashed directory Erlang's ``ssl_crl_hash_dir`` reads;
    ``shovel_files``: what the node's shovels read (the partners' pinned CAs and our
    link certificates), copied under its ``tls/`` by name; ``probe``: a client
    certificate to check the broker answers; ``definitions``: what
    ``biox.broker.definitions`` generated for it (loaded at boot); ``max_message_bytes``:
    the largest message the broker accepts.
    """

    server: ClientTLS
    crls: Path
    shovel_files: dict[str, Path]
    probe: ClientTLS
    definitions: dict[str, Any]
    max_message_bytes: int


class BrokerError(RuntimeError):
    pass


@dataclass
class BrokerState:
    pid: int
    directory: str
    amqp_port: int
    management_port: int
    epmd_port: int
    node: str

    tls: bool = False
    prometheus_port: int = 0

    @property
    def metrics_url(self) -> str:
        """The broker's own Prometheus endpoint: per-queue depths, connections, channels."""
        return f"http://127.0.0.1:{self.prometheus_port}/metrics"

    @property
    def url(self) -> str:
        if self.tls:
            return f"amqps://127.0.0.1:{self.amqp_port}/%2F"
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"


class LocalBroker:
    def __init__(
        self,
        directory: Path | None = None,
        keep: bool = False,
        sovereign: SovereignConfig | None = None,
        amqp_port: int | None = None,
        max_message_bytes: int | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        """``sovereign``: a participant's own broker (TLS, certificates, definitions);
        otherwise the shared development broker (plain AMQP, guest). ``amqp_port``: the
        port to listen on, when others must know it before this broker starts.
        ``max_message_bytes``: the largest body the shared broker takes (default
        ``BIOX_MAX_MESSAGE_BYTES``), as a participant's own broker does, so that an
        oversize body meets the same refusal on both. ``cluster``: this node is one of a
        cluster's (``biox.dev.cluster``)."""
        self.max_message_bytes = max_message_bytes or Settings().max_message_bytes
        self.directory = directory
        self.keep = keep
        self.sovereign = sovereign
        self._port = amqp_port
        self.cluster = cluster
        self.state: BrokerState | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._dist_port = 0

    @property
    def url(self) -> str:
        if self.state is None:
            raise BrokerError("broker not started")
        return self.state.url

    def start(self, timeout: float = 90.0) -> LocalBroker:
        if not SERVER.exists():
            raise BrokerError(
                "rabbitmq-server is not installed: run `make rabbitmq` (as root), "
                "or set BIOX_AMQP_URL to an existing broker"
            )
        directory = self.directory or Path(tempfile.mkdtemp(prefix="biox-rabbitmq-"))
        directory.mkdir(parents=True, exist_ok=True)
        if self.state is not None:  # a restart: same node, ports and data
            amqp, mgmt, dist, epmd, prom = (
                self.state.amqp_port,
                self.state.management_port,
                self._dist_port,
                self.state.epmd_port,
                self.state.prometheus_port,
            )
        else:
            amqp, mgmt, dist, epmd, prom = (free_port() for _ in range(5))
            amqp = self._port or amqp
            epmd = self.cluster.epmd_port if self.cluster else epmd  # one epmd per host
        self._dist_port = dist
        node = f"biox{amqp}@localhost"
        common = (
            f"management.tcp.port = {mgmt}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"prometheus.tcp.port = {prom}\n"
            "prometheus.tcp.ip = 127.0.0.1\n"
            "prometheus.return_per_object_metrics = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "vm_memory_high_watermark.relative = 0.4\n"
            "disk_free_limit.absolute = 200MB\n"
        )
        if self.sovereign is None:
            listen = (
                f"listeners.tcp.default = 127.0.0.1:{amqp}\nloopback_users.guest = true\n"
                f"max_message_size = {self.max_message_bytes}\n"
            )
        else:
            listen = _sovereign_conf(directory, self.sovereign, amqp)
        if self.cluster is not None:
            listen += self.cluster.conf()
            self.cluster.prepare(directory)
        (directory / "rabbitmq.conf").write_text(listen + common)
        (directory / "enabled_plugins").write_text("[" + ",".join(PLUGINS) + "].\n")
        env = self._env(directory, node, dist, epmd)
        cmd = [str(SERVER)]
        if os.geteuid() == 0:  # the broker must not run as root: drop to the package's user
            chown_tree(directory, "rabbitmq")
            cmd = ["setpriv", *setpriv_args("rabbitmq"), str(SERVER)]
        output = open(directory / "server.out", "wb")  # noqa: SIM115 - lives with the child
        self.process = subprocess.Popen(
            cmd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.state = BrokerState(
            self.process.pid,
            str(directory),
            amqp,
            mgmt,
            epmd,
            node,
            self.sovereign is not None,
            prom,
        )
        self._wait_ready(timeout)
        if self.sovereign is not None and not (self.cluster and self.cluster.seeds):
            self._limit_users(self.sovereign.definitions)  # a joiner shares its cluster's
            # the shovels once the queues exist (``definitions.split_shovels``)
            self.ctl("import_definitions", str(directory / "shovels.json"))
        log.info("broker_started", url=self.url, directory=str(directory))
        return self

    def _env(self, directory: Path, node: str, dist: int, epmd: int) -> dict[str, str]:
        erl = "-kernel inet_dist_use_interface {127,0,0,1}"
        erl += self.cluster.erl_args(directory) if self.cluster else ""
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(directory),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(dist),
            "ERL_EPMD_PORT": str(epmd),
            # epmd and the Erlang distribution listen on this machine only, like AMQP
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": erl,
            "RABBITMQ_CTL_ERL_ARGS": erl,
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        }

    def _limit_users(self, definitions: dict[str, Any]) -> None:
        """Each user's connection and channel limits: the definitions carry them, and
        RabbitMQ 3.10 does not import them from there, so they are set once it runs, all
        in one call (what ``rabbitmqctl set_user_limits`` calls, per user): a CLI call
        boots a VM and links to the node, seconds each, a minute for a participant's
        users on a loaded machine."""
        calls = [
            f"ok = rabbit_auth_backend_internal:set_user_limits("
            f"{_erlang_binary(user['name'])}, {_erlang_binary(json.dumps(user['limits']))}, "
            '<<"biox-launcher">>)'
            for user in definitions.get("users", [])
            if user.get("limits")
        ]
        if calls:
            self.ctl("eval", ", ".join(calls) + ".")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl`` against this node (as the broker's user, with its cookie)."""
        return self.cli("rabbitmqctl", *args, timeout=timeout)

    def cli(self, tool: str, *args: str, timeout: float = 60) -> str:
        """One of RabbitMQ's CLI tools (``rabbitmqctl``, ``rabbitmq-queues``) against
        this node, tried again when it could not reach it: on a loaded machine the CLI's
        own VM and its TLS link to the node can take longer than the node waits (every
        call here is idempotent, so one that timed out after all did no harm)."""
        assert self.state is not None
        directory = Path(self.state.directory)
        env = self._env(directory, self.state.node, self._dist_port, self.state.epmd_port)
        cmd = [str(SERVER.with_name(tool)), "-n", self.state.node, "-q", *args]
        if os.geteuid() == 0:
            cmd = ["setpriv", *setpriv_args("rabbitmq"), *cmd]
        said = ""
        for attempt in range(CLI_ATTEMPTS):
            try:  # cwd: Erlang reads its working directory first, and prints errors there
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=directory
                )
            except subprocess.TimeoutExpired:
                said = f"no answer in {timeout:.0f} s"
            else:
                if done.returncode == 0:
                    return done.stdout
                said = done.stderr.strip()[:1500]
                if done.returncode != EX_UNAVAILABLE or UNREACHED not in said:
                    break  # the node answered: no
            log.warning(
                "broker_cli_retry",
                tool=tool,
                command=args[:1],
                attempt=attempt + 1,
                said=said[:600],
            )
            time.sleep(2**attempt)
        raise BrokerError(f"{tool} {' '.join(args)}: {said}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.state is not None and self.process is not None
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (Path(self.state.directory) / "server.out").read_text(errors="replace")
                raise BrokerError(
                    f"rabbitmq-server exited ({self.process.returncode}):\n{tail[-2000:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.state.amqp_port), timeout=1).close()
                probe = self.sovereign.probe if self.sovereign else None
                (params,) = parameters(self.url, probe)  # this node alone
                params.connection_attempts = 1
                pika.BlockingConnection(params).close()
                return
            except Exception as exc:
                last = exc
                time.sleep(0.5)
        self.stop()
        raise BrokerError(f"broker did not answer within {timeout:.0f}s: {last}")

    def save_state(self, path: Path) -> None:
        assert self.state is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self.state)))

    @classmethod
    def from_state(cls, path: Path) -> LocalBroker:
        broker = cls()
        broker.state = BrokerState(**json.loads(path.read_text()))
        broker.directory = Path(broker.state.directory)
        return broker

    def running(self) -> bool:
        if self.state is None:
            return False
        try:
            os.kill(self.state.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def restart(self, down_for: float = 0.0, timeout: float = 90.0, hard: bool = False) -> None:
        """Stop the node and start it again on the same ports with the same data;
        ``hard``: SIGKILLed, as a crash or a pulled plug would stop it."""
        assert self.state is not None
        self.directory = Path(self.state.directory)
        self.stop(remove=False, hard=hard)
        time.sleep(down_for)
        self.start(timeout)

    def stop(self, timeout: float = 30.0, remove: bool = True, hard: bool = False) -> None:
        """SIGTERM the node (it shuts down cleanly), then its epmd; remove the directory.
        ``hard``: SIGKILL at once, with no chance to flush or close a connection."""
        if self.state is None:
            return
        pid = self.state.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid, self.process):
            time.sleep(0.2)
        if alive(pid, self.process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.wait(timeout=5)
        if self.cluster is None:  # a cluster's epmd serves the nodes still running
            kill_epmd(self.state.epmd_port)
        log.info("broker_stopped", node=self.state.node)
        if remove and not self.keep:
            shutil.rmtree(self.state.directory, ignore_errors=True)
            self.state = None

    def refresh_crls(self, crls: Path) -> None:
        """A new revocation list where the running node reads it (on its next connection)."""
        assert self.state is not None
        shutil.copytree(crls, Path(self.state.directory) / "crls", dirs_exist_ok=True)


def _sovereign_conf(directory: Path, config: SovereignConfig, port: int) -> str:
    """TLS only, certificate logins (EXTERNAL, the user is the certificate's common name)
    checked against the participant's own CA and its CRL, the generated definitions
    loaded at boot, and a message size limit. The TLS options go to ``advanced.config``:
    the CRL check (``crl_check``, ``crl_cache``) has no ``rabbitmq.conf`` form."""
    tls = directory / "tls"
    peer = erlang_tls(tls, config.server, "server")
    for name, source in config.shovel_files.items():
        shutil.copyfile(source, tls / name)
    crls = directory / "crls"
    shutil.copytree(config.crls, crls, dirs_exist_ok=True)
    boot, shovels = split_shovels(config.definitions)
    (directory / "definitions.json").write_text(json.dumps(boot, indent=1))
    (directory / "shovels.json").write_text(json.dumps(shovels, indent=1))
    crl = f'{{crl_cache, {{ssl_crl_hash_dir, {{internal, [{{dir, "{crls}"}}]}}}}}}'
    ssl = f"{peer}, {{fail_if_no_peer_cert, true}}, {{crl_check, peer}}, {crl}"
    (directory / "advanced.config").write_text(f"[{{rabbit, [{{ssl_options, [{ssl}]}}]}}].\n")
    return (
        "listeners.tcp = none\n"
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        "auth_mechanisms.1 = EXTERNAL\n"
        "ssl_cert_login_from = common_name\n"
        f"load_definitions = {directory / 'definitions.json'}\n"
        f"max_message_size = {config.max_message_bytes}\n"
    )


def _erlang_binary(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'<<"{escaped}">>'


def erlang_tls(tls: Path, files: ClientTLS, name: str) -> str:
    """``files`` under ``tls``, and ``ssl`` options checking the peer against that CA alone."""
    tls.mkdir(exist_ok=True)
    ca, cert, key = f"{name}-ca.pem", f"{name}.pem", f"{name}.key"
    for target, source in zip((ca, cert, key), (files.ca, files.cert, files.key), strict=True):
        shutil.copyfile(source, tls / target)
    return (
        f'{{cacertfile, "{tls / ca}"}}, {{certfile, "{tls / cert}"}}, '
        f'{{keyfile, "{tls / key}"}}, {{verify, verify_peer}}, '
        "{versions, ['tlsv1.3', 'tlsv1.2']}"
    )
