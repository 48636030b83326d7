"""``biox notice``: the agreement's written notifications (§12-36, docs/workflows.md,
"Notices"), and how every command group sends one (``send_notice``)."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.agreement.ledgers import NoticeRow
from biox.agreement.quality import late_notices
from biox.broker.publisher import publish_once
from biox.cli.common import (
    PARTICIPANT,
    Participant,
    acting,
    amqp_url,
    audited_read,
    code,
    console,
    session,
    settings,
)
from biox.render import text
from biox.wire import codec
from biox.wire.messages import utcnow
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(help="Notices to and from partners (§12-36).", no_args_is_help=True)


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
    out = codec.from_person(ask, participant=me, actor=ask.actor)
    publish_once(amqp_url(), [out], name="biox-notice", tls=settings().client_tls())
    return codec.derived_id(out.envelope.message_id, "notice")


@app.command("send")
def notice_send(
    participant: Participant = PARTICIPANT,
    to: str = typer.Option(..., "--to", help="the partner it goes to"),
    type: NoticeType = typer.Option(..., "--type"),
    query: list[str] = typer.Option([], "--query", help="a query the data came in (repeat)"),
    message: list[str] = typer.Option([], "--message", help="a message that carried it"),
    ref: list[str] = typer.Option([], "--ref", help="a record it became (identity ref)"),
    note: str = typer.Option("", "--text", help="for the people who read it"),
    correct: list[str] = typer.Option([], "--correct", help="field=value (correction, addition)"),
    contact: list[str] = typer.Option([], "--contact", help="role=contact (contact_change)"),
    in_reply_to: str = typer.Option(None, "--in-reply-to", help="the notice answered"),
    consent: bool = typer.Option(None, "--consent/--no-consent", help="consent_reply"),
    disclose_to: str = typer.Option(
        None, "--disclose-to", help="consent_request: the third party the records would go to"
    ),
    disclose_purpose: str = typer.Option(
        None, "--disclose-purpose", help="consent_request: what it may use them for"
    ),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Send a notice; the partner's notice worker applies it and acknowledges."""
    who = acting(participant, "notice send", operator)
    me = code(participant)
    try:
        ask = NoticeSend(
            type=type,
            to=to,
            actor=who,
            text=note,
            about=About(query_ids=query, message_ids=message, identity_refs=ref),
            corrections=pairs(correct, "--correct"),
            contacts={k: v or "" for k, v in pairs(contact, "--contact").items()},
            in_reply_to=in_reply_to,
            consent=consent,
            disclose_to=disclose_to,
            disclose_purpose=disclose_purpose,
        )
    except ValueError as exc:
        console.print(f"[red]{text(exc)}[/]")
        raise typer.Exit(2) from exc
    nid = send_notice(me, ask)
    console.print(text(f"{type.value} notice {nid} to {to}: the notice worker sends it"))


@app.command("list")
def notice_list(
    participant: Participant = PARTICIPANT,
    as_json: bool = typer.Option(False, "--json"),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Every notice sent and received, with its deadline and what came of it (corrected
    values and consent details among it: the read is audited)."""
    who = acting(participant, "notice list", operator)
    with session(participant) as s:
        rows = s.exec(select(NoticeRow).order_by(col(NoticeRow.sent_at))).all()
    audited_read(
        code(participant),
        "notice list",
        {"json": as_json},
        len(rows),
        who,
    )
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(title=f"{code(participant)}: notices")
    for column in ("notice", "dir", "type", "partner", "sent", "respond by", "status", "done"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            text(r.notice_id),
            r.direction,
            r.type,
            r.partner,
            f"{r.sent_at:%Y-%m-%d %H:%M}",
            f"{r.respond_by:%Y-%m-%d}" if r.respond_by else "",
            r.status,
            text(json.dumps(r.done) if r.done else ""),
        )
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
