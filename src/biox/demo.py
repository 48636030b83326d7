"""`biox demo`: the whole exchange on one machine, from an empty directory to a report.

Broker (local unless BIOX_AMQP_URL), topology, a synthetic gallery per participant,
workers as separate processes, a simulated encounter system per participant, and a
table of what came back. Everything it starts, it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from biox import addresses, encounters
from biox.audit import trail_across
from biox.broker.launcher import LocalBroker
from biox.broker.topology import declare
from biox.registry import Registry
from biox.runtime import QUEUE_ROLE, WorkerKind, build_synthetic_gallery
from biox.settings import Settings
from biox.views import trail_table


def unwind_on_sigterm() -> None:
    """SIGTERM (a CI timeout, systemd, pkill) unwinds like Ctrl-C: workers and broker stop."""

    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def broker_url(settings: Settings, console: Console) -> Iterator[str]:
    """The configured broker, or a local one for the duration of the block."""
    if settings.amqp_url:
        console.print(f"Broker: [bold]{_redact(settings.amqp_url)}[/] (BIOX_AMQP_URL)")
        yield settings.amqp_url
        return
    with console.status("Starting a local RabbitMQ (Debian rabbitmq-server)..."):
        broker = LocalBroker().start()
    console.print(f"Broker: local RabbitMQ at [bold]{broker.url}[/]")
    try:
        yield broker.url
    finally:
        with console.status("Stopping the local broker..."):
            broker.stop()


def _redact(url: str) -> str:
    parsed = pika.URLParameters(url)
    return f"amqp://{parsed.credentials.username}:***@{parsed.host}:{parsed.port}"


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


def start_workers(
    codes: list[str],
    env: dict[str, str],
    log_dir: Path,
    kinds: tuple[WorkerKind, ...] = tuple(WorkerKind),
) -> Workers:
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for code in codes:
        for kind in kinds:
            name = f"{code}-{kind.value}"
            out = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "biox.cli",
                            "worker",
                            kind.value,
                            "--participant",
                            code,
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    return Workers(procs)


def start_requester_with_providers(
    url: str,
    settings: Settings,
    sizes: dict[str, int],
    seed: int,
    requester: str = "us",
    extra_env: dict[str, str] | None = None,
    provider_kinds: tuple[WorkerKind, ...] = (WorkerKind.matcher,),
) -> Workers:
    """Topology, the providers' synthetic galleries, the requester's intake and response
    workers and one matcher per provider, all consuming (load and fault runs)."""
    registry = Registry.load(settings.registry)
    declare(url, registry.codes, settings)
    providers = [code for code in sizes if code != requester]
    for code in providers:
        build_synthetic_gallery(settings, code, sizes[code], seed)
    env = {
        **os.environ,
        "BIOX_AMQP_URL": url,
        "BIOX_DATA_DIR": str(settings.data_dir),
        "BIOX_RETRY_DELAYS": settings.retry_delays,
        **(extra_env or {}),
    }
    logs = settings.data_dir / "logs"
    workers = start_workers([requester], env, logs, (WorkerKind.intake, WorkerKind.response))
    workers.processes += start_workers(providers, env, logs, provider_kinds).processes
    queues = [
        f"{requester}.intake",
        f"{requester}.response",
        *(addresses.queue(c, QUEUE_ROLE[k]) for c in providers for k in provider_kinds),
    ]
    wait_for_consumers(url, queues, workers)
    return workers


def wait_for_consumers(url: str, queues: list[str], workers: Workers, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    conn = pika.BlockingConnection(pika.URLParameters(url))
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


def run(
    settings: Settings,
    *,
    gallery_size: int = 20_000,
    per_participant: int = 100,
    seed: int = 2026,
    console: Console | None = None,
) -> int:
    console = console or Console()
    unwind_on_sigterm()
    registry = Registry.load(settings.registry)
    codes = registry.codes
    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    sizes = dict.fromkeys(codes, gallery_size)

    with broker_url(settings, console) as url:
        queues = declare(url, codes, settings)
        console.print(f"Topology: {len(codes) * 2} exchanges, {len(queues)} work queues declared")
        with _progress(console) as progress:
            for code in codes:
                task = progress.add_task(f"Gallery {code}", total=gallery_size)
                build_synthetic_gallery(
                    settings, code, gallery_size, seed, lambda n, t=task: progress.advance(t, n)
                )
        env = {
            **os.environ,
            "BIOX_AMQP_URL": url,
            "BIOX_DATA_DIR": str(data_dir),
            "BIOX_REGISTRY": str(settings.registry),
        }
        workers = start_workers(codes, env, data_dir / "logs")
        try:
            with console.status(f"Starting {len(workers.processes)} worker processes..."):
                wait_for_consumers(
                    url,
                    [addresses.queue(c, QUEUE_ROLE[k]) for c in codes for k in WorkerKind],
                    workers,
                )
            console.print(
                f"Workers: {len(workers.processes)} processes "
                f"({', '.join(k.value for k in WorkerKind)} per participant)"
            )
            planned = encounters.plan(registry, sizes, per_participant, seed)
            with (
                encounters.EncounterSystem(url, sizes) as system,
                _progress(console) as progress,
            ):
                task = progress.add_task("Encounters answered", total=len(planned))
                system.submit(planned)
                system.collect(
                    timeout=600,
                    on_progress=lambda done, total: progress.update(task, completed=done),
                )
                outcomes = list(system.outcomes.values())
                duplicates = system.duplicates
            _show_a_trail(console, settings, outcomes)
        finally:
            workers.stop()
        return report(console, outcomes, duplicates)


def _show_a_trail(console: Console, settings: Settings, outcomes: list[encounters.Outcome]) -> None:
    """One matched query's path through every participant's audit trail."""
    matched = [a for o in outcomes for a in o.answers.values() if a.status == "match"]
    if not matched:
        return
    time.sleep(1.0)  # the audit consumers run beside the pipeline: let them catch up
    rows = trail_across(settings, matched[0].query_id)
    if rows:
        console.print(trail_table(matched[0].query_id, rows))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def report(console: Console, outcomes: list[encounters.Outcome], duplicates: int) -> int:
    pairs, refused, missing = encounters.summarise(outcomes)
    table = Table(
        title="Queries per pair (all encounters submitted at once; "
        "latency from submission to the answer on reply_to)"
    )
    columns = ("pair", "sent", "match", "no_match", "declined", "rejected", "wrong")
    for col in (*columns, "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "pair" else "right", no_wrap=True)
    for (req, prov), s in sorted(pairs.items()):
        table.add_row(
            f"{req} → {prov}",
            str(s.queries),
            str(s.match),
            str(s.no_match),
            str(s.declined),
            str(s.rejected),
            str(s.wrong),
            *(
                f"{v:.0f}" if v is not None else "-"
                for v in (s.percentile(50), s.percentile(95), s.percentile(99))
            ),
        )
    console.print(table)
    ref = Table(title="Encounters refused at intake (§2-4), per requester")
    ref.add_column("requester")
    ref.add_column("reasons")
    for req, reasons in sorted(refused.items()):
        ref.add_row(req, ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    console.print(ref)
    total = sum(s.queries for s in pairs.values())
    wrong = sum(s.wrong for s in pairs.values())
    console.print(
        f"{len(outcomes)} encounters, {total} queries, {missing} unanswered, "
        f"{duplicates} duplicate results, {wrong} wrong answers."
    )
    return 0 if missing == 0 and duplicates == 0 and wrong == 0 else 1
