"""``biox report`` and ``biox qa``: the annual review (§27) and the quality assurance
checks (§28)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import typer

from biox.agreement import quality as qa_checks
from biox.agreement import report as annual
from biox.agreement.measures import Measures
from biox.agreement.report_page import render
from biox.cli.common import PARTICIPANT, Participant, code, console, session, settings
from biox.render import annual_table, text
from biox.trust.sealing import Trust, load_ring, trust_path
from biox.trust.staff import Staff, StaffError
from biox.wire.fields import as_utc
from biox.wire.messages import utcnow


def report(
    participant: Participant = PARTICIPANT,
    start: datetime = typer.Option(None, "--from", help="first day (default: a year ago)"),
    end: datetime = typer.Option(None, "--to", help="the day after the last (default: now)"),
    as_json: bool = typer.Option(False, "--json"),
    html: Path = typer.Option(None, "--html", help="also write the page with charts here"),
    signed: Path = typer.Option(
        None, "--signed", help="also write it signed, for the partner to reconcile with"
    ),
) -> None:
    """The annual review (§27): volume, outcomes and timeliness per partner and purpose,
    measured as the agreement says (BIOX_AGREEMENT)."""
    me = code(participant)
    rep, _ = _review(me, start, end)
    if html is not None:
        html.write_text(render(rep))
        console.print(text(f"wrote {html}"))
    if signed is not None:
        ring = load_ring(settings().keys(), me)
        signed.write_text(json.dumps(annual.signed(rep, ring, _measures()), indent=2, default=str))
        console.print(text(f"wrote {signed}, signed by {me} ({ring.kid})"))
    if as_json:
        print(json.dumps(rep.as_json(), indent=2, default=str))
        return
    console.print(
        annual_table(rep, f"{rep.participant}: {rep.start:%Y-%m-%d} to {rep.end:%Y-%m-%d}")
    )
    console.print(text(f"refusals: {rep.refusals or 'none'}"))
    console.print(text(f"review: {rep.review}"))
    console.print(text(f"notices: {rep.notices}"))


def _measures() -> Measures:
    return Measures.load(settings().agreement)


def _review(
    me: str, start: datetime | None, end: datetime | None
) -> tuple[annual.Report, Measures]:
    measures = _measures()
    to = as_utc(end) if end else utcnow()
    since = as_utc(start) if start else to - timedelta(days=365)  # no year-1 on a 29 February
    with session(me) as s:
        ps = tuple(measures.review.latency_percentiles)
        return annual.build(s, me, since, to, ps), measures


def reconcile(
    participant: Participant = PARTICIPANT,
    partner_review: Path = typer.Option(
        ..., "--with", help="the partner's signed review (biox report --signed)"
    ),
) -> None:
    """Compare our review with the partner's signed one of the same period (§27): every
    query one sent the other must have answered, with the same outcomes. Exits 1 on any
    difference, naming each; 2 when the two cannot be compared."""
    me = code(participant)
    theirs = json.loads(partner_review.read_text())
    start, end = datetime.fromisoformat(theirs["start"]), datetime.fromisoformat(theirs["end"])
    rep, measures = _review(me, start, end)
    trust = Trust.load(trust_path(settings().keys()))
    try:
        differences = annual.reconcile(rep.as_json(), theirs, trust, measures)
    except annual.NotComparable as exc:
        console.print(f"[red]{text(exc)}[/]")
        raise typer.Exit(2) from exc
    for d in differences:
        console.print(text(d))
    who = theirs["participant"]
    console.print(
        text(
            f"{me} and {who}: {len(differences)} difference(s)"
            if differences
            else f"{me} and {who} agree"
        )
    )
    raise typer.Exit(1 if differences else 0)


def qa(participant: Participant = PARTICIPANT) -> None:
    """The §28 checks the agreement enables (BIOX_AGREEMENT); exits 1 on any finding,
    naming each."""
    me, config = code(participant), settings()
    checks = _measures().checks
    staff = None  # on the shared development broker everyone is guest: nothing to hold
    if not config.dev_shared_broker:
        try:
            staff = Staff.load(config.staff)
        except StaffError as e:
            console.print(f"[red]{text(str(e))}[/]")
            raise typer.Exit(2) from None
    with session(participant) as s:
        found = qa_checks.run(
            s, me, utcnow(), checks.review_overdue_hours * 3600, checks.enabled, staff
        )
    for f in found:
        console.print(text(f"[{f.check}] {f.detail}"))
    console.print(text(f"{me}: {len(found)} finding(s)" if found else f"{me}: no findings"))
    raise typer.Exit(1 if found else 0)
