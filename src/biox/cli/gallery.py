"""``biox gallery``: a participant's own identities in and out (docs/gallery.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlmodel import select

from biox.cli.common import (
    PARTICIPANT,
    Participant,
    acting,
    audited_read,
    code,
    console,
    session,
    settings,
)
from biox.render import text

app = typer.Typer(
    help="A participant's gallery: import and export identities, counts, removal.",
    no_args_is_help=True,
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _snapshot(participant: str):  # type: ignore[no-untyped-def]
    from biox.gallery.gallery import Gallery

    directory = settings().gallery_dir(participant)
    return Gallery.load(directory, settings().ivf_nprobe) if Gallery.exists(directory) else None


@app.command("import")
def gallery_import(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a Parquet file"),
    participant: Participant = PARTICIPANT,
    batch: int = typer.Option(1000, help="rows per transaction"),
    errors: Path = typer.Option(
        None, help="every refused row, as JSON lines (default: FILE.errors.jsonl)"
    ),
) -> None:
    """Add identities from FILE (columns: docs/gallery.md). Bad rows are reported by
    number and left out; the rest go in, a batch per transaction. Running matchers pick
    them up within BIOX_GALLERY_SYNC_S. Run it again after an interruption: identities
    already present are skipped. Exit 1 if any row was refused."""
    from biox.gallery.transfer import count_rows, import_file

    me = code(participant)
    total = count_rows(file)
    with _progress() as progress, session(participant) as s:
        task = progress.add_task(f"Importing into {me}", total=total)
        report = import_file(s, me, file, batch, lambda n: progress.advance(task, n))
    console.print(
        f"{me}: {report.imported} imported, {report.already} already there, "
        f"{len(report.errors)} refused, of {report.rows} rows"
    )
    if report.errors:
        out = errors or file.with_name(file.name + ".errors.jsonl")
        with out.open("w") as f:
            for number, why in report.errors:
                f.write(json.dumps({"row": number, "error": why}) + "\n")
        for number, why in report.errors[:20]:
            console.print(f"  row {number}: {text(why)}")
        if len(report.errors) > 20:
            console.print(f"  … {len(report.errors) - 20} more")
        console.print(f"every refused row: {out}")
        raise typer.Exit(1)


@app.command("export")
def gallery_export(
    file: Path = typer.Argument(..., dir_okay=False, help="the Parquet file to write"),
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Write the participant's own identities (not what partners sent) in the import
    format: what `gallery import` reads back."""
    who = acting(participant, "gallery export", operator)
    from sqlalchemy import func

    from biox.gallery.transfer import export_file
    from biox.store import Record

    me = code(participant)
    gallery = _snapshot(me)
    with session(participant) as s:
        total = s.exec(select(func.count()).where(Record.source == me)).one()
        # every template and name of the gallery leaves biox: recorded before it does
        audited_read(
            me,
            "gallery export",
            {"file": str(file.resolve())},
            total,
            who,
        )
        with _progress() as progress:
            task = progress.add_task(f"Exporting {me}", total=total)
            written = export_file(
                s, me, gallery, file, progress=lambda n: progress.advance(task, n)
            )
    console.print(f"{me}: {written} identities written to {file}")


@app.command("stats")
def gallery_stats(
    participant: Participant = PARTICIPANT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What the gallery holds: records by source, blocked, not releasable, and what the
    snapshot's indexes have per modality."""
    from biox.gallery.transfer import stats

    me = code(participant)
    with session(participant) as s:
        found = stats(s, _snapshot(me))
    if as_json:
        print(json.dumps(found, indent=2, default=str))
        return
    console.print(f"[bold]{me}[/]: {found['records']} records")
    for source, n in sorted(found["by_source"].items()):
        console.print(f"  from {source}: {n}")
    console.print(f"  blocked: {found['blocked']}, not releasable: {found['not_releasable']}")
    console.print(f"  templates kept in the database: {found['templates_kept_in_database']}")
    snap = found.get("snapshot")
    if snap:
        console.print(
            f"  snapshot ({snap['kind']}): face {snap['face']}, fingers "
            f"{snap['fingers']}, irises {snap['irises']}"
        )


@app.command("remove")
def gallery_remove(
    ref: str = typer.Argument(..., help="the identity_ref"),
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Take one of the participant's own identities out of its gallery: the record, its
    templates, and a tombstone every matcher applies (now, and after a restart). Data a
    partner sent is removed by that partner's deletion notice instead (§22)."""
    from biox.agreement.corrections import forget_records
    from biox.store import Record

    who = acting(participant, "gallery remove", operator)
    me = code(participant)

    with session(participant) as s:
        record = s.exec(select(Record).where(Record.identity_ref == ref)).first()
        if record is None:
            console.print(f"{me} has no identity {text(repr(ref))}")
            raise typer.Exit(1)
        if record.source != me:
            owner = record.source
            console.print(f"{text(ref)} came from {owner}: deleting it is {owner}'s notice (§22)")
            raise typer.Exit(2)
        forget_records(s, [record.id], f"gallery remove by {who}")
        s.commit()
    console.print(f"{me}: {text(ref)} removed; matchers drop it within BIOX_GALLERY_SYNC_S")
