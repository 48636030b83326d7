"""``biox serve``, ``biox health`` and ``biox topology``: bringing one participant up
(docs/operations.md, "Running a participant")."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pika
import typer
from pika.exceptions import ChannelClosedByBroker

from biox.cli.common import Participant, code, console, settings
from biox.routes import routes_for
from biox.wire import addresses

topology_app = typer.Typer(
    help="The exchanges, queues and bindings of a broker, from the route table.",
    no_args_is_help=True,
)


def status_path(participant: str) -> Path:
    return settings().participant_dir(participant) / "serve.json"


def missing_queues(url: str, queues: list[str]) -> list[str]:
    """Queues the broker does not have (each checked on a channel of its own: a failed
    passive declare closes the channel it was made on)."""
    from biox.broker.connection import parameters

    conn = pika.BlockingConnection(parameters(url, settings().client_tls()))
    missing = []
    try:
        for q in queues:
            ch = conn.channel()
            try:
                ch.queue_declare(q, passive=True)
                ch.close()
            except ChannelClosedByBroker as e:
                if e.reply_code != 404:
                    raise
                missing.append(q)
    finally:
        conn.close()
    return missing


def serve(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    count: list[str] = typer.Option(
        [],
        "--count",
        "-c",
        help="KIND=N workers of a kind (repeat, or comma-separate); 0 runs none. "
        "Default: BIOX_SERVE_COUNTS, then one of each kind.",
    ),
    declare: bool = typer.Option(
        False,
        "--declare",
        help="declare the topology first (a shared development broker; a participant's own "
        "broker gets it from `biox broker definitions`)",
    ),
    log_dir: Path | None = typer.Option(
        None, help="one log file per worker here (default: every worker logs to stderr)"
    ),
) -> None:
    """Run every worker kind of a participant as supervised processes until SIGTERM.

    A worker that exits is restarted with a back-off (1 s doubling to 60 s, reset after
    30 s up). SIGTERM or Ctrl-C stops every worker gracefully. `biox health -p P` shows
    what runs. Needs BIOX_AMQP_URL (and the TLS variables on an amqps:// broker).
    """
    from biox import logs
    from biox.broker.topology import arrival_queues
    from biox.registry import Registry
    from biox.supervisor import Supervisor, parse_counts, parse_nice

    s = settings()
    me = code(participant)
    logs.configure(s.log_level, s.log_json, participant=me, worker="serve")
    if not s.amqp_url:
        console.print("[red]BIOX_AMQP_URL is not set[/]: start a broker with `biox broker start`")
        raise typer.Exit(2)
    try:
        counts = parse_counts([s.serve_counts, *count], shards=s.shards)
    except ValueError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e
    try:  # each worker would exit on it: said once, here
        parse_nice(s.worker_nice)
    except ValueError as e:
        console.print(f"[red]BIOX_WORKER_NICE: {e}[/]")
        raise typer.Exit(2) from e
    from biox.trust.sealing import load_ring

    try:  # the workers would exit on this one by one: say it once, before starting them
        load_ring(s.keys(), me)
    except SystemExit as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if s.amqp_url.startswith("amqp:") and not s.dev_shared_broker:
        console.print(
            "[red]plain AMQP (amqp://) is for the development broker only[/]: use amqps://, "
            "or set BIOX_DEV_SHARED_BROKER=1 on a development machine (docs/security.md)"
        )
        raise typer.Exit(2)
    if declare:
        topology_declare(participant=[])
    linked = Registry.load(s.registry).linked(me)
    wanted = [
        q
        for k, n in counts.items()
        if n
        for q in (addresses.queue(me, k), *arrival_queues(me, k, linked, routes_for(s.shards)))
    ]
    absent = missing_queues(s.amqp_url, wanted)
    if absent:
        console.print(
            f"[red]the broker has no queue {', '.join(absent)}[/]: declare the topology first "
            "(`biox topology declare`, or `biox serve --declare`, on a shared broker; "
            "`biox broker definitions` on a participant's own broker)"
        )
        raise typer.Exit(2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sup = Supervisor(
        me,
        counts,
        status_path=status_path(me),
        log_dir=log_dir,
        metrics_port=s.metrics_port,
        metrics_host=s.metrics_host,
        shards=s.shards,
    )
    console.print(
        f"serving {me}: "
        + ", ".join(f"{k}={n}" for k, n in counts.items() if n)
        + f" (status: biox health -p {me})"
    )
    if s.metrics_port:
        console.print(
            f"metrics: http://{s.metrics_host}:{s.metrics_port}/metrics (workers' health), "
            "workers on "
            f"{s.metrics_port + 1}-{s.metrics_port + sum(counts.values())}"
        )
    sup.run(stop)


def health(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    wait: float = typer.Option(0.0, help="wait up to this many seconds for every worker"),
) -> None:
    """What `biox serve` runs for a participant: each worker's pid, uptime and restarts.
    Exits 0 when every worker runs, 1 otherwise (a container's health check)."""
    from rich.table import Table

    from biox.cli.common import age
    from biox.supervisor import read_status

    me = code(participant)
    deadline = time.monotonic() + wait
    while True:
        status = read_status(status_path(me))
        workers = status["workers"] if status else []
        assert isinstance(workers, list)
        healthy = bool(status and status["alive"] and all(w["pid"] for w in workers))
        if healthy or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if status is None:
        console.print(f"no `biox serve -p {me}` has run here ({status_path(me)})")
        raise typer.Exit(1)
    table = Table(title=f"{me}: supervisor {'up' if status['alive'] else 'DOWN'}")
    for col in ("worker", "state", "pid", "uptime", "restarts", "last exit", "metrics"):
        table.add_column(col)
    for w in workers:
        table.add_row(
            f"{w['kind']}-{w['index']}",
            w["state"] if status["alive"] else "stopped",
            str(w["pid"] or "-"),
            age(w["uptime_s"]) if w["pid"] else "-",
            str(w["restarts"]),
            "-" if w["last_exit"] is None else str(w["last_exit"]),
            f":{w['metrics_port']}/metrics" if w.get("metrics_port") else "-",
        )
    console.print(table)
    raise typer.Exit(0 if healthy else 1)


@topology_app.command("declare")
def topology_declare(
    participant: list[str] = typer.Option(
        [], "--participant", "-p", help="only these participants (default: every one)"
    ),
) -> None:
    """Declare exchanges, queues and bindings on BIOX_AMQP_URL, idempotently.

    For one broker shared by the participants (development, integration tests). A
    participant's own broker is declared by loading `biox broker definitions`, which
    also holds its users and permissions (docs/security.md).
    """
    from biox.broker.topology import declare
    from biox.registry import Registry

    s = settings()
    if not s.amqp_url:
        console.print("[red]BIOX_AMQP_URL is not set[/]")
        raise typer.Exit(2)
    codes = Registry.load(s.registry).codes
    unknown = [p for p in participant if p not in codes]
    if unknown:
        console.print(f"[red]not in the registry: {', '.join(unknown)}[/]")
        raise typer.Exit(2)
    queues = declare(s.amqp_url, codes, s, only=participant or None)
    console.print(f"declared {len(queues)} work queues: {', '.join(queues)}")


@topology_app.command("show")
def topology_show(
    participant: Participant = typer.Option(..., "--participant", "-p"),
) -> None:
    """Every queue of a participant and the kinds it takes, from the route table."""
    from rich.table import Table

    me = code(participant)
    s = settings()
    table = Table(
        title=f"{me}: queues (exchanges {addresses.inbox(me)}, "
        f"{addresses.outbox(me)}, {addresses.results(me)})"
    )
    for col in ("queue", "kinds", "retries", "dead letters", "what it does"):
        table.add_column(col)
    routes = routes_for(s.shards)
    for q in routes.queues.values():
        name = addresses.queue(me, q.role)
        table.add_row(
            name,
            ", ".join(routes.kinds_of(q.role)) or "(every audited kind)",
            ", ".join(addresses.retry_queue(name, t) for t in s.retry_tiers),
            addresses.dead_letter_queue(name),
            q.doc,
        )
    console.print(table)
