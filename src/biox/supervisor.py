"""``biox serve``: every worker kind of one participant as supervised child processes
(docs/operations.md, "Running a participant").

Each worker stays its own process (``python -m biox worker KIND -p P``), as the consume
loop is single-threaded by design (docs/architecture.md, "Workers"): a crash takes one
worker down, never its siblings. The supervisor restarts a worker that exits with an
exponential back-off (a worker that keeps failing at start-up does not spin), resets the
back-off once a worker has stayed up, stops everything on SIGTERM by passing SIGTERM on
(each worker finishes its batch, acks and closes), and writes what it sees to a status
file that ``biox serve status`` reads and that the metrics endpoint reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from biox.routes import ROUTES, routes_for

log = structlog.get_logger("biox.supervisor")


def parse_counts(specs: list[str], default: int = 1, shards: int = 1) -> dict[str, int]:
    """``["query=2", "review=0"]`` over every worker kind at ``default``; 0 runs none.
    With ``shards`` above 1 each shard's queue is a kind of its own (``shard.0=2``).

    An unknown kind or a count that is not a whole number is refused, naming it: a typo
    must not leave a queue without a consumer.
    """
    counts = dict.fromkeys(routes_for(shards).queues, default)
    for part, kind, number in kind_values(specs, counts):
        if not number.isdigit():
            raise ValueError(f"{part!r}: the count must be a whole number")
        counts[kind] = int(number)
    return counts


def kind_values(specs: Iterable[str], kinds: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """Each ``KIND=VALUE`` of the comma-separated ``specs`` as (the part, KIND, VALUE): one
    reading for the counts and the priorities, a kind not in ``kinds`` refused, named."""
    known = list(kinds)
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kind, sep, value = part.partition("=")
            if not sep or kind not in known:
                raise ValueError(f"{part!r}: expected KIND=N with KIND one of {', '.join(known)}")
            yield part, kind, value


def parse_nice(spec: str) -> dict[str, int]:
    """``"query=-5,shard=-5"`` (``BIOX_WORKER_NICE``): the CPU priority of each worker
    family named, as ``nice`` counts it (-20, first, to 19). The others keep the one they
    were started with.

    An unknown family or a value out of range is refused, naming it: a typo must not
    quietly leave the matcher waiting behind the others for a core.
    """
    nice: dict[str, int] = {}
    # worker families: whatever BIOX_SHARDS, "shard" is one
    for part, kind, value in kind_values([spec], ROUTES.specs):
        try:
            nice[kind] = int(value)
        except ValueError:
            raise ValueError(f"{part!r}: the priority must be a whole number") from None
        if not -20 <= nice[kind] <= 19:
            raise ValueError(f"{part!r}: the priority must be from -20 to 19, as nice counts")
    return nice


def worker_argv(kind: str, participant: str) -> list[str]:
    """How to start the worker of a queue of ``routes_for``: a shard's queue (``shard.1``)
    by its family and its shard."""
    family, _, shard = kind.partition(".")
    argv = [sys.executable, "-m", "biox", "worker", family, "--participant", participant]
    return [*argv, "--shard", shard] if shard else argv


@dataclass
class Child:
    kind: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    """Starts, watches and stops one participant's workers.

    ``command`` builds a worker's argv (the tests pass one that runs a deliberately
    failing worker); ``log_dir`` gives each worker a file of its own, otherwise workers
    write to the supervisor's own stderr (a service manager's journal).
    """

    participant: str
    counts: Mapping[str, int]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    status_path: Path | None = None
    log_dir: Path | None = None
    stop_timeout: float = 30.0
    first_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    #: a worker that stayed up this long is healthy again: its back-off starts over
    stable_s: float = 30.0
    #: the supervisor's own metrics port (worker health); worker i gets metrics_port + i
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    shards: int = 1  # BIOX_SHARDS: one worker kind per shard's queue
    command: Callable[[str, str], list[str]] | None = None
    clock: Callable[[], float] = time.monotonic
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(routes_for(self.shards).queues)
        if unknown:
            raise ValueError(f"unknown worker kind(s): {', '.join(sorted(unknown))}")
        self.children = [
            Child(kind, i, backoff=self.first_backoff_s)
            for kind, n in self.counts.items()
            for i in range(1, n + 1)
        ]
        self._started = time.time()

    def _argv(self, kind: str) -> list[str]:
        if self.command is not None:
            return self.command(kind, self.participant)
        return worker_argv(kind, self.participant)

    def _output(self, child: Child) -> IO[bytes] | None:
        if self.log_dir is None:
            return None  # inherit: the supervisor's journal gets every worker's lines
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.participant}-{child.kind}-{child.index}.log"
        return open(self.log_dir / name, "ab")

    def metrics_port_of(self, child: Child) -> int | None:
        if not self.metrics_port:
            return None
        return self.metrics_port + 1 + self.children.index(child)

    def _spawn(self, child: Child) -> None:
        out = self._output(child)
        env = dict(self.env)
        port = self.metrics_port_of(child)
        env["BIOX_METRICS_PORT"] = str(port or 0)
        try:
            child.process = subprocess.Popen(
                self._argv(child.kind),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
            )
        finally:
            if out is not None:
                out.close()  # the child holds its own descriptor
        child.started_at = self.clock()
        log.info("worker.started", kind=child.kind, index=child.index, pid=child.process.pid)

    def start(self) -> Supervisor:
        if self.metrics_port:
            self._serve_metrics()
        for child in self.children:
            self._spawn(child)
        self.write_status()
        return self

    def poll(self) -> None:
        """Restart what exited, each after its back-off; called about twice a second."""
        now = self.clock()
        for child in self.children:
            p = child.process
            if p is not None and p.poll() is None:
                if now - child.started_at >= self.stable_s:
                    child.backoff = self.first_backoff_s
                continue
            if p is not None:  # just exited: schedule its restart
                child.last_exit = p.returncode
                child.process = None
                up = now - child.started_at
                if up >= self.stable_s:
                    child.backoff = self.first_backoff_s
                child.next_start = now + child.backoff
                log.warning(
                    "worker.exited",
                    kind=child.kind,
                    index=child.index,
                    returncode=child.last_exit,
                    uptime_s=round(up, 1),
                    restart_in_s=child.backoff,
                )
                child.backoff = min(child.backoff * 2, self.max_backoff_s)
            if now >= child.next_start:
                child.restarts += 1
                self._spawn(child)
        self.write_status()

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        self.start()
        try:
            while not stop.wait(interval):
                self.poll()
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to every worker (each finishes its batch), SIGKILL after the timeout."""
        running = [c for c in self.children if c.running()]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.stop_timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.error("worker.killed", kind=child.kind, index=child.index)
                child.process.kill()
                child.process.wait()
            child.last_exit = child.process.returncode
        log.info("supervisor.stopped", workers=len(running))
        self.write_status(stopped=True)

    def status(self, stopped: bool = False) -> dict[str, object]:
        now = self.clock()
        return {
            "participant": self.participant,
            "supervisor_pid": os.getpid(),
            "started_at": self._started,
            "written_at": time.time(),
            "stopped": stopped,
            "workers": [
                {
                    "kind": c.kind,
                    "index": c.index,
                    "pid": c.process.pid if c.running() and c.process else None,
                    "state": "running" if c.running() else "restarting",
                    "uptime_s": round(now - c.started_at, 1) if c.running() else 0.0,
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                    "metrics_port": self.metrics_port_of(c),
                }
                for c in self.children
            ],
        }

    def _serve_metrics(self) -> None:
        """Each worker up or not, and its restarts: what `biox health` shows, scraped."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.registry import Collector

        supervisor = self

        class Workers(Collector):
            def collect(self):  # type: ignore[no-untyped-def]
                up = GaugeMetricFamily(
                    "biox_worker_up",
                    "1 while the worker process runs",
                    labels=["participant", "kind", "index"],
                )
                restarts = CounterMetricFamily(
                    "biox_worker_restarts",
                    "Restarts by serve",
                    labels=["participant", "kind", "index"],
                )
                for c in supervisor.children:
                    labels = [supervisor.participant, c.kind, str(c.index)]
                    up.add_metric(labels, 1.0 if c.running() else 0.0)
                    restarts.add_metric(labels, c.restarts)
                yield up
                yield restarts

        registry = CollectorRegistry()
        registry.register(Workers())
        start_http_server(self.metrics_port, addr=self.metrics_host, registry=registry)

    def write_status(self, stopped: bool = False) -> None:
        if self.status_path is None:
            return
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(stopped), indent=1))
        tmp.replace(self.status_path)  # a reader never sees half a file


def read_status(path: Path, stale_after_s: float = 10.0) -> dict[str, object] | None:
    """The status a supervisor wrote, with ``alive``: written recently by a live process."""
    if not path.exists():
        return None
    status: dict[str, object] = json.loads(path.read_text())
    pid = status.get("supervisor_pid")
    written = status.get("written_at")
    fresh = isinstance(written, float) and time.time() - written < stale_after_s
    status["alive"] = bool(
        not status.get("stopped") and fresh and isinstance(pid, int) and _exists(pid)
    )
    return status


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
