"""``biox review``: human review of gray-zone matches (§8, docs/workflows.md)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from biox.broker.publisher import publish_once
from biox.cli.common import (
    PARTICIPANT,
    Participant,
    acting,
    age,
    amqp_url,
    audited_read,
    code,
    console,
    session,
    settings,
)
from biox.queries import examiners
from biox.queries.examiners import Side
from biox.render import case_table, text
from biox.store import ReviewCaseRow
from biox.wire.messages import ReviewVerdict

app = typer.Typer(help="Human review of gray-zone matches (§8).", no_args_is_help=True)


@app.command("list")
def review_list(
    participant: Participant = PARTICIPANT, as_json: bool = typer.Option(False, "--json")
) -> None:
    """Open cases, oldest first, with their age; overdue ones are marked."""
    limit = settings().review_overdue_s
    with session(participant) as s:
        cases = examiners.open_cases(s)
    late = {c.case_id for c in examiners.overdue(cases, limit)}
    if as_json:
        rows = [
            {
                "case_id": c.case_id,
                "requesting": c.requesting,
                "purpose": c.purpose,
                "status": c.status,
                "examiner": c.examiner,
                "age_s": round(examiners.age_s(c)),
                "overdue": c.case_id in late,
                "best_score": c.candidates[0]["fused_score"] if c.candidates else None,
            }
            for c in cases
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{code(participant)}: {len(cases)} open review case(s)")
    for col in ("case", "from", "purpose", "status", "examiner", "age", "best score"):
        table.add_column(col, no_wrap=True)
    for c in cases:
        shown = age(examiners.age_s(c))
        table.add_row(
            text(c.case_id),
            text(c.requesting),
            text(c.purpose),
            c.status,
            text(c.examiner or ""),
            f"[red]{shown} overdue[/]" if c.case_id in late else shown,
            f"{c.candidates[0]['fused_score']:.3f}" if c.candidates else "",
        )
    console.print(table)
    if late:
        console.print(
            f"[red]{len(late)} case(s) undecided for more than {age(limit)} "
            "(BIOX_REVIEW_OVERDUE_S)[/]"
        )


@app.command("overdue")
def review_overdue(participant: Participant = PARTICIPANT) -> None:
    """For monitoring: prints overdue cases and exits 1 when there are any."""
    with session(participant) as s:
        late = examiners.overdue(examiners.open_cases(s), settings().review_overdue_s)
    for c in late:
        console.print(
            text(f"{code(participant)} case {c.case_id} from {c.requesting}: ")
            + age(examiners.age_s(c))
        )
    console.print(f"{len(late)} overdue case(s)")
    raise typer.Exit(1 if late else 0)


@app.command("next")
def review_next(
    participant: Participant = PARTICIPANT,
    examiner: str = typer.Option(
        None, "--examiner", help="your name as staff, where no certificate says it"
    ),
    verdict: ReviewVerdict = typer.Option(
        None, "--decide", help="match | no_match; without it you are asked"
    ),
    candidate: str = typer.Option(None, "--candidate", help="identity ref for a match"),
    note: str = typer.Option(None, "--note"),
) -> None:
    """Take the oldest open case, show it beside its candidates, and send the decision."""
    examiner = acting(participant, "review next", examiner)
    url = amqp_url()
    lease = settings().review_lease_s
    with session(participant) as s:
        case = examiners.take_next(s, examiner, lease)
        if case is None:
            console.print("no open case")
            raise typer.Exit(0)
        sides = examiners.sides(s, case)
    audited_read(code(participant), "review next", {"case": case.case_id}, len(sides), examiner)
    console.print(case_table(case, sides))
    if verdict is None:
        verdict, candidate = _ask_examiner(case, sides, lease)
    if verdict is ReviewVerdict.match and candidate not in {s.identity_ref for s in sides}:
        console.print(f"[red]{text(repr(candidate))} is not a candidate of this case[/]")
        raise typer.Exit(2)
    message = examiners.decision_message(
        code(participant), case, verdict, candidate, examiner, note
    )
    publish_once(url, [message], name="biox-review", tls=settings().client_tls())
    console.print(
        text(
            f"case {case.case_id}: {verdict.value}"
            + (f" with {candidate}" if candidate else "")
            + f" by {examiner}; the answer goes to {case.requesting}"
        )
    )


def _ask_examiner(
    case: ReviewCaseRow, sides: list[Side], lease_s: float
) -> tuple[ReviewVerdict, str | None]:
    numbers = [str(i) for i in range(1, len(sides) + 1)]
    while True:
        choice = typer.prompt(
            f"Match with candidate {'/'.join(numbers)}, 'n' for no match, 'q' to leave it for later"
        ).strip()
        if choice == "q":
            console.print(f"case {text(case.case_id)} stays yours for {age(lease_s)}")
            raise typer.Exit(0)
        if choice == "n":
            return ReviewVerdict.no_match, None
        if choice in numbers:
            return ReviewVerdict.match, sides[int(choice) - 1].identity_ref
        console.print(f"[red]{text(repr(choice))}: answer {', '.join(numbers)}, n or q[/]")
