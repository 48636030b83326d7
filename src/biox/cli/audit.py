"""``biox audit``: the hash-chained audit trail (docs/operations.md)."""

from __future__ import annotations

import typer

from biox import audit
from biox.cli.common import Participant, console, settings, text
from biox.cli.render import trail_table
from biox.registry import Registry
from biox.store import session_for

app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)


@app.command("verify")
def audit_verify(
    participant: list[Participant] = typer.Option(None, "--participant", "-p", help="default: all"),
) -> None:
    """Walk each participant's chain and name the first altered, removed or inserted entry."""
    s = settings()
    codes = [getattr(p, "value", p) for p in participant or []] or Registry.load(s.registry).codes
    broken = False
    for code in codes:
        with session_for(s.database_for(code)) as db:
            count, problem = audit.verify(db)
        if problem is None:
            console.print(f"{code}: {count} entries, chain intact")
        else:
            broken = True
            console.print(f"[red]{code}: {count} entries, chain broken at {problem}[/]")
    raise typer.Exit(1 if broken else 0)


@app.command("trail")
def audit_trail(query_id: str) -> None:
    """The timeline of one query across participants, from their audit trails."""
    rows = audit.trail_across(settings(), query_id)
    if not rows:
        console.print(f"no audit entries for {text(query_id)}")
        raise typer.Exit(1)
    console.print(trail_table(query_id, rows))
