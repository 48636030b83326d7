"""``biox records``: what a participant keeps, and where it came from (§20-21)."""

from __future__ import annotations

import typer

from biox.agreement import corrections, disclosures, subjects
from biox.agreement.provenance import holdings
from biox.cli.common import PARTICIPANT, Participant, acting, audited_read, code, console, session
from biox.cli.notice import send_notice
from biox.render import section_table, text
from biox.wire.notices import About, NoticeSend, NoticeType

app = typer.Typer(help="Data kept from other participants (§20-21).", no_args_is_help=True)


@app.command("show")
def records_show(
    ref: str = typer.Argument(..., help="identity ref, query id or encounter id"),
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Everything kept under REF, each piece with where it came from (§20)."""
    who = acting(participant, "records show", operator)
    with session(participant) as s:
        found = holdings(s, code(participant), ref)

    audited_read(code(participant), "records show", {"ref": ref}, len(found), who)
    if not found:
        console.print(f"{code(participant)} keeps nothing under {text(repr(ref))}")
        raise typer.Exit(1)
    for section in found:
        console.print(section_table(section))


@app.command("block")
def records_block(
    ref: str = typer.Argument(..., help="the reference the partner's data is kept under"),
    participant: Participant = PARTICIPANT,
    why: str = typer.Option(..., "--text", help="why it is believed inaccurate"),
    unblock: bool = typer.Option(False, "--unblock", help="lift our own block"),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """§24: data a partner sent that we believe inaccurate is blocked here at once (not
    matched, not released, shown as blocked), with a notation, and the partner is asked
    to correct it (a correction_request naming it). --unblock lifts our block."""
    who = acting(participant, "records block", operator)
    me = code(participant)
    with session(participant) as s:
        source = disclosures.source_of(s, ref)
        if source is None:
            console.print(f"[red]{me} keeps nothing under {text(repr(ref))}[/]")
            raise typer.Exit(1)
        if source == me:
            console.print("[red]our own data: correct it instead (biox subject correct)[/]")
            raise typer.Exit(2)
        done = corrections.block_from(s, source, About(identity_refs=[ref]), not unblock)
        for table in done.counts:
            what = "unblocked" if unblock else "blocked as believed inaccurate (§24)"
            subjects.note(s, table, ref, f"{what}: {why}", who)
        s.commit()
    console.print(
        text(f"{'unblocked' if unblock else 'blocked'} {ref} ({source}'s): {done.counts}")
    )
    if unblock or not done.counts:
        return
    ask = NoticeSend(
        type=NoticeType.correction_request,
        to=source,
        actor=who,
        text=f"believed inaccurate, blocked here (§24): {why}",
        about=About(identity_refs=[ref]),
    )
    console.print(text(f"correction request {send_notice(me, ask)} sent to {source}"))
