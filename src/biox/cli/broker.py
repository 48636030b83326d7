"""``biox broker``: a local RabbitMQ for development and tests (``biox.dev``)."""

from __future__ import annotations

from pathlib import Path

import typer

from biox.cli.common import console, settings
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
