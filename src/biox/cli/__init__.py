"""The ``biox`` command (also ``python -m biox``): one module per command group."""

from __future__ import annotations

import os

import typer

from biox import logs
from biox.cli import (
    audit,
    broker,
    disclosure,
    dlq,
    encounters,
    gallery,
    incident,
    keys,
    notice,
    participants,
    records,
    report,
    retention,
    retrieval,
    review,
    serve,
    sim,
    subject,
)
from biox.cli.common import Participant, begin, console
from biox.config import ConfigError
from biox.render import text
from biox.runtime import WorkerKind
from biox.schemas import contract

app = typer.Typer(help="biox: biometric immigration query exchange.", no_args_is_help=True)


@app.callback()
def _settings() -> None:
    """biox: biometric immigration query exchange. Settings: BIOX_* environment variables."""
    # warnings only, on stderr: stdout is the command's answer, which scripts capture
    # (`export BIOX_AMQP_URL=$(biox broker start)`); `biox serve` sets its own JSON logs
    logs.configure("WARNING", json=False, keep_loggers=False)
    begin()


app.add_typer(broker.app, name="broker")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(dlq.app, name="dlq")
app.add_typer(review.app, name="review")
app.add_typer(retrieval.app, name="retrieval")
app.add_typer(records.app, name="records")
app.add_typer(notice.app, name="notice")
app.add_typer(participants.app, name="participants")
app.add_typer(retention.app, name="retention")
app.add_typer(incident.app, name="incident")
app.add_typer(disclosure.app, name="disclosure")
app.add_typer(subject.app, name="subject")
app.add_typer(encounters.app, name="encounters")
app.add_typer(gallery.app, name="gallery")
app.add_typer(serve.topology_app, name="topology")
app.command()(serve.serve)
app.command()(serve.health)
app.command()(report.report)
app.command()(gallery.calibrate)
app.command()(report.qa)
app.command()(report.reconcile)
app.command()(sim.demo)
app.add_typer(sim.synth_app, name="synth")
app.command()(sim.conformance)


@app.command()
def worker(
    kind: WorkerKind = typer.Argument(..., help="the queue it consumes"),
    participant: Participant = typer.Option(..., "--participant", "-p"),
    shard: int = typer.Option(
        None, "--shard", help="a shard worker: which shard it holds (default BIOX_SHARD)"
    ),
) -> None:
    """Run one worker process for a participant (BIOX_AMQP_URL must be set); `biox serve
    -p P` runs and supervises every kind. With BIOX_SHARDS above 1, one `shard` worker per
    shard searches the gallery (docs/architecture.md, "Shards")."""
    from biox.runtime import run_worker
    from biox.settings import Settings

    try:
        settings = Settings() if shard is None else Settings(shard=shard)
    except ValueError as exc:  # pydantic's, naming the setting and why
        raise SystemExit(str(exc)) from exc
    run_worker(kind.value, getattr(participant, "value", participant), settings)


@app.command()
def init(
    directory: str = typer.Argument(
        None, help="where to write them (default: $XDG_CONFIG_HOME/biox, ~/.config/biox)"
    ),
) -> None:
    """Copy the example registry, policy, agreement and staff files to edit as your own,
    and print the settings that point at them. Existing files are kept."""
    import shutil
    from pathlib import Path

    from biox.config import NAMES, example

    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    where = Path(directory or Path(home) / "biox").resolve()
    where.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        target = where / name
        if target.exists():
            console.print(text(f"kept {target}"))
        else:
            shutil.copyfile(example(name), target)
            console.print(text(f"wrote {target}"))
    settings_of = {
        "participants.toml": "BIOX_REGISTRY",
        "policy.toml": "BIOX_POLICY",
        "agreement.toml": "BIOX_AGREEMENT",
        "staff.toml": "BIOX_STAFF",
    }
    for name in NAMES:
        print(f"export {settings_of[name]}={where / name}")


@app.command()
def schemas(out: str = typer.Option("schemas", help="directory to write")) -> None:
    """Write the JSON Schemas of every message kind (the integration contract)."""
    from pathlib import Path

    for path in contract.write(Path(out)):
        console.print(f"wrote {path}")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except ConfigError as e:  # a setting's file missing or broken: one line, no traceback
        console.print(f"[red]{text(str(e))}[/]")
        raise SystemExit(2) from None
