"""``biox records``: what a participant keeps, and where it came from (§20-21)."""

from __future__ import annotations

import typer

from biox.agreement.provenance import holdings
from biox.broker.deadletters import operator as default_operator
from biox.cli.common import PARTICIPANT, Participant, audited_read, code, console, session
from biox.render import section_table, text

app = typer.Typer(help="Data kept from other participants (§20-21).", no_args_is_help=True)


@app.command("show")
def records_show(
    ref: str = typer.Argument(..., help="identity ref, query id or encounter id"),
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(None, "--operator", help="default: user@host"),
) -> None:
    """Everything kept under REF, each piece with where it came from (§20)."""
    with session(participant) as s:
        found = holdings(s, code(participant), ref)
    who = operator or default_operator()
    audited_read(code(participant), "records show", {"ref": ref}, len(found), who)
    if not found:
        console.print(f"{code(participant)} keeps nothing under {text(repr(ref))}")
        raise typer.Exit(1)
    for section in found:
        console.print(section_table(section))
