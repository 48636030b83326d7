"""``biox report`` and ``biox qa``: the annual review (§27) and the quality assurance
checks (§28)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import typer

from biox.agreement import quality as qa_checks
from biox.agreement import report as annual
from biox.agreement.report_page import render
from biox.cli.common import PARTICIPANT, Participant, code, console, session, settings
from biox.render import annual_table, text
from biox.wire.fields import as_utc
from biox.wire.messages import utcnow


def report(
    participant: Participant = PARTICIPANT,
    start: datetime = typer.Option(None, "--from", help="first day (default: a year ago)"),
    end: datetime = typer.Option(None, "--to", help="the day after the last (default: now)"),
    as_json: bool = typer.Option(False, "--json"),
    html: Path = typer.Option(None, "--html", help="also write the page with charts here"),
) -> None:
    """The annual review (§27): volume, outcomes and timeliness per partner and purpose."""
    to = as_utc(end) if end else utcnow()
    since = as_utc(start) if start else to - timedelta(days=365)  # no year-1 on a 29 February
    with session(participant) as s:
        rep = annual.build(s, code(participant), since, to)
    if html is not None:
        html.write_text(render(rep))
        console.print(text(f"wrote {html}"))
    if as_json:
        print(json.dumps(rep.as_json(), indent=2, default=str))
        return
    console.print(annual_table(rep, f"{rep.participant}: {since:%Y-%m-%d} to {to:%Y-%m-%d}"))
    console.print(text(f"refusals: {rep.refusals or 'none'}"))
    console.print(text(f"review: {rep.review}"))
    console.print(text(f"notices: {rep.notices}"))


def qa(participant: Participant = PARTICIPANT) -> None:
    """The §28 checks; exits 1 on any finding, naming each."""
    me = code(participant)
    with session(participant) as s:
        found = qa_checks.run(s, me, utcnow(), settings().review_overdue_s)
    for f in found:
        console.print(text(f"[{f.check}] {f.detail}"))
    console.print(text(f"{me}: {len(found)} finding(s)" if found else f"{me}: no findings"))
    raise typer.Exit(1 if found else 0)
