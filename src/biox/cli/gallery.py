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


def _holding(participant: str):  # type: ignore[no-untyped-def]
    """The snapshot that holds each record: with BIOX_SHARDS above 1, its shard's."""
    from biox.gallery.gallery import Gallery
    from biox.gallery.shards import Shard

    s = settings()
    if s.shards == 1:
        return _snapshot(participant)
    base = s.gallery_dir(participant)
    parts = [
        Gallery.load(d, s.ivf_nprobe) if Gallery.exists(d := sh.directory(base)) else None
        for sh in Shard.all_of(s.shards)
    ]
    return lambda rid: parts[rid % s.shards]


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
    them up within BIOX_GALLERY_SYNC_S. The gallery snapshot is then brought up to date,
    so a matcher started later loads them in seconds instead of reading each row again.
    Run it again after an interruption: identities already present are skipped. Exit 1
    if any row was refused."""
    from biox.gallery import snapshot
    from biox.gallery.transfer import FileError, check_file, import_file

    me = code(participant)
    try:
        total, unread = check_file(file)
    except FileError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if unread:
        console.print(f"[yellow]columns not read (docs/gallery.md): {', '.join(unread)}[/]")
    with _progress() as progress, session(participant) as s:
        task = progress.add_task(f"Importing into {me}", total=total)
        report = import_file(s, me, file, batch, lambda n: progress.advance(task, n))
    console.print(
        f"{me}: {report.imported} imported, {report.already} already there, "
        f"{len(report.errors)} refused, of {report.rows} rows"
    )
    with console.status("Bringing the gallery snapshot up to date"), session(participant) as s:
        done = snapshot.refresh_all(s, settings().gallery_dir(me), settings(), create=True)
    if done is not None:
        console.print(f"{me}: snapshot updated, {done.added} added, {done.removed} removed")
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


@app.command("split")
def gallery_split(
    participant: Participant = PARTICIPANT,
    shards: int = typer.Option(
        None, "--shards", min=2, max=64, help="how many shards (default: BIOX_SHARDS)"
    ),
) -> None:
    """Split the gallery snapshot into one snapshot per shard (gallery/shard-I-of-N/),
    for the shard workers of BIOX_SHARDS=N (docs/architecture.md, "Shards"). Reads each
    template once and holds one shard at a time. The whole snapshot stays, and every
    purge keeps it current, until you remove it."""
    from biox.gallery import snapshot

    s = settings()
    me = code(participant)
    n = shards or s.shards
    if n < 2:
        console.print("[red]nothing to split into[/]: give --shards N, or set BIOX_SHARDS")
        raise typer.Exit(2)
    directory = s.gallery_dir(me)
    whole = _snapshot(me)
    if whole is None:
        console.print(f"[red]{me} has no gallery snapshot in {directory}[/]: import first")
        raise typer.Exit(2)
    with _progress() as progress:
        task = progress.add_task(f"Splitting {me} into {n}", total=whole.face.ntotal)
        sizes = snapshot.split_snapshot(
            directory, n, s, progress=lambda k: progress.advance(task, k)
        )
    for i, size in enumerate(sizes):
        console.print(f"  shard {i}: {size} identities")
    console.print(
        f"{me}: {n} shard snapshots in {directory}; with BIOX_SHARDS={n}, run one "
        "`biox worker shard --shard I` for each (`biox serve` starts them)"
    )


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
    gallery = _holding(me)
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
            try:
                written = export_file(
                    s, me, gallery, file, progress=lambda n: progress.advance(task, n)
                )
            except ValueError as exc:  # a record whose templates no snapshot holds
                console.print(f"[red]{exc}[/]")
                raise typer.Exit(1) from exc
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


def calibrate(
    participant: Participant = PARTICIPANT,
    scores: Path | None = typer.Option(
        None,
        help="a score file from your own algorithm (CSV or Parquet: probe_id, candidate_id, "
        "modality, score, mated; docs/matching.md); without it, the hard synthetic population",
    ),
    searched: int | None = typer.Option(
        None, help="with --scores: the gallery size each probe was searched against"
    ),
    size: int = typer.Option(10_000, help="synthetic: the calibration gallery's size"),
    mated: int = typer.Option(2000, help="synthetic: mated probes"),
    non_mated: int = typer.Option(12_000, help="synthetic: non-mated probes"),
    seed: int = typer.Option(2026, help="synthetic: the population's seed"),
    fpir_match: float = typer.Option(0.001, help="FPIR of the match threshold"),
    fpir_review: float = typer.Option(0.01, help="FPIR of the review threshold (below: no match)"),
    method: str = typer.Option("logistic", help="logistic (floored), or isotonic"),
    out: Path | None = typer.Option(None, help="default: BIOX_CALIBRATION, else the data dir's"),
    keep_scores: Path | None = typer.Option(None, help="synthetic: also write the score file"),
) -> None:
    """Fit score to log-likelihood ratio per modality, and thresholds for a target FPIR at
    any gallery size; the matchers load the file and reload it when it changes."""
    from biox.gallery.calibration import CalibrationError, ScoreTable, fit

    me = code(participant)
    if not 0 < fpir_match < fpir_review < 1:
        console.print("[red]need 0 < --fpir-match < --fpir-review < 1[/]")
        raise typer.Exit(2)
    try:
        if scores is not None:
            if not searched:
                console.print("[red]--scores needs --searched: the gallery size searched[/]")
                raise typer.Exit(2)
            table, source = ScoreTable.read(scores), f"score file {scores.name}"
        else:
            table, searched = _synthetic(size, mated, non_mated, seed), size
            source = f"hard synthetic population, seed {seed}, {size} identities"
            if keep_scores is not None:
                table.write(keep_scores)
        calibration = fit(table, searched, fpir_match, fpir_review, source, method)
    except CalibrationError as exc:
        console.print(f"[red]{text(str(exc))}[/]")
        raise typer.Exit(1) from None
    path = out or settings().calibration_file(me)
    calibration.save(path)
    console.print(f"wrote {path} ({source})")
    for modality, m in calibration.maps.items():
        console.print(
            f"  {modality:<7} log-LR from {m.ys[0]:+.1f} (score <= {m.xs[0]:.3f})"
            f" to {m.ys[-1]:+.1f} (score >= {m.xs[-1]:.3f}), {len(m.xs)} points"
        )
    snapshot = _snapshot(me)
    sizes = sorted({searched, 100_000, 1_000_000} | ({snapshot.size} if snapshot else set()))
    for n in sizes:
        high, low = calibration.thresholds(n)
        mark = "  (this gallery)" if snapshot and n == snapshot.size else ""
        console.print(f"  {n:>9,} identities: match >= {high:.2f}, review >= {low:.2f}{mark}")


def _synthetic(size: int, mated: int, non_mated: int, seed: int):  # type: ignore[no-untyped-def]
    from biox.gallery.gallery import Gallery
    from biox.sim.population import Population, build, score_table

    population = Population(seed)
    with _progress() as bar:
        task = bar.add_task("building the calibration gallery", total=3)
        truth = population.truth(size)
        gallery = Gallery("flat")
        build(population, truth, gallery)
        bar.advance(task)
        bar.update(task, description=f"searching {mated + non_mated:,} probes")
        sample = population.probes(truth, mated, non_mated, stream=1)
        bar.advance(task)
        table = score_table(gallery, sample, settings().candidates, seed)
        bar.advance(task)
    return table
