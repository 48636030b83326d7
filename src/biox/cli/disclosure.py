"""``biox disclosure``: disclosures outside the exchange (§14-15), logged, with the
partner's consent or a notice first when the law compels them."""

from __future__ import annotations

import time

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.agreement import disclosures
from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.cli.common import PARTICIPANT, Participant, acting, audited_read, code, console, session
from biox.cli.notice import send_notice
from biox.render import text
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(help="Disclosures outside the exchange (§14-15), logged.", no_args_is_help=True)


@app.command("record")
def disclosure_record(
    participant: Participant = PARTICIPANT,
    ref: str = typer.Option(..., "--ref", help="the record disclosed (identity ref)"),
    to: str = typer.Option(..., "--to", help="who receives it: a court, an agency, a state"),
    basis: str = typer.Option(..., "--basis", help="consent (§15) | compelled (§14)"),
    consent: str = typer.Option(None, "--consent", help="our consent request, answered yes"),
    purpose: str = typer.Option(None, "--purpose", help="what the recipient may use it for"),
    note: str = typer.Option("", "--text", help="the legal instrument, for the notice"),
    operator: str = typer.Option(None, "--operator"),
    wait: float = typer.Option(30.0, "--wait", help="seconds to wait for the notice to go"),
) -> None:
    """Log a disclosure: partner data needs the partner's consent to this record, this
    recipient and this purpose, or, when the law compels it, a notice to the partner
    first (sent here, and waited for until our notice worker has sent it)."""
    who = acting(participant, "disclosure record", operator)
    me = code(participant)
    with session(participant) as s:
        source = disclosures.source_of(s, ref)
    notice = consent
    if source is not None and source != me and basis == "compelled":
        ask = NoticeSend(
            type=NoticeType.compelled_disclosure,
            to=source,
            actor=who,
            about=About(identity_refs=[ref]),
            disclose_to=to,
            text=f"to {to}: {note}",
        )
        notice = send_notice(me, ask)
        if not _sent(participant, notice, wait):
            console.print(f"[red]notice {notice} not sent within {wait:.0f} s: nothing logged[/]")
            raise typer.Exit(1)
    with session(participant) as s:
        try:
            row = disclosures.record(s, me, ref, to, basis, who, notice, purpose)
        except disclosures.NotAllowed as exc:
            console.print(f"[red]{text(exc)}[/]")
            raise typer.Exit(1) from exc
        s.commit()
        console.print(text(f"logged: {ref} ({row.source}'s) to {to}, {row.basis}"))


def _sent(participant: Participant, notice_id: str, wait: float) -> bool:
    """Whether our notice worker has logged the notice as sent, waiting up to ``wait``."""
    deadline = time.monotonic() + wait
    while True:
        with session(participant) as s:
            if s.get(NoticeRow, notice_id) is not None:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@app.command("list")
def disclosure_list(
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Every disclosure logged, with its basis (the read is audited)."""
    who = acting(participant, "disclosure list", operator)
    with session(participant) as s:
        rows = s.exec(select(DisclosureRow).order_by(col(DisclosureRow.at))).all()
    audited_read(code(participant), "disclosure list", {}, len(rows), who)
    table = Table(title=f"{code(participant)}: disclosures outside the exchange")
    for column in ("when", "record", "from", "to", "basis", "purpose", "notice", "by"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M}",
            text(r.identity_ref),
            r.source,
            text(r.recipient),
            r.basis,
            text(r.purpose or ""),
            text(r.notice_id or ""),
            text(r.by),
        )
    console.print(table)
