"""``biox broker``: a local RabbitMQ for development and tests (``biox.dev``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from biox.cli.common import Participant, console, settings
from biox.dev.broker import LocalBroker

if TYPE_CHECKING:
    from biox.dev.pki import DevPKI
    from biox.trust.staff import Staff

app = typer.Typer(
    help="A local RabbitMQ for development and tests (never a deployment's broker).",
    no_args_is_help=True,
)


def _state() -> Path:
    return settings().data_dir / "broker" / "state.json"


@app.command("start")
def broker_start() -> None:
    """Start a local RabbitMQ in the background and print its URL.

    The URL alone goes to stdout, so that ``export BIOX_AMQP_URL=$(biox broker start)``
    works as the integration guide writes it; the hints go to stderr.
    """
    state = _state()
    if state.exists() and LocalBroker.from_state(state).running():
        typer.echo(LocalBroker.from_state(state).url)
        return
    broker = LocalBroker().start()
    broker.save_state(state)
    typer.echo(broker.url)
    assert broker.state is not None
    hints = Console(stderr=True)
    hints.print(f"[dim]export BIOX_AMQP_URL={broker.url}   # then: biox broker stop[/]")
    # workers refuse plain AMQP unless told this is the development broker (docs/security.md)
    hints.print("[dim]export BIOX_DEV_SHARED_BROKER=1   # for `biox serve` on this broker[/]")
    hints.print(f"[dim]queue depths for Prometheus: {broker.state.metrics_url}[/]")


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
    nodes: int = typer.Option(
        1,
        min=1,
        max=7,
        help="nodes per participant's broker: above one, a cluster (TLS between its nodes, "
        "every quorum queue on each, the partners' shovels naming every node)",
    ),
) -> None:
    """Run one TLS-only RabbitMQ per participant, linked by shovels, until Ctrl-C.

    Each participant has its own CA; each broker trusts its own alone. Prints, for each
    participant, the variables a worker, an operator or each encounter system of that
    participant sets to reach its own broker by certificate. With --nodes 3, each
    participant's broker is a three-node cluster and its URL names every node.
    """
    import signal
    import threading

    from biox.dev.sovereign import SovereignBrokers
    from biox.registry import Registry
    from biox.trust.identity import Role

    s = settings()
    codes = Registry.load(s.registry).codes
    where = directory or s.data_dir / "sovereign"
    shape = f"{len(codes)} brokers of {nodes} nodes" if nodes > 1 else f"{len(codes)} brokers"
    with console.status(f"Starting {shape} (TLS, certificate logins, shovels)..."):
        brokers = SovereignBrokers(codes, s, where, nodes=dict.fromkeys(codes, nodes)).start()
    try:
        for code in codes:
            console.print(f"[bold]{code}[/]: {brokers.url(code)}")
            who = [(Role.workers.value, brokers.env(code, Role.workers))]
            who += [
                (f"operators.{person}", brokers.env(code, Role.operators, person=person))
                for person in sorted(brokers.staff.of(code))
            ]
            who += [
                (f"encounters.{system}", brokers.env(code, Role.encounters, system))
                for system in brokers.systems(code)
            ]
            for name, env in who:
                line = " ".join(f"{k}={v}" for k, v in env.items() if k != "BIOX_AMQP_URL")
                console.print(f"  [dim]{name:<22}[/] {line}")
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
        help="PARTNER=HOST:PORT of each partner's broker (TLS), for the shovels; the "
        "nodes of a partner's cluster comma-separated (PARTNER=HOST:PORT,HOST:PORT,...)",
    ),
    tls_dir: str = typer.Option(
        "/etc/rabbitmq/biox",
        help="where, on the broker's host, partners/<p>.pem (each partner's CA, pinned) "
        "and links/<p>.pem|.key (our link certificate from that partner's CA) are",
    ),
    part: str = typer.Option(
        "all",
        help="all; boot: everything but the shovels, for load_definitions at a node's first "
        "boot; shovels: the shovels alone, for `rabbitmqctl import_definitions` once it runs "
        "(a shovel started before its queue declares a classic one: docs/security.md)",
    ),
) -> None:
    """Print the RabbitMQ definitions of one participant's own broker (JSON), generated
    from the registry, the staff file (a user per person) and the route table, for
    `load_definitions` (docs/security.md)."""
    import json

    from biox.broker.definitions import definitions, shovel_uri, split_shovels
    from biox.registry import Registry
    from biox.routes import routes_for

    if part not in ("all", "boot", "shovels"):
        console.print(f"[red]--part {part}: all, boot or shovels[/]")
        raise typer.Exit(2)
    s = settings()
    code = getattr(participant, "value", participant)
    registry = Registry.load(s.registry)
    codes = registry.codes
    where = dict(p.split("=", 1) for p in partner)
    missing = [c for c in registry.linked(code) if c not in where]
    if missing:
        console.print(f"[red]no --partner for {', '.join(missing)}[/]")
        raise typer.Exit(2)
    uris: dict[str, str | list[str]] = {}
    for other, addresses in where.items():
        nodes = []
        for address in addresses.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit():
                console.print(f"[red]--partner {other}={addresses}: HOST:PORT, not {address!r}[/]")
                raise typer.Exit(2)
            nodes.append(
                shovel_uri(
                    host,
                    int(port),
                    f"{tls_dir}/partners/{other}.pem",
                    f"{tls_dir}/links/{other}.pem",
                    f"{tls_dir}/links/{other}.key",
                )
            )
        uris[other] = nodes[0] if len(nodes) == 1 else nodes
    me = registry.get(code)
    defs = definitions(
        code,
        codes,
        s.retry_tiers,
        s.delivery_limit,
        uris,
        dead_letter_days=s.dead_letter_retention_days,
        encounter_systems=me.encounter_systems if me else (),
        linked=registry.linked(code),
        staff=_staff().of(code),
        routes=routes_for(s.shards),
    )
    boot, shovels = split_shovels(defs)
    print(json.dumps({"all": defs, "boot": boot, "shovels": shovels}[part], indent=2))


def _staff() -> Staff:
    """The staff file, or one line naming the setting."""
    from biox.trust.staff import Staff, StaffError

    try:
        return Staff.load(settings().staff)
    except StaffError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None


pki = typer.Typer(
    help="Each participant's CA and the certificates between participants "
    '(docs/security.md, "Brokers, TLS and identities").',
    no_args_is_help=True,
)
app.add_typer(pki, name="pki")
_DIR = typer.Option(
    None, "--dir", help="the PKI's directory (default: BIOX_DATA_DIR/sovereign/pki)"
)


def _pki(directory: Path | None) -> DevPKI:
    from biox.dev.pki import DevPKI

    return DevPKI(directory or settings().data_dir / "sovereign" / "pki")


@pki.command("init")
def pki_init(directory: Path = _DIR) -> None:
    """The development layout: a CA per participant, its broker's and its own users'
    certificates, and every pair's link certificates (each requested by one side,
    signed by the other). Existing files are kept. A deployment uses its agency's PKI
    and the steps below between participants."""
    from biox.registry import Registry

    registry = Registry.load(settings().registry)
    systems = {c: registry.participants[c].encounter_systems for c in registry.codes}
    staff = _staff()
    people = {c: sorted(staff.of(c)) for c in registry.codes}
    p = _pki(directory).ensure(registry.codes, systems, people)
    for code in registry.codes:
        console.print(f"[bold]{code}[/]: CA {p.ca(code)}  CRL {p.crl(code)}")
        for user in sorted((p.home(code) / "clients").glob("*.pem")):
            console.print(f"  {user.stem:<28} {user}")
        for partner in registry.codes:
            if partner != code:
                link = p.link(code, partner)
                console.print(f"  {code}.link on {partner}'s broker: {link.cert} (CA {link.ca})")


@pki.command("request")
def pki_request(
    participant: Participant = typer.Option(..., "--participant", "-p", help="who asks"),
    to: str = typer.Option(..., "--to", help="the partner whose broker the link logs in to"),
    out: Path = typer.Argument(..., help="where to write the request (PEM)"),
    directory: Path = _DIR,
) -> None:
    """Our link identity's certificate request, for the partner's CA to sign: the key
    never leaves us. Send the file to the partner; install what it returns as
    links/<partner>.pem, and its CA (fingerprint checked by telephone) as
    partners/<partner>.pem."""
    code = getattr(participant, "value", participant)
    out.write_bytes(_pki(directory).request(code, to))
    console.print(f"wrote {out}: {code}.link, for {to}'s CA to sign")


@pki.command("sign")
def pki_sign(
    participant: Participant = typer.Option(..., "--participant", "-p", help="the host"),
    request: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="a partner's request (PEM)"
    ),
    out: Path = typer.Argument(..., help="where to write the certificate (PEM)"),
    directory: Path = _DIR,
) -> None:
    """Our CA issues a partner's link certificate: only ``<partner>.link``, client use,
    90 days. Anything else is refused."""
    from biox.dev.pki import PKIError

    code = getattr(participant, "value", participant)
    try:
        out.write_bytes(_pki(directory).sign(code, request.read_bytes()))
    except PKIError as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"wrote {out}, issued by {code}'s CA")


@pki.command("revoke")
def pki_revoke(
    participant: Participant = typer.Option(..., "--participant", "-p", help="whose CA"),
    certificate: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="a certificate that CA issued (PEM)"
    ),
    directory: Path = _DIR,
) -> None:
    """Adds the certificate to the CRL of whichever of our CAs issued it: our CA's
    (crl.pem, and crls/ for the broker's ssl_crl_hash_dir), or our nodes CA's
    (nodes-crls/, for each cluster node's node-crls/). Refused from the next connection."""
    from biox.dev.pki import PKIError

    code = getattr(participant, "value", participant)
    p = _pki(directory)
    pem = certificate.read_bytes()
    try:
        serial = p.revoke(code, pem)
    except (PKIError, ValueError) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(2) from exc
    hashed = p.crl_dir_of(code, pem)
    where = "each node's node-crls/" if hashed != p.crl_dir(code) else "the broker's CRL directory"
    console.print(f"revoked serial {serial:x}; copy {hashed} to {where}")
