"""``biox notice``: the agreement's written notifications (§12-36, docs/workflows.md,
"Notices"); ``biox retention``: the purge (§21); ``biox incident``: the 48-hour notices
(§17)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.agreement import disclosures, incidents, retention
from biox.agreement.ledgers import DisclosureRow, IncidentRow, NoticeRow
from biox.agreement.quality import late_notices
from biox.broker.deadletters import operator as default_operator
from biox.broker.publisher import publish_once
from biox.cli.common import PARTICIPANT, Participant, amqp_url, code, console, session, settings
from biox.handlers.notice import purge_event
from biox.render import text
from biox.store import Record
from biox.wire import codec
from biox.wire.messages import utcnow
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(help="Notices to and from partners (§12-36).", no_args_is_help=True)
retention_app = typer.Typer(
    help="Retention (§21): purge what is past its date.", no_args_is_help=True
)
incident_app = typer.Typer(help="Incidents and their 48-hour notices (§17).", no_args_is_help=True)


def pairs(values: list[str], what: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            console.print(f"[red]{what} takes field=value, got {text(v)!r}[/]")
            raise typer.Exit(2)
        out[key.strip()] = value.strip() or None
    return out


def send_notice(me: str, ask: NoticeSend) -> str:
    """Publishes the request to our notice worker; returns the notice id it will carry."""
    mid = str(uuid.uuid4())
    out = codec.to_own_inbox(ask, participant=me, message_id=mid, correlation_id=mid)
    publish_once(
        amqp_url(), [codec.with_actor(out, ask.actor)], name="biox-notice",
        tls=settings().client_tls(),
    )  # fmt: skip
    return codec.derived_id(mid, "notice")


@app.command("send")
def notice_send(
    participant: Participant = PARTICIPANT,
    to: str = typer.Option(..., "--to", help="the partner it goes to"),
    type: NoticeType = typer.Option(..., "--type"),
    query: list[str] = typer.Option([], "--query", help="a query the data came in (repeat)"),
    message: list[str] = typer.Option([], "--message", help="a message that carried it"),
    ref: list[str] = typer.Option([], "--ref", help="a record it became (identity ref)"),
    note: str = typer.Option("", "--text", help="for the people who read it"),
    correct: list[str] = typer.Option([], "--correct", help="field=value (correction)"),
    contact: list[str] = typer.Option([], "--contact", help="role=contact (contact_change)"),
    in_reply_to: str = typer.Option(None, "--in-reply-to", help="the notice answered"),
    consent: bool = typer.Option(None, "--consent/--no-consent", help="consent_reply"),
    operator: str = typer.Option(None, "--operator", help="default: user@host"),
) -> None:
    """Send a notice; the partner's notice worker applies it and acknowledges."""
    me = code(participant)
    try:
        ask = NoticeSend(
            type=type, to=to, actor=operator or default_operator(), text=note,
            about=About(query_ids=query, message_ids=message, identity_refs=ref),
            corrections=pairs(correct, "--correct"),
            contacts={k: v or "" for k, v in pairs(contact, "--contact").items()},
            in_reply_to=in_reply_to, consent=consent,
        )  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]{text(exc)}[/]")
        raise typer.Exit(2) from exc
    nid = send_notice(me, ask)
    console.print(text(f"{type.value} notice {nid} to {to}: the notice worker sends it"))


@app.command("list")
def notice_list(
    participant: Participant = PARTICIPANT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every notice sent and received, with its deadline and what came of it."""
    with session(participant) as s:
        rows = s.exec(select(NoticeRow).order_by(col(NoticeRow.sent_at))).all()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(title=f"{code(participant)}: notices")
    for column in ("notice", "dir", "type", "partner", "sent", "respond by", "status", "done"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            text(r.notice_id), r.direction, r.type, r.partner, f"{r.sent_at:%Y-%m-%d %H:%M}",
            f"{r.respond_by:%Y-%m-%d}" if r.respond_by else "", r.status,
            text(json.dumps(r.done) if r.done else ""),
        )  # fmt: skip
    console.print(table)


@app.command("overdue")
def notice_overdue(participant: Participant = PARTICIPANT) -> None:
    """Exits 1 when a notice is past its date without an answer (§22-24, §15)."""
    with session(participant) as s:
        late = late_notices(list(s.exec(select(NoticeRow))), utcnow())
    for r in late:
        console.print(
            text(f"{r.notice_id}: {r.type} {r.direction} {r.partner}, due {r.respond_by}")
        )
    raise typer.Exit(1 if late else 0)


# --- retention -------------------------------------------------------------------------------


@retention_app.command("purge")
def retention_purge(
    participant: Participant = PARTICIPANT,
    dry_run: bool = typer.Option(False, "--dry-run", help="count, remove nothing"),
    operator: str = typer.Option(None, "--operator", help="default: user@host"),
) -> None:
    """Remove every row past its retention date, from every table and every matcher's
    index; the audit trail records the counts (not with --dry-run)."""
    me = code(participant)
    with session(participant) as s:
        counts = retention.purge(s, utcnow(), settings().marker_retention_days, dry_run=dry_run)
        table = Table(title=f"{me}: {'would purge' if dry_run else 'purged'}")
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, n in sorted(counts.items()):
            table.add_row(name, str(n))
        console.print(table if counts else "nothing is past its retention date")
        if dry_run or not counts:
            return
        s.commit()
    who = operator or default_operator()
    publish_once(amqp_url(), [purge_event(me, counts, who)], name="biox-retention",
                 tls=settings().client_tls())  # fmt: skip


# --- incidents -------------------------------------------------------------------------------


@incident_app.command("open")
def incident_open(
    participant: Participant = PARTICIPANT,
    summary: str = typer.Option(..., "--summary"),
    partner: list[str] = typer.Option(..., "--partner", help="whose data it touched (repeat)"),
    aware_at: datetime = typer.Option(None, "--aware-at", help="when we learned of it (UTC)"),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Record an incident; the 48 hours run from when we became aware (§17)."""
    at = (aware_at or utcnow()).replace(tzinfo=(aware_at.tzinfo if aware_at else None) or UTC)
    with session(participant) as s:
        row = incidents.open_incident(s, summary, partner, at, operator or default_operator())
        s.commit()
        console.print(text(f"{row.incident_id}: notify {', '.join(row.partners)} "
                           f"by {incidents.deadline(row):%Y-%m-%d %H:%M} UTC"))  # fmt: skip


@incident_app.command("notify")
def incident_notify(
    participant: Participant = PARTICIPANT,
    incident: str = typer.Argument(...),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Send the incident notice to every affected partner not yet told."""
    me = code(participant)
    with session(participant) as s:
        row = s.get(IncidentRow, incident)
        if row is None:
            console.print(f"[red]no incident {text(incident)}[/]")
            raise typer.Exit(1)
        for partner in incidents.waiting(row):
            who = operator or default_operator()
            ask = NoticeSend(type=NoticeType.incident, to=partner, actor=who, text=row.summary)
            incidents.notified(row, partner, send_notice(me, ask))
            s.add(row)
            s.commit()
            console.print(text(f"{row.incident_id}: notice sent to {partner}"))


@incident_app.command("list")
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
            ",".join(r.partners), ",".join(sorted(r.notified)), text(r.summary),
        )  # fmt: skip
    console.print(table)


@incident_app.command("overdue")
def incident_overdue(participant: Participant = PARTICIPANT) -> None:
    """Exits 1 when a partner has waited more than 48 hours for an incident notice."""
    with session(participant) as s:
        late = incidents.overdue(s, utcnow())
    for item in late:
        hours = item.overdue_by.total_seconds() / 3600
        console.print(text(f"{item.incident.incident_id}: {item.partner} not notified, "
                           f"{hours:.1f} h past the 48-hour deadline (§17)"))  # fmt: skip
    raise typer.Exit(1 if late else 0)


# --- disclosures outside the exchange (§14-15) -------------------------------------------------

disclosure_app = typer.Typer(
    help="Disclosures outside the exchange (§14-15), logged.", no_args_is_help=True
)


@disclosure_app.command("record")
def disclosure_record(
    participant: Participant = PARTICIPANT,
    ref: str = typer.Option(..., "--ref", help="the record disclosed (identity ref)"),
    to: str = typer.Option(..., "--to", help="who receives it: a court, an agency, a state"),
    basis: str = typer.Option(..., "--basis", help="consent (§15) | compelled (§14)"),
    consent: str = typer.Option(None, "--consent", help="our consent request, answered yes"),
    note: str = typer.Option("", "--text", help="the legal instrument, for the notice"),
    operator: str = typer.Option(None, "--operator"),
) -> None:
    """Log a disclosure: partner data needs the partner's consent, or, when the law
    compels it, a notice to the partner first (sent here)."""
    me, who = code(participant), operator or default_operator()
    with session(participant) as s:
        rec = s.exec(select(Record).where(Record.identity_ref == ref)).first()
        notice = consent
        if rec is not None and rec.source != me and basis == "compelled":
            ask = NoticeSend(type=NoticeType.compelled_disclosure, to=rec.source, actor=who,
                             about=About(identity_refs=[ref]), text=f"to {to}: {note}")  # fmt: skip
            notice = send_notice(me, ask)
        try:
            row = disclosures.record(s, me, ref, to, basis, who, notice)
        except disclosures.NotAllowed as exc:
            console.print(f"[red]{text(exc)}[/]")
            raise typer.Exit(1) from exc
        s.commit()
        console.print(text(f"logged: {ref} ({row.source}'s) to {to}, {row.basis}"))


@disclosure_app.command("list")
def disclosure_list(participant: Participant = PARTICIPANT) -> None:
    with session(participant) as s:
        rows = s.exec(select(DisclosureRow).order_by(col(DisclosureRow.at))).all()
    table = Table(title=f"{code(participant)}: disclosures outside the exchange")
    for column in ("when", "record", "from", "to", "basis", "notice", "by"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"{r.at:%Y-%m-%d %H:%M}", text(r.identity_ref), r.source, text(r.recipient),
                      r.basis, text(r.notice_id or ""), text(r.by))  # fmt: skip
    console.print(table)
