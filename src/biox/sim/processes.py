"""Worker processes and a broker for the demo, the integration tests and the benchmarks.

Each worker is ``python -m biox worker ROLE -p CODE`` in a process of its own, as in a
deployment; these helpers start a set of them, wait until every queue has its consumer,
and stop them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
from rich.console import Console

from biox.agreement import participants
from biox.broker.connection import parameters, redact
from biox.broker.publisher import publish_once
from biox.broker.topology import declare
from biox.database import session_for
from biox.dev.broker import LocalBroker
from biox.dev.sovereign import SovereignBrokers
from biox.gallery import snapshot
from biox.registry import Registry, Status
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim import galleries
from biox.store import ParticipantRow
from biox.supervisor import worker_argv
from biox.trust.identity import Role
from biox.trust.sealing import ensure_keys
from biox.trust.tls import ClientTLS
from biox.wire import addresses, codec


def unwind_on_sigterm() -> None:
    """SIGTERM (a CI timeout, systemd, pkill) unwinds like Ctrl-C: workers and broker stop."""

    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def broker_url(settings: Settings, console: Console) -> Iterator[str]:
    """The configured broker, or a local one for the duration of the block."""
    if settings.amqp_url:
        console.print(f"Broker: [bold]{redact(settings.amqp_url)}[/] (BIOX_AMQP_URL)")
        yield settings.amqp_url
        return
    with console.status("Starting a local RabbitMQ (Debian rabbitmq-server)..."):
        broker = LocalBroker().start()
    assert broker.state is not None
    console.print(
        f"Broker: local RabbitMQ at [bold]{broker.url}[/] (queue depths for Prometheus: "
        f"{broker.state.metrics_url})"
    )
    try:
        yield broker.url
    finally:
        with console.status("Stopping the local broker..."):
            broker.stop()


@dataclass
class Workers:
    processes: list[tuple[str, subprocess.Popen[bytes]]]

    def alive(self) -> list[str]:
        return [name for name, p in self.processes if p.poll() is None]

    def stop(self, timeout: float = 20.0) -> None:
        for _, p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker_env(settings: Settings, codes: list[str], **extra: str) -> dict[str, str]:
    """The environment of worker processes: the settings' data directory, registry and
    policy, and each participant's signing and sealing keys (made when missing)."""
    ensure_keys(settings.keys(), codes)
    return {
        **os.environ,
        "BIOX_DATA_DIR": str(settings.data_dir),
        "BIOX_KEYS_DIR": str(settings.keys().resolve()),
        "BIOX_REGISTRY": str(Path(settings.registry).resolve()),
        "BIOX_POLICY": str(Path(settings.policy).resolve()),
        "BIOX_RETRY_DELAYS": settings.retry_delays,
        **({"BIOX_DATABASE_URL": settings.database_url} if settings.database_url else {}),
        **extra,
    }


def dev_env(url: str, settings: Settings, codes: list[str], **extra: str) -> dict[str, str]:
    """On the development broker: every participant on one broker as one user
    (``BIOX_DEV_SHARED_BROKER``), proven by its signatures alone."""
    return worker_env(settings, codes, BIOX_AMQP_URL=url, BIOX_DEV_SHARED_BROKER="1", **extra)


def start_workers(
    codes: list[str],
    env: dict[str, str],
    log_dir: Path,
    roles: tuple[str, ...] = tuple(ROUTES.queues),
) -> Workers:
    """One worker process per participant and queue (``python -m biox worker ROLE``); a
    role named twice gets two processes, competing consumers of its queue (``us-intake``,
    ``us-intake-2``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for code in codes:
        for i, role in enumerate(roles):
            nth = roles[: i + 1].count(role)
            name = f"{code}-{role}" + (f"-{nth}" if nth > 1 else "")
            out = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        worker_argv(role, code),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    return Workers(procs)


def serve(
    codes: list[str],
    env: dict[str, str],
    log_dir: Path,
    extra: dict[str, list[str]] | None = None,
    metrics: dict[str, int] | None = None,
) -> Workers:
    """``biox serve -p CODE`` per participant, as an operator runs it: each supervises
    its participant's workers (one file per worker under ``log_dir``). ``extra``: more
    arguments per participant; ``metrics``: a participant's ``BIOX_METRICS_PORT``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for code in codes:
        out = open(log_dir / f"{code}-serve.log", "ab")  # noqa: SIM115 - owned by the child
        argv = [
            sys.executable,
            "-m",
            "biox",
            "serve",
            "-p",
            code,
            "--log-dir",
            str(log_dir),
            *(extra or {}).get(code, []),
        ]
        own = {**env, "BIOX_METRICS_PORT": str((metrics or {}).get(code, 0))}
        procs.append((f"{code}-serve", subprocess.Popen(argv, env=own, stdout=out, stderr=out)))
    return Workers(procs)


def free_port_runs(count: int, length: int, start: int = 9410) -> list[int]:
    """``count`` first ports of ``length`` consecutive free ports each (metrics ports)."""
    import socket

    found: list[int] = []
    port = start
    while len(found) < count and port < 65000:
        try:
            for p in range(port, port + length):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", p))
        except OSError:
            port += 1
            continue
        found.append(port)
        port += length
    return found


def start_requester_with_providers(
    url: str,
    settings: Settings,
    sizes: dict[str, int],
    seed: int,
    requester: str = "us",
    extra_env: dict[str, str] | None = None,
    provider_roles: tuple[str, ...] = ("query",),
) -> Workers:
    """Topology, the providers' synthetic galleries, the requester's intake and response
    workers and one matcher per provider, all consuming (load and fault runs)."""
    registry = Registry.load(settings.registry)
    declare(url, registry.codes, settings)
    providers = [code for code in sizes if code != requester]
    for code in providers:
        galleries.build_gallery(settings, code, sizes[code], seed)
        if settings.shards > 1:
            snapshot.split_snapshot(settings.gallery_dir(code), settings.shards, settings)
    env = dev_env(url, settings, registry.codes, **(extra_env or {}))
    logs = settings.data_dir / "logs"
    workers = start_workers([requester], env, logs, ("intake", "response"))
    workers.processes += start_workers(providers, env, logs, provider_roles).processes
    queues = [
        addresses.queue(requester, "intake"),
        addresses.queue(requester, "response"),
        *(addresses.queue(c, role) for c in providers for role in provider_roles),
    ]
    wait_for_consumers(url, queues, workers)
    return workers


def start_sovereign_workers(
    brokers: SovereignBrokers,
    roles: dict[str, tuple[str, ...]],
    env: dict[str, str],
    log_dir: Path,
    timeout: float = 120,
) -> Workers:
    """Each participant's workers on its own broker (as ``<code>.workers``, by certificate),
    started and waited for until every queue has its consumer."""
    workers = Workers([])
    for code, kinds in roles.items():
        own = {**env, **brokers.env(code, Role.workers)}
        workers.processes += start_workers([code], own, log_dir, kinds).processes
    for code, kinds in roles.items():
        wait_for_consumers(
            brokers.url(code),
            [addresses.queue(code, k) for k in kinds],
            workers,
            timeout=timeout,
            tls=brokers.credentials(code, Role.workers),
        )
    return workers


def wait_for_consumers(
    url: str,
    queues: list[str],
    workers: Workers,
    timeout: float = 120,
    tls: ClientTLS | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    conn = pika.BlockingConnection(parameters(url, tls))
    try:
        ch = conn.channel()
        while time.monotonic() < deadline:
            waiting = [
                q for q in queues if ch.queue_declare(q, passive=True).method.consumer_count == 0
            ]
            if not waiting:
                return
            dead = [n for n, p in workers.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"worker(s) exited during start-up: {dead}; see their logs")
            time.sleep(0.3)
        raise RuntimeError(f"no consumer on {waiting} after {timeout:.0f}s")
    finally:
        conn.close()


def commence(
    settings: Settings,
    codes: list[str],
    connect: Callable[[str], tuple[str, ClientTLS | None]],
    actor: str = "demo",
    timeout: float = 60.0,
) -> Registry:
    """§34 on a development layout, over the broker: each participant tells each partner it
    has an agreement with that it is ready (what ``biox participants ready -p P`` sends),
    and this waits until every database holds both sides of every pair active. The notice
    workers must run. ``connect``: a participant's broker URL and TLS credentials. Returns
    the registry as the participants now hold it (what plans and expectations read)."""
    registry = Registry.load(settings.registry)
    for code in codes:
        outs = []
        for ask in participants.readiness(registry, code, actor):
            if ask.to in codes:
                outs.append(codec.from_person(ask, participant=code, actor=actor))
        url, tls = connect(code)
        publish_once(url, outs, name="biox-readiness", tls=tls)
    deadline = time.monotonic() + timeout
    while True:
        waiting = []
        for code in codes:
            with session_for(settings.database_for(code)) as s:
                for other in [code, *registry.linked(code)]:
                    row = s.get(ParticipantRow, other) if other in codes else None
                    if other in codes and (row is None or row.status != Status.active.value):
                        waiting.append(f"{other} at {code}")
        if not waiting:  # every pair that may talk has commenced on both sides
            return registry.model_copy(
                update={
                    "participants": {
                        c: p.model_copy(update={"status": Status.active}) if c in codes else p
                        for c, p in registry.participants.items()
                    }
                }
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"§34 readiness not yet recorded: {', '.join(waiting)}")
        time.sleep(0.2)
