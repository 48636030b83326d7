"""``biox broker``: a local RabbitMQ for development and tests (``biox.dev``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from biox.cli.common import Participant, console, settings
from biox.dev.broker import LocalBroker

app = typer.Typer(
    help="A local RabbitMQ for development and tests (never a deployment's broker).",
    no_args_is_help=True,
)


def _state() -> Path:
    return settings().data_dir / "broker" / "state.json"


@app.command("start")
def broker_start() -> None:
    """Start a local RabbitMQ in the background and print its URL."""
    state = _state()
    if state.exists() and LocalBroker.from_state(state).running():
        console.print(LocalBroker.from_state(state).url)
        return
    broker = LocalBroker().start()
    broker.save_state(state)
    console.print(broker.url)
    console.print(f"[dim]export BIOX_AMQP_URL={broker.url}   # then: biox broker stop[/]")
    assert broker.state is not None
    console.print(f"[dim]queue depths for Prometheus: {broker.state.metrics_url}[/]")


@app.command("stop")
def broker_stop() -> None:
    """Stop the local RabbitMQ started by `biox broker start`."""
    state = _state()
    if not state.exists():
        console.print("no local broker recorded")
        return
    LocalBroker.from_state(state).stop()
    state.unlink()
    console.print("stopped")


@app.command("status")
def broker_status() -> None:
    """Say whether the local RabbitMQ is running, and where."""
    state = _state()
    broker = LocalBroker.from_state(state) if state.exists() else None
    if broker is not None and broker.running() and broker.state is not None:
        console.print(f"running (pid {broker.state.pid}): {broker.url}")
    else:
        console.print("not running")
        raise typer.Exit(1)


@app.command("sovereign")
def broker_sovereign(
    directory: Path = typer.Option(
        None, help="where the development PKI is kept (default: BIOX_DATA_DIR/sovereign)"
    ),
) -> None:
    """Run one TLS-only RabbitMQ per participant, linked by shovels, until Ctrl-C.

    Prints, for each participant, the variables a worker, an operator or an encounter
    system of that participant sets to reach its own broker by certificate.
    """
    import signal
    import threading

    from biox.dev.sovereign import SovereignBrokers
    from biox.registry import Registry
    from biox.trust.identity import Role

    s = settings()
    codes = Registry.load(s.registry).codes
    where = directory or s.data_dir / "sovereign"
    with console.status(f"Starting {len(codes)} brokers (TLS, certificate logins, shovels)..."):
        brokers = SovereignBrokers(codes, s, where).start()
    try:
        for code in codes:
            console.print(f"[bold]{code}[/]: {brokers.url(code)}")
            for role in Role:
                env = brokers.env(code, role)
                line = " ".join(f"{k}={v}" for k, v in env.items() if k != "BIOX_AMQP_URL")
                console.print(f"  [dim]{role.value:<10}[/] {line}")
        console.print("Ctrl-C stops them.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        brokers.stop()


@app.command("definitions")
def broker_definitions(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    partner: list[str] = typer.Option(
        [],
        help="PARTNER=HOST:PORT of each partner's broker (TLS), for the shovels",
    ),
    tls_dir: str = typer.Option(
        "/etc/rabbitmq/biox",
        help="where, on the broker's host, ca.pem, link.pem and link.key are installed",
    ),
) -> None:
    """Print the RabbitMQ definitions of one participant's own broker (JSON), generated
    from the registry and the route table, for `load_definitions` (docs/security.md)."""
    import json

    from biox.broker.definitions import definitions, shovel_uri
    from biox.registry import Registry

    s = settings()
    code = getattr(participant, "value", participant)
    codes = Registry.load(s.registry).codes
    where = dict(p.split("=", 1) for p in partner)
    missing = [c for c in codes if c != code and c not in where]
    if missing:
        console.print(f"[red]no --partner for {', '.join(missing)}[/]")
        raise typer.Exit(2)
    uris = {}
    for other, address in where.items():
        host, _, port = address.rpartition(":")
        uris[other] = shovel_uri(
            host, int(port), f"{tls_dir}/ca.pem", f"{tls_dir}/link.pem", f"{tls_dir}/link.key"
        )
    defs = definitions(
        code,
        codes,
        s.retry_tiers,
        s.delivery_limit,
        uris,
        dead_letter_days=s.dead_letter_retention_days,
    )
    print(json.dumps(defs, indent=2))


@app.command("pki")
def broker_pki(
    directory: Path = typer.Option(
        None, help="where to keep it (default: BIOX_DATA_DIR/sovereign/pki)"
    ),
) -> None:
    """Make a development PKI: a CA, a server certificate per participant's broker, and a
    client certificate per broker user (<code>.workers, .operators, .encounters, .link).
    Existing files are kept. For development only: a deployment uses its agency's PKI."""
    from biox.dev.pki import DevPKI
    from biox.registry import Registry
    from biox.trust.identity import Role, broker_user

    s = settings()
    codes = Registry.load(s.registry).codes
    pki = DevPKI(directory or s.data_dir / "sovereign" / "pki").ensure(codes)
    console.print(f"CA: {pki.ca}")
    for code in codes:
        cert, _ = pki.broker(code)
        console.print(f"{code}: broker {cert}")
        for role in Role:
            console.print(
                f"  {broker_user(code, role):<15} {pki.client(broker_user(code, role)).cert}"
            )
