"""The `biox` command."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress

from biox import contract, logs
from biox.settings import Settings

app = typer.Typer(help="biox: biometric immigration query exchange.", no_args_is_help=True)
broker_app = typer.Typer(help="A local RabbitMQ for development and tests.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
console = Console()


def _broker_state(settings: Settings) -> Path:
    return settings.data_dir / "broker" / "state.json"


@app.command()
def demo(
    gallery_size: int = typer.Option(20_000, help="identities per participant gallery"),
    encounters: int = typer.Option(100, help="encounters submitted per participant"),
    seed: int = typer.Option(2026),
) -> None:
    """Run the exchange end to end on this machine and print what came back."""
    from biox.demo import run

    settings = Settings()
    logs.configure("WARNING", json=False)
    raise typer.Exit(
        run(
            settings,
            gallery_size=gallery_size,
            per_participant=encounters,
            seed=seed,
            console=console,
        )
    )


@app.command()
def worker(
    kind: str = typer.Argument(..., help="intake | matcher | response"),
    participant: str = typer.Option(..., "--participant", "-p"),
) -> None:
    """Run one worker process for a participant (BIOX_AMQP_URL must be set)."""
    from biox.runtime import WorkerKind, run_worker

    run_worker(WorkerKind(kind), participant)


@app.command()
def schemas(out: Path = typer.Option(Path("schemas"), help="directory to write")) -> None:
    """Write the JSON Schemas of every message kind (the integration contract)."""
    for path in contract.write(out):
        console.print(f"wrote {path}")


@app.command()
def synth(
    participant: str = typer.Option(..., "--participant", "-p"),
    size: int = typer.Option(20_000),
    seed: int = typer.Option(2026),
) -> None:
    """Build a participant's synthetic gallery (database records and FAISS indexes)."""
    from biox.runtime import build_synthetic_gallery

    settings = Settings()
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task(f"gallery {participant}", total=size)
        gallery = build_synthetic_gallery(
            settings, participant, size, seed, lambda n: progress.advance(task, n)
        )
    console.print(
        f"{participant}: {gallery.size} identities, {gallery.kind} index, "
        f"{time.perf_counter() - started:.1f}s"
    )


@broker_app.command("start")
def broker_start() -> None:
    """Start a local RabbitMQ in the background and print its URL."""
    from biox.broker.launcher import LocalBroker

    settings = Settings()
    state = _broker_state(settings)
    if state.exists() and LocalBroker.from_state(state).running():
        console.print(LocalBroker.from_state(state).url)
        return
    broker = LocalBroker().start()
    broker.save_state(state)
    console.print(broker.url)
    console.print(f"[dim]export BIOX_AMQP_URL={broker.url}   # then: biox broker stop[/]")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local RabbitMQ started by `biox broker start`."""
    from biox.broker.launcher import LocalBroker

    state = _broker_state(Settings())
    if not state.exists():
        console.print("no local broker recorded")
        return
    LocalBroker.from_state(state).stop()
    state.unlink()
    console.print("stopped")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the local RabbitMQ is running, and where."""
    from biox.broker.launcher import LocalBroker

    state = _broker_state(Settings())
    if state.exists() and (b := LocalBroker.from_state(state)).running():
        console.print(f"running (pid {b.state.pid}): {b.url}")  # type: ignore[union-attr]
    else:
        console.print("not running")
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(
    participant: list[str] = typer.Option(None, "--participant", "-p", help="default: all"),
) -> None:
    """Walk each participant's chain and name the first altered, removed or inserted entry."""
    from biox import audit
    from biox.registry import Registry
    from biox.store import session_for

    settings = Settings()
    codes = participant or Registry.load(settings.registry).codes
    broken = False
    for code in codes:
        with session_for(settings.database_for(code)) as session:
            count, problem = audit.verify(session)
        if problem is None:
            console.print(f"{code}: {count} entries, chain intact")
        else:
            broken = True
            console.print(f"[red]{code}: {count} entries, chain broken at {problem}[/]")
    raise typer.Exit(1 if broken else 0)


@audit_app.command("trail")
def audit_trail(query_id: str) -> None:
    """The timeline of one query across participants, from their audit trails."""
    from biox.audit import trail_across
    from biox.views import trail_table

    settings = Settings()
    rows = trail_across(settings, query_id)
    if not rows:
        console.print(f"no audit entries for {query_id}")
        raise typer.Exit(1)
    console.print(trail_table(query_id, rows))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
