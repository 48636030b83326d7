"""``biox subject``: a person's requests about the data kept on them (§25)."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from sqlmodel import select

from biox.agreement import corrections, subjects
from biox.cli.common import PARTICIPANT, Participant, acting, audited_read, code, console, session
from biox.cli.notice import pairs, send_notice
from biox.render import text
from biox.store import Record
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(
    help="Subject requests: access, notation, correction (§25).", no_args_is_help=True
)


@app.command("search")
def subject_search(
    participant: Participant = PARTICIPANT,
    name: str = typer.Option(None, "--name", help="part of a family or given name"),
    dob: str = typer.Option(None, "--dob", help="date of birth, or its start (1990-05)"),
    document: str = typer.Option(None, "--document", help="document number, exactly"),
    ref: str = typer.Option(None, "--ref", help="identity ref, query, encounter or case id"),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Everything kept about a person, each row with where it came from (§20, §25)."""
    who = acting(participant, "subject search", operator)
    terms = subjects.Terms(name, dob, document, ref)
    if terms.empty():
        console.print("[red]give at least one of --name, --dob, --document, --ref[/]")
        raise typer.Exit(2)
    me = code(participant)
    with session(participant) as s:
        found = subjects.search(s, terms)
    audited_read(me, "subject search", terms.__dict__, len(found), who)
    if as_json:
        print(json.dumps([f.__dict__ for f in found], default=str, indent=2))
        return
    table = Table(title=f"{me}: kept about {text(terms.__dict__)}")
    for column in ("table", "key", "from", "retain until", "blocked", "biographic", "notes"):
        table.add_column(column)
    for f in found:
        table.add_row(
            f.table,
            text(f.key),
            text(f.source or me),
            f"{f.retain_until or ''}",
            "blocked" if f.blocked else "",
            text(json.dumps(f.biographic)),
            text("; ".join(f.notes)),
        )
    console.print(table if found else f"{me} keeps nothing that fits")


@app.command("note")
def subject_note(
    participant: Participant = PARTICIPANT,
    table: str = typer.Option(..., "--table", help="as subject search shows it"),
    key: str = typer.Option(..., "--key"),
    note: str = typer.Option(..., "--text"),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Add a notation to a kept row: that its subject asked, and what was done (§25)."""
    who = acting(participant, "subject note", operator)
    with session(participant) as s:
        subjects.note(s, table, key, note, who)
        s.commit()
    console.print(text(f"noted on {table} {key}"))


@app.command("correct")
def subject_correct(
    participant: Participant = PARTICIPANT,
    ref: str = typer.Option(..., "--ref", help="the gallery record's identity ref"),
    field: list[str] = typer.Option(..., "--set", help="field=value (empty removes it)"),
    why: str = typer.Option("", "--text", help="what the subject said"),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """A subject's correction request: our own data is corrected at once; data a partner
    sent goes to that partner as a correction request, and the record carries a notation."""
    who = acting(participant, "subject correct", operator)
    me = code(participant)
    changes = pairs(field, "--set")
    with session(participant) as s:
        record = s.exec(select(Record).where(Record.identity_ref == ref)).first()
        if record is None:
            console.print(f"[red]{me} keeps no record {text(ref)}[/]")
            raise typer.Exit(1)
        about = About(identity_refs=[ref])
        if record.source == me:
            corrections.correct_from(s, me, about, changes)
            subjects.note(s, "records", ref, f"corrected at the subject's request: {why}", who)
            s.commit()
            console.print(text(f"corrected {ref}"))
            return
        subjects.note(s, "records", ref, f"correction requested of {record.source}: {why}", who)
        s.commit()
    ask = NoticeSend(
        type=NoticeType.correction_request,
        to=record.source,
        actor=who,
        text=why,
        about=about,
        corrections=changes,
    )
    nid = send_notice(me, ask)
    console.print(text(f"{ref} came from {record.source}: correction request {nid} sent"))
