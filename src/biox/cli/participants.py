"""``biox participants``: who takes part, whether each has commenced, and our notice
that we are ready (§12, §34, §36; docs/lifecycle.md, "Participants' status")."""

from __future__ import annotations

import typer
from rich.table import Table
from sqlmodel import select

from biox.agreement import participants
from biox.cli.common import PARTICIPANT, Participant, acting, code, console, session, settings
from biox.cli.notice import send_notice
from biox.registry import Registry, Status
from biox.render import text
from biox.store import ParticipantRow

app = typer.Typer(
    help="Participants' status (§34 readiness, §36 discontinuation).", no_args_is_help=True
)


@app.command("list")
def participants_list(participant: Participant = PARTICIPANT) -> None:
    """Each participant's status as this participant's database holds it, and since when.
    A pair exchanges queries only once both are active there (§34)."""
    me = code(participant)
    registry = Registry.load(settings().registry)
    with session(participant) as s:
        participants.sync(s, registry)
        rows = {r.code: r for r in s.exec(select(ParticipantRow))}
        table = Table(title=f"Participants, as {me} holds them")
        for col in ("code", "status", "since", "agreement with " + me):
            table.add_column(col)
        for c in registry.codes:
            row = rows.get(c)
            status = row.status if row else "?"
            when = participants.since(s, c, Status(status)) if row else None
            agreed = "(self)" if c == me else ("yes" if c in registry.linked(me) else "no")
            table.add_row(c, status, str(when or ""), agreed)
    console.print(table)


@app.command("ready")
def participants_ready(
    participant: Participant = PARTICIPANT,
    to: list[str] = typer.Option([], "--to", help="only this partner (repeatable)"),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Tell each partner with an agreement that we are prepared to begin operations (§34).
    We are active from our notice on; a partner is, for us, from its own."""
    who = acting(participant, "participants ready", operator)
    me = code(participant)
    try:
        asks = participants.readiness(Registry.load(settings().registry), me, who, to)
    except ValueError as e:
        console.print(f"[red]{text(str(e))}[/]")
        raise typer.Exit(2) from None
    for ask in asks:
        notice_id = send_notice(me, ask)
        console.print(text(f"{me} → {ask.to}: readiness {notice_id}"))
    console.print(
        "Queries flow with each partner once its own readiness has reached us: "
        f"biox participants list -p {me}"
    )
