"""``biox disclosure``: disclosures outside the exchange (§14-15), logged, with the
partner's consent or a notice first when the law compels them."""

from __future__ import annotations

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.agreement import disclosures
from biox.agreement.ledgers import DisclosureRow
from biox.broker.deadletters import operator as default_operator
from biox.cli.common import PARTICIPANT, Participant, code, console, session
from biox.cli.notice import send_notice
from biox.render import text
from biox.store import Record
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(help="Disclosures outside the exchange (§14-15), logged.", no_args_is_help=True)


@app.command("record")
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
            ask = NoticeSend(
                type=NoticeType.compelled_disclosure,
                to=rec.source,
                actor=who,
                about=About(identity_refs=[ref]),
                text=f"to {to}: {note}",
            )
            notice = send_notice(me, ask)
        try:
            row = disclosures.record(s, me, ref, to, basis, who, notice)
        except disclosures.NotAllowed as exc:
            console.print(f"[red]{text(exc)}[/]")
            raise typer.Exit(1) from exc
        s.commit()
        console.print(text(f"logged: {ref} ({row.source}'s) to {to}, {row.basis}"))


@app.command("list")
def disclosure_list(participant: Participant = PARTICIPANT) -> None:
    with session(participant) as s:
        rows = s.exec(select(DisclosureRow).order_by(col(DisclosureRow.at))).all()
    table = Table(title=f"{code(participant)}: disclosures outside the exchange")
    for column in ("when", "record", "from", "to", "basis", "notice", "by"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M}",
            text(r.identity_ref),
            r.source,
            text(r.recipient),
            r.basis,
            text(r.notice_id or ""),
            text(r.by),
        )
    console.print(table)
