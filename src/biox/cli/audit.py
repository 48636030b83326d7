"""``biox audit``: verify the hash chains (against partners' checkpoints), trace a query."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from sqlmodel import col, select

from biox.cli.common import Participant, console, settings
from biox.database import every_participant, session_for
from biox.registry import Registry
from biox.render import text, trail_table
from biox.store import AuditEntry
from biox.trust import audit, checkpoints
from biox.trust.checkpoints import Held
from biox.trust.sealing import Trust, trust_path
from biox.wire.messages import AuditCheckpoint

app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)


@app.command("verify")
def audit_verify(
    participant: list[Participant] = typer.Option(None, "--participant", "-p", help="default: all"),
    checkpoint_file: list[Path] = typer.Option(
        None,
        "--checkpoints",
        help="checkpoints a partner exported (`biox audit checkpoints`), JSON lines",
    ),
) -> None:
    """Walk each participant's chain, name the first altered, removed or inserted entry,
    and check it against the signed checkpoints its partners hold: a truncated tail or a
    chain rewritten and re-hashed is named too."""
    s = settings()
    codes_all = Registry.load(s.registry).codes
    codes = [getattr(p, "value", p) for p in participant or []] or codes_all
    trust = Trust.load(trust_path(s.keys()))
    from_files = [
        Held(f"file {f.name}", AuditCheckpoint.model_validate_json(line))
        for f in checkpoint_file or []
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    broken = False
    for code in codes:
        with session_for(s.database_for(code)) as db:
            count, problem = audit.verify(db)
            entries = list(db.exec(select(AuditEntry).order_by(col(AuditEntry.seq))))
        held = [h for h in from_files if h.checkpoint.participant == code]
        for partner in codes_all:
            if partner != code and _local(s.database_for(partner)):
                with session_for(s.database_for(partner)) as db:
                    held += checkpoints.held_in(db, partner, code)
        forged = [h for h in held if not checkpoints.genuine(trust, h.checkpoint)]
        held = [h for h in held if h not in forged]
        problems = checkpoints.against(entries, held)
        if problem is not None:
            problems.insert(0, f"chain broken at {problem}")
        for h in forged:
            problems.append(f"a checkpoint held by {h.holder} is not signed by {code}: ignored")
        newest = max((h.checkpoint.seq for h in held), default=None)
        anchored = (
            f"{len(held)} checkpoints, newest at entry {newest}" if held else "no checkpoints"
        )
        if problems:
            broken = True
            console.print(f"[red]{code}: {count} entries ({anchored})[/]")
            for p in problems:
                console.print(f"  [red]{text(p)}[/]")
        else:
            console.print(f"{code}: {count} entries, chain intact ({anchored})")
    raise typer.Exit(1 if broken else 0)


@app.command("checkpoints")
def audit_checkpoints(
    participant: Participant = typer.Option(..., "--participant", "-p", help="the holder"),
    of: str = typer.Option(None, help="only the checkpoints of this participant"),
) -> None:
    """The signed checkpoints a participant holds of its partners' chains, JSON lines (for
    the partner's `biox audit verify --checkpoints FILE`)."""
    s = settings()
    me = getattr(participant, "value", participant)
    others = [of] if of else [c for c in Registry.load(s.registry).codes if c != me]
    with session_for(s.database_for(me)) as db:
        for about in others:
            for h in checkpoints.held_in(db, me, about):
                print(json.dumps(h.checkpoint.model_dump(mode="json")))


def _local(url: str) -> bool:
    """A partner's database this machine can read: a SQLite file that exists (never
    created by looking), or a server database."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).exists()
    return True


@app.command("trail")
def audit_trail(query_id: str) -> None:
    """The timeline of one query across participants, from their audit trails."""
    with every_participant(settings()) as sessions:
        rows = audit.trail_across(sessions, query_id)
    if not rows:
        console.print(f"no audit entries for {text(query_id)}")
        raise typer.Exit(1)
    console.print(trail_table(query_id, rows))
