"""``biox incident``: incidents and the notices owed within 48 hours of becoming aware
(§17)."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.agreement import incidents
from biox.agreement.ledgers import IncidentRow
from biox.cli.common import PARTICIPANT, Participant, acting, code, console, session
from biox.cli.notice import send_notice
from biox.render import text
from biox.wire.fields import as_utc
from biox.wire.messages import utcnow
from biox.wire.notices import NoticeSend, NoticeType

app = typer.Typer(help="Incidents and their 48-hour notices (§17).", no_args_is_help=True)


@app.command("open")
def incident_open(
    participant: Participant = PARTICIPANT,
    summary: str = typer.Option(..., "--summary"),
    partner: list[str] = typer.Option(..., "--partner", help="whose data it touched (repeat)"),
    aware_at: datetime = typer.Option(None, "--aware-at", help="when we learned of it (UTC)"),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Record an incident; the 48 hours run from when we became aware (§17)."""
    who = acting(participant, "incident open", operator)
    at = as_utc(aware_at) if aware_at else utcnow()
    with session(participant) as s:
        row = incidents.open_incident(s, summary, partner, at, who)
        s.commit()
        console.print(
            text(
                f"{row.incident_id}: notify {', '.join(row.partners)} "
                f"by {incidents.deadline(row):%Y-%m-%d %H:%M} UTC"
            )
        )


@app.command("notify")
def incident_notify(
    participant: Participant = PARTICIPANT,
    incident: str = typer.Argument(...),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Send the incident notice to every affected partner not yet told."""
    who = acting(participant, "incident notify", operator)
    me = code(participant)
    with session(participant) as s:
        row = s.get(IncidentRow, incident)
        if row is None:
            console.print(f"[red]no incident {text(incident)}[/]")
            raise typer.Exit(1)
        for partner in incidents.waiting(row):
            ask = NoticeSend(type=NoticeType.incident, to=partner, actor=who, text=row.summary)
            incidents.notified(row, partner, send_notice(me, ask))
            s.add(row)
            s.commit()
            console.print(text(f"{row.incident_id}: notice sent to {partner}"))


@app.command("list")
def incident_list(participant: Participant = PARTICIPANT) -> None:
    with session(participant) as s:
        rows = s.exec(select(IncidentRow).order_by(col(IncidentRow.aware_at))).all()
    table = Table(title=f"{code(participant)}: incidents")
    for column in ("incident", "aware", "deadline", "partners", "notified", "summary"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r.incident_id,
            f"{r.aware_at:%Y-%m-%d %H:%M}",
            f"{incidents.deadline(r):%Y-%m-%d %H:%M}",
            ",".join(r.partners),
            ",".join(sorted(r.notified)),
            text(r.summary),
        )
    console.print(table)


@app.command("overdue")
def incident_overdue(participant: Participant = PARTICIPANT) -> None:
    """Exits 1 when a partner has waited more than 48 hours for an incident notice."""
    with session(participant) as s:
        late = incidents.overdue(s, utcnow())
    for item in late:
        hours = item.overdue_by.total_seconds() / 3600
        console.print(
            text(
                f"{item.incident.incident_id}: {item.partner} not notified, "
                f"{hours:.1f} h past the 48-hour deadline (§17)"
            )
        )
    raise typer.Exit(1 if late else 0)
