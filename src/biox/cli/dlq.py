"""``biox dlq``: dead letters for on-call staff (docs/operations.md)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from biox.broker.deadletters import (
    DeadLetter,
    DeadLetterQueues,
    Filters,
    dlq_names,
    parse_age,
)
from biox.broker.sweeps import erased_letters
from biox.cli.common import (
    Kind,
    Participant,
    acting,
    amqp_url,
    audited_read,
    console,
    session,
    settings,
)
from biox.registry import Registry
from biox.render import text
from biox.wire import addresses
from biox.wire.operations import (
    DeadLettersExported,
    DeadLettersImported,
    DeadLettersPurged,
    DeadLettersReplayed,
)

app = typer.Typer(
    help="Dead letters: list, show, replay, purge, export, import.", no_args_is_help=True
)

_P = typer.Option(None, "--participant", "-p")
_Q = typer.Option(None, "--queue", help="work queue or its .dlq")
_K = typer.Option(None, "--kind")
_R = typer.Option(None, "--reason", help="substring of the reason")
_O = typer.Option(None, "--older-than", help="e.g. 10m, 2h")


def _scope(
    command: str,
    participant: Any,
    queue: str | None,
    kind: Any,
    reason: str | None,
    older_than: str | None,
    ids: tuple[str, ...] | list[str] = (),
) -> tuple[DeadLetterQueues, list[str], Filters]:
    who = acting(participant, command)
    url = amqp_url()
    codes = Registry.load(settings().registry).codes
    chosen = getattr(participant, "value", participant)
    filters = Filters(
        participant=chosen,
        queue=queue,
        kind=getattr(kind, "value", kind),
        reason=reason,
        older_than_s=parse_age(older_than) if older_than else None,
        ids=tuple(ids),
    )
    dlqs = DeadLetterQueues(url, settings().client_tls(), who)
    return dlqs, dlq_names(codes, chosen, queue, settings().shards), filters


def _erased(d: DeadLetter) -> bool:
    """Whether a dead letter carries data its source had its owner delete (§22), read
    from the owning participant's erasures."""
    with session(addresses.owner(d.queue)) as s:
        return bool(erased_letters(s, [d]))


@app.command("list")
def dlq_list(
    participant: Participant = _P,
    queue: str = _Q,
    kind: Kind = _K,
    reason: str = _R,
    older_than: str = _O,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts per queue, then one row per dead letter."""
    dlqs, names, filters = _scope("dlq list", participant, queue, kind, reason, older_than)
    try:
        counts = {q: n for q, n in dlqs.counts(names).items() if n}
        letters = dlqs.find(names, filters)
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
            text(s["id"]),
            text(s["kind"]),
            text(f"{s['from']} → {s['to']}"),
            f"{s['age_s']}s",
            str(s["attempts"]),
            text(s["reason"][:80]),
        )
    console.print(table)


@app.command("show")
def dlq_show(message_id: str, participant: Participant = _P, queue: str = _Q) -> None:
    """Properties, headers and the body with templates and personal data redacted."""
    from biox.broker.exports import export_line, redacted_body

    dlqs, names, filters = _scope("dlq show", participant, queue, None, None, None, [message_id])
    try:
        found = dlqs.find(names, filters)
    finally:
        dlqs.close()
    if not found:
        console.print(f"{text(message_id)}: not in any dead-letter queue")
        raise typer.Exit(1)
    for owner in sorted({addresses.owner(d.queue) for d in found}):
        audited_read(owner, "dlq show", {"message_id": message_id}, len(found), dlqs.actor)
    keep = timedelta(days=settings().dead_letter_retention_days)
    for d in found:
        record = export_line(d, (d.failed_at or datetime.now(UTC)) + keep)
        record.pop("body")
        record["body (redacted)"] = redacted_body(d)
        print(json.dumps(record, indent=2, default=str))


@app.command("replay")
def dlq_replay(
    ids: list[str] = typer.Argument(None),
    all_: bool = typer.Option(False, "--all"),
    participant: Participant = _P,
    queue: str = _Q,
    kind: Kind = _K,
    reason: str = _R,
    older_than: str = _O,
    dry_run: bool = typer.Option(False, "--dry-run"),
    rate: float = typer.Option(0.0, "--rate", help="messages per second; 0 = no limit"),
    to_queue: str = typer.Option(None, "--to-queue"),
) -> None:
    """Republish to the queue each failed in (confirmed, same message_id); remove after
    confirm. --to-queue: another queue of the same participant that takes the kind."""
    if not (ids or all_ or kind or reason or older_than or participant or queue):
        console.print("say what to replay: IDs, --all, or filters")
        raise typer.Exit(2)
    dlqs, names, filters = _scope(
        "dlq replay", participant, queue, kind, reason, older_than, ids or ()
    )
    moved: list[tuple[str, str, str]] = []  # (queue, id, destination)
    refused: list[tuple[str, str, str]] = []  # (queue, id, why)
    try:
        n = dlqs.replay(
            names,
            filters,
            dry_run=dry_run,
            rate=rate,
            to_queue=to_queue,
            on_each=lambda d: moved.append((d.queue, d.id, to_queue or d.work_queue)),
            on_refused=lambda d, why: refused.append((d.queue, d.id, why)),
            erased=_erased,
        )
        if n and not dry_run:
            for code in sorted({addresses.owner(q) for q, _, _ in moved}):
                done = [i for q, i, _ in moved if addresses.owner(q) == code]
                dlqs.record_action(code, DeadLettersReplayed, done, f"{len(done)} replayed")
    finally:
        dlqs.close()
    for q, i, to in moved:
        console.print(("would replay " if dry_run else "replayed ") + text(f"{q} {i} → {to}"))
    for q, i, why in refused:
        console.print("[yellow]not replayed[/] " + text(f"{q} {i}: {why}"))
    console.print(
        f"{'would replay' if dry_run else 'replayed'} {len(moved) if dry_run else n} message(s)"
    )


@app.command("purge")
def dlq_purge(
    ids: list[str] = typer.Argument(None),
    participant: Participant = _P,
    queue: str = _Q,
    kind: Kind = _K,
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
    dlqs, names, filters = _scope(
        "dlq purge", participant, queue, kind, reason, older_than, ids or ()
    )
    gone: list[tuple[str, str]] = []

    def delete(_ch: object, d: DeadLetter) -> bool:
        gone.append((d.queue, d.id))
        return True  # acked: gone for good

    try:
        n = dlqs.visit(names, filters, delete)
        for code in sorted({addresses.owner(q) for q, _ in gone}):
            done = [i for q, i in gone if addresses.owner(q) == code]
            dlqs.record_action(code, DeadLettersPurged, done, f"{len(done)} purged")
    finally:
        dlqs.close()
    console.print(f"purged {n} message(s)")


@app.command("export")
def dlq_export(
    file: Path,
    participant: Participant = _P,
    queue: str = _Q,
    kind: Kind = _K,
    reason: str = _R,
    older_than: str = _O,
) -> None:
    """Write dead letters to FILE, one JSON record per line (they stay in the queue)."""
    dlqs, names, filters = _scope("dlq export", participant, queue, kind, reason, older_than)
    try:
        # owner-only from the first byte: the bodies are sealed, the headers are not
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.chmod(file, 0o600)
        with os.fdopen(fd, "w") as out:
            n = dlqs.export(names, filters, out, settings().dead_letter_retention_days)
        exported = [json.loads(line) for line in file.read_text().splitlines() if line]
        for code in sorted({addresses.owner(r["queue"]) for r in exported}):
            done = [
                str(r["properties"].get("message_id"))
                for r in exported
                if addresses.owner(r["queue"]) == code
            ]
            dlqs.record_action(
                code, DeadLettersExported, done, f"{len(done)} exported to {file.resolve()}"
            )
    finally:
        dlqs.close()
    console.print(f"exported {n} message(s) to {text(file)} (owner-only)")


@app.command("import")
def dlq_import(file: Path) -> None:
    """Put exported dead letters back into the dead-letter queues they came from (and
    nowhere else: a record naming any other queue stops the import). A line past its
    expiry, or carrying data its source had deleted (§22), is left out and named."""
    dlqs, names, _ = _scope("dlq import", None, None, None, None, None)
    try:
        with file.open() as lines:
            try:
                imported, left_out = dlqs.import_(
                    lines, names, lambda d: "deleted by its source (§22)" if _erased(d) else None
                )
            except ValueError as exc:
                console.print(f"[red]nothing imported:[/] {text(exc)}")
                raise typer.Exit(1) from exc
        for code in sorted({addresses.owner(q) for q in imported}):
            done = [i for q, ids in imported.items() if addresses.owner(q) == code for i in ids]
            dlqs.record_action(
                code, DeadLettersImported, done, f"{len(done)} imported from {file.resolve()}"
            )
    finally:
        dlqs.close()
    for line, why in left_out.items():
        console.print("[yellow]not imported[/] " + text(f"{line}: {why}"))
    console.print(f"imported {sum(len(v) for v in imported.values())} message(s)")
