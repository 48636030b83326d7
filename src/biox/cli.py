"""The `biox` command."""

from __future__ import annotations

import os
import sys
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
dlq_app = typer.Typer(
    help="Dead letters: list, show, replay, purge, export, import.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


def _dlq_scope(participant, queue, kind, reason, older_than, ids=()):
    from biox.broker.deadletters import DeadLetterQueues, Filters, dlq_names, parse_age
    from biox.registry import Registry

    settings = Settings()
    if not settings.amqp_url:
        console.print("BIOX_AMQP_URL is not set")
        raise typer.Exit(2)
    codes = Registry.load(settings.registry).codes
    filters = Filters(
        participant=participant,
        queue=queue,
        kind=kind,
        reason=reason,
        older_than_s=parse_age(older_than) if older_than else None,
        ids=tuple(ids),
    )
    return DeadLetterQueues(settings.amqp_url), dlq_names(codes, participant, queue), filters


_P = typer.Option(None, "--participant", "-p")
_Q = typer.Option(None, "--queue", help="work queue or its .dlq")
_K = typer.Option(None, "--kind")
_R = typer.Option(None, "--reason", help="substring of the reason")
_O = typer.Option(None, "--older-than", help="e.g. 10m, 2h")


@dlq_app.command("list")
def dlq_list(
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts per queue, then one row per dead letter."""
    import json

    from rich.table import Table

    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than)
    try:
        counts = {q: n for q, n in dlqs.counts(names).items() if n}
        letters = dlqs.list(names, filters)
    finally:
        dlqs.close()
    if as_json:
        print(json.dumps({"counts": counts, "messages": [d.summary() for d in letters]}, indent=2))
        return
    for q, n in sorted(counts.items()):
        console.print(f"{q}: {n}")
    table = Table()
    for col in ("id", "kind", "from → to", "age", "attempts", "reason"):
        table.add_column(col)
    for d in letters:
        s = d.summary()
        table.add_row(
            s["id"],
            s["kind"],
            f"{s['from']} → {s['to']}",
            f"{s['age_s']}s",
            str(s["attempts"]),
            s["reason"][:80],
        )
    console.print(table)


@dlq_app.command("show")
def dlq_show(message_id: str, participant: str = _P, queue: str = _Q) -> None:
    """Properties, headers and the body with templates and personal data redacted."""
    import json

    from biox.broker.deadletters import redacted_body, to_record

    dlqs, names, filters = _dlq_scope(participant, queue, None, None, None, [message_id])
    try:
        found = dlqs.list(names, filters)
    finally:
        dlqs.close()
    if not found:
        console.print(f"{message_id}: not in any dead-letter queue")
        raise typer.Exit(1)
    for d in found:
        record = to_record(d)
        record.pop("body")
        record["body (redacted)"] = redacted_body(d)
        print(json.dumps(record, indent=2, default=str))


@dlq_app.command("replay")
def dlq_replay(
    ids: list[str] = typer.Argument(None),
    all_: bool = typer.Option(False, "--all"),
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    dry_run: bool = typer.Option(False, "--dry-run"),
    rate: float = typer.Option(0.0, "--rate", help="messages per second; 0 = no limit"),
    to_queue: str = typer.Option(None, "--to-queue"),
) -> None:
    """Republish to the original route (confirmed, same message_id); remove after confirm."""
    if not (ids or all_ or kind or reason or older_than or participant or queue):
        console.print("say what to replay: IDs, --all, or filters")
        raise typer.Exit(2)
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than, ids or ())
    moved: list[str] = []
    try:
        n = dlqs.replay(
            names,
            filters,
            dry_run=dry_run,
            rate=rate,
            to_queue=to_queue,
            on_each=lambda d: moved.append(
                f"{d.queue} {d.id} → {to_queue if to_queue else '/'.join(d.route)}"
            ),
        )
        if n and not dry_run:
            for code in {m.split(".")[0] for m in moved}:
                dlqs.record_action(
                    code,
                    "dlq.replay",
                    [m.split()[1] for m in moved if m.startswith(code)],
                    f"{n} replayed",
                )
    finally:
        dlqs.close()
    for line in moved:
        console.print(("would replay " if dry_run else "replayed ") + line)
    console.print(
        f"{'would replay' if dry_run else 'replayed'} {len(moved) if dry_run else n} message(s)"
    )


@dlq_app.command("purge")
def dlq_purge(
    ids: list[str] = typer.Argument(None),
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    yes: bool = typer.Option(False, "--yes"),
) -> None:
    """Delete dead letters for good (needs --yes)."""
    if not yes:
        console.print("purge deletes messages for good: add --yes")
        raise typer.Exit(2)
    if not (ids or kind or reason or older_than or participant or queue):
        console.print("say what to purge: IDs or filters")
        raise typer.Exit(2)
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than, ids or ())
    gone: list[tuple[str, str]] = []
    try:
        n = dlqs.visit(names, filters, lambda _ch, d: bool(gone.append((d.queue, d.id))) or True)
        for code in {q.split(".")[0] for q, _ in gone}:
            dlqs.record_action(
                code, "dlq.purge", [i for q, i in gone if q.startswith(code)], f"{n} purged"
            )
    finally:
        dlqs.close()
    console.print(f"purged {n} message(s)")


@dlq_app.command("export")
def dlq_export(
    file: Path,
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
) -> None:
    """Write dead letters to FILE, one JSON record per line (they stay in the queue)."""
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than)
    try:
        with file.open("w") as out:
            n = dlqs.export(names, filters, out)
    finally:
        dlqs.close()
    console.print(f"exported {n} message(s) to {file}")


@dlq_app.command("import")
def dlq_import(file: Path) -> None:
    """Put exported dead letters back into the queues they came from."""
    dlqs, _, _ = _dlq_scope(None, None, None, None, None)
    try:
        with file.open() as lines:
            n = dlqs.import_(lines)
    finally:
        dlqs.close()
    console.print(f"imported {n} message(s)")


# piped output (CI logs, `| tee`) gets room for the tables instead of 80 columns
console = Console() if sys.stdout.isatty() else Console(width=140)


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
