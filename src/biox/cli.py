"""The `biox` command."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress

from biox import contract, logs
from biox.settings import Settings

app = typer.Typer(help="biox: biometric immigration query exchange.", no_args_is_help=True)
broker_app = typer.Typer(help="A local RabbitMQ for development and tests.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
dlq_app = typer.Typer(
    help="Dead letters: list, show, replay, purge, export, import.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
review_app = typer.Typer(help="Human review of gray-zone matches (§8).", no_args_is_help=True)
app.add_typer(review_app, name="review")
retrieval_app = typer.Typer(help="Retrieval queries after a match (§10).", no_args_is_help=True)
app.add_typer(retrieval_app, name="retrieval")
records_app = typer.Typer(help="Data kept from other participants (§20-21).", no_args_is_help=True)
app.add_typer(records_app, name="records")


def _dlq_scope(participant, queue, kind, reason, older_than, ids=()):
    from biox.broker.deadletters import DeadLetterQueues, Filters, dlq_names, parse_age
    from biox.registry import Registry

    settings = Settings()
    if not settings.amqp_url:
        console.print("BIOX_AMQP_URL is not set")
        raise typer.Exit(2)
    codes = Registry.load(settings.registry).codes
    filters = Filters(
        participant=participant,
        queue=queue,
        kind=kind,
        reason=reason,
        older_than_s=parse_age(older_than) if older_than else None,
        ids=tuple(ids),
    )
    return DeadLetterQueues(settings.amqp_url), dlq_names(codes, participant, queue), filters


_P = typer.Option(None, "--participant", "-p")
_Q = typer.Option(None, "--queue", help="work queue or its .dlq")
_K = typer.Option(None, "--kind")
_R = typer.Option(None, "--reason", help="substring of the reason")
_O = typer.Option(None, "--older-than", help="e.g. 10m, 2h")


@dlq_app.command("list")
def dlq_list(
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts per queue, then one row per dead letter."""
    import json

    from rich.table import Table

    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than)
    try:
        counts = {q: n for q, n in dlqs.counts(names).items() if n}
        letters = dlqs.list(names, filters)
    finally:
        dlqs.close()
    if as_json:
        print(json.dumps({"counts": counts, "messages": [d.summary() for d in letters]}, indent=2))
        return
    for q, n in sorted(counts.items()):
        console.print(f"{q}: {n}")
    table = Table()
    for col in ("id", "kind", "from → to", "age", "attempts", "reason"):
        table.add_column(col)
    for d in letters:
        s = d.summary()
        table.add_row(
            s["id"],
            s["kind"],
            f"{s['from']} → {s['to']}",
            f"{s['age_s']}s",
            str(s["attempts"]),
            s["reason"][:80],
        )
    console.print(table)


@dlq_app.command("show")
def dlq_show(message_id: str, participant: str = _P, queue: str = _Q) -> None:
    """Properties, headers and the body with templates and personal data redacted."""
    import json

    from biox.broker.deadletters import redacted_body, to_record

    dlqs, names, filters = _dlq_scope(participant, queue, None, None, None, [message_id])
    try:
        found = dlqs.list(names, filters)
    finally:
        dlqs.close()
    if not found:
        console.print(f"{message_id}: not in any dead-letter queue")
        raise typer.Exit(1)
    for d in found:
        record = to_record(d)
        record.pop("body")
        record["body (redacted)"] = redacted_body(d)
        print(json.dumps(record, indent=2, default=str))


@dlq_app.command("replay")
def dlq_replay(
    ids: list[str] = typer.Argument(None),
    all_: bool = typer.Option(False, "--all"),
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    dry_run: bool = typer.Option(False, "--dry-run"),
    rate: float = typer.Option(0.0, "--rate", help="messages per second; 0 = no limit"),
    to_queue: str = typer.Option(None, "--to-queue"),
) -> None:
    """Republish to the original route (confirmed, same message_id); remove after confirm."""
    if not (ids or all_ or kind or reason or older_than or participant or queue):
        console.print("say what to replay: IDs, --all, or filters")
        raise typer.Exit(2)
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than, ids or ())
    moved: list[str] = []
    try:
        n = dlqs.replay(
            names,
            filters,
            dry_run=dry_run,
            rate=rate,
            to_queue=to_queue,
            on_each=lambda d: moved.append(
                f"{d.queue} {d.id} → {to_queue if to_queue else '/'.join(d.route)}"
            ),
        )
        if n and not dry_run:
            for code in {m.split(".")[0] for m in moved}:
                dlqs.record_action(
                    code,
                    "dlq.replay",
                    [m.split()[1] for m in moved if m.startswith(code)],
                    f"{n} replayed",
                )
    finally:
        dlqs.close()
    for line in moved:
        console.print(("would replay " if dry_run else "replayed ") + line)
    console.print(
        f"{'would replay' if dry_run else 'replayed'} {len(moved) if dry_run else n} message(s)"
    )


@dlq_app.command("purge")
def dlq_purge(
    ids: list[str] = typer.Argument(None),
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
    yes: bool = typer.Option(False, "--yes"),
) -> None:
    """Delete dead letters for good (needs --yes)."""
    if not yes:
        console.print("purge deletes messages for good: add --yes")
        raise typer.Exit(2)
    if not (ids or kind or reason or older_than or participant or queue):
        console.print("say what to purge: IDs or filters")
        raise typer.Exit(2)
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than, ids or ())
    gone: list[tuple[str, str]] = []
    try:
        n = dlqs.visit(names, filters, lambda _ch, d: bool(gone.append((d.queue, d.id))) or True)
        for code in {q.split(".")[0] for q, _ in gone}:
            dlqs.record_action(
                code, "dlq.purge", [i for q, i in gone if q.startswith(code)], f"{n} purged"
            )
    finally:
        dlqs.close()
    console.print(f"purged {n} message(s)")


@dlq_app.command("export")
def dlq_export(
    file: Path,
    participant: str = _P,
    queue: str = _Q,
    kind: str = _K,
    reason: str = _R,
    older_than: str = _O,
) -> None:
    """Write dead letters to FILE, one JSON record per line (they stay in the queue)."""
    dlqs, names, filters = _dlq_scope(participant, queue, kind, reason, older_than)
    try:
        with file.open("w") as out:
            n = dlqs.export(names, filters, out)
    finally:
        dlqs.close()
    console.print(f"exported {n} message(s) to {file}")


@dlq_app.command("import")
def dlq_import(file: Path) -> None:
    """Put exported dead letters back into the queues they came from."""
    dlqs, _, _ = _dlq_scope(None, None, None, None, None)
    try:
        with file.open() as lines:
            n = dlqs.import_(lines)
    finally:
        dlqs.close()
    console.print(f"imported {n} message(s)")


# piped output (CI logs, `| tee`) gets room for the tables instead of 80 columns
console = Console() if sys.stdout.isatty() else Console(width=140)


def _broker_state(settings: Settings) -> Path:
    return settings.data_dir / "broker" / "state.json"


@app.command()
def demo(
    gallery_size: int = typer.Option(20_000, help="identities per participant gallery"),
    encounters: int = typer.Option(100, help="encounters submitted per participant"),
    seed: int = typer.Option(2026),
) -> None:
    """Run the exchange end to end on this machine and print what came back."""
    from biox.demo import run

    settings = Settings()
    logs.configure("WARNING", json=False)
    raise typer.Exit(
        run(
            settings,
            gallery_size=gallery_size,
            per_participant=encounters,
            seed=seed,
            console=console,
        )
    )


@app.command()
def worker(
    kind: str = typer.Argument(..., help="intake | matcher | response"),
    participant: str = typer.Option(..., "--participant", "-p"),
) -> None:
    """Run one worker process for a participant (BIOX_AMQP_URL must be set)."""
    from biox.runtime import WorkerKind, run_worker

    run_worker(WorkerKind(kind), participant)


@app.command()
def schemas(out: Path = typer.Option(Path("schemas"), help="directory to write")) -> None:
    """Write the JSON Schemas of every message kind (the integration contract)."""
    for path in contract.write(out):
        console.print(f"wrote {path}")


@app.command()
def synth(
    participant: str = typer.Option(..., "--participant", "-p"),
    size: int = typer.Option(20_000),
    seed: int = typer.Option(2026),
) -> None:
    """Build a participant's synthetic gallery (database records and FAISS indexes)."""
    from biox.runtime import build_synthetic_gallery

    settings = Settings()
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task(f"gallery {participant}", total=size)
        gallery = build_synthetic_gallery(
            settings, participant, size, seed, lambda n: progress.advance(task, n)
        )
    console.print(
        f"{participant}: {gallery.size} identities, {gallery.kind} index, "
        f"{time.perf_counter() - started:.1f}s"
    )


@broker_app.command("start")
def broker_start() -> None:
    """Start a local RabbitMQ in the background and print its URL."""
    from biox.broker.launcher import LocalBroker

    settings = Settings()
    state = _broker_state(settings)
    if state.exists() and LocalBroker.from_state(state).running():
        console.print(LocalBroker.from_state(state).url)
        return
    broker = LocalBroker().start()
    broker.save_state(state)
    console.print(broker.url)
    console.print(f"[dim]export BIOX_AMQP_URL={broker.url}   # then: biox broker stop[/]")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local RabbitMQ started by `biox broker start`."""
    from biox.broker.launcher import LocalBroker

    state = _broker_state(Settings())
    if not state.exists():
        console.print("no local broker recorded")
        return
    LocalBroker.from_state(state).stop()
    state.unlink()
    console.print("stopped")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the local RabbitMQ is running, and where."""
    from biox.broker.launcher import LocalBroker

    state = _broker_state(Settings())
    if state.exists() and (b := LocalBroker.from_state(state)).running():
        console.print(f"running (pid {b.state.pid}): {b.url}")  # type: ignore[union-attr]
    else:
        console.print("not running")
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(
    participant: list[str] = typer.Option(None, "--participant", "-p", help="default: all"),
) -> None:
    """Walk each participant's chain and name the first altered, removed or inserted entry."""
    from biox import audit
    from biox.registry import Registry
    from biox.store import session_for

    settings = Settings()
    codes = participant or Registry.load(settings.registry).codes
    broken = False
    for code in codes:
        with session_for(settings.database_for(code)) as session:
            count, problem = audit.verify(session)
        if problem is None:
            console.print(f"{code}: {count} entries, chain intact")
        else:
            broken = True
            console.print(f"[red]{code}: {count} entries, chain broken at {problem}[/]")
    raise typer.Exit(1 if broken else 0)


@audit_app.command("trail")
def audit_trail(query_id: str) -> None:
    """The timeline of one query across participants, from their audit trails."""
    from biox.audit import trail_across
    from biox.views import trail_table

    settings = Settings()
    rows = trail_across(settings, query_id)
    if not rows:
        console.print(f"no audit entries for {query_id}")
        raise typer.Exit(1)
    console.print(trail_table(query_id, rows))


_PARTICIPANT = typer.Option(..., "--participant", "-p", help="whose database")


def _session(participant: str):
    from biox.store import session_for

    return session_for(Settings().database_for(participant))


def _amqp_url() -> str:
    url = Settings().amqp_url
    if not url:
        console.print("BIOX_AMQP_URL is not set")
        raise typer.Exit(2)
    return url


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@review_app.command("list")
def review_list(
    participant: str = _PARTICIPANT, as_json: bool = typer.Option(False, "--json")
) -> None:
    """Open cases, oldest first, with their age; overdue ones are marked."""
    import json

    from rich.table import Table

    from biox import examiners

    settings = Settings()
    with _session(participant) as session:
        cases = examiners.open_cases(session)
    late = {c.case_id for c in examiners.overdue(cases, settings.review_overdue_s)}
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
    table = Table(title=f"{participant}: {len(cases)} open review case(s)")
    for col in ("case", "from", "purpose", "status", "examiner", "age", "best score"):
        table.add_column(col, no_wrap=True)
    for c in cases:
        age = _age(examiners.age_s(c))
        table.add_row(
            c.case_id,
            c.requesting,
            c.purpose,
            c.status,
            c.examiner or "",
            f"[red]{age} overdue[/]" if c.case_id in late else age,
            f"{c.candidates[0]['fused_score']:.3f}" if c.candidates else "",
        )
    console.print(table)
    if late:
        console.print(
            f"[red]{len(late)} case(s) undecided for more than "
            f"{_age(settings.review_overdue_s)} (BIOX_REVIEW_OVERDUE_S)[/]"
        )


@review_app.command("overdue")
def review_overdue(participant: str = _PARTICIPANT) -> None:
    """For monitoring: prints overdue cases and exits 1 when there are any."""
    from biox import examiners

    settings = Settings()
    with _session(participant) as session:
        late = examiners.overdue(examiners.open_cases(session), settings.review_overdue_s)
    for c in late:
        console.print(
            f"{participant} case {c.case_id} from {c.requesting}: {_age(examiners.age_s(c))}"
        )
    console.print(f"{len(late)} overdue case(s)")
    raise typer.Exit(1 if late else 0)


@review_app.command("next")
def review_next(
    participant: str = _PARTICIPANT,
    examiner: str = typer.Option(..., "--examiner", help="your examiner id"),
    verdict: str = typer.Option(
        None, "--decide", help="match | no_match; without it you are asked"
    ),
    candidate: str = typer.Option(None, "--candidate", help="identity ref for a match"),
    note: str = typer.Option(None, "--note"),
) -> None:
    """Take the oldest open case, show it beside its candidates, and send the decision."""
    from biox import examiners
    from biox.messages import ReviewVerdict

    settings = Settings()
    url = _amqp_url()
    with _session(participant) as session:
        case = examiners.take_next(session, examiner, settings.review_lease_s)
        if case is None:
            console.print("no open case")
            raise typer.Exit(0)
        sides = examiners.sides(session, case)
    console.print(_case_table(case, sides))
    if verdict is None:
        verdict, candidate = _ask_examiner(case, sides, settings.review_lease_s)
    chosen = ReviewVerdict(verdict)
    if chosen is ReviewVerdict.match and candidate not in {s.identity_ref for s in sides}:
        console.print(f"[red]{candidate!r} is not a candidate of this case[/]")
        raise typer.Exit(2)
    message = examiners.decision_message(participant, case, chosen, candidate, examiner, note)
    examiners.send_decision(url, message)
    console.print(
        f"case {case.case_id}: {chosen.value}"
        + (f" with {candidate}" if candidate else "")
        + f" by {examiner}; the answer goes to {case.requesting}"
    )


def _ask_examiner(case, sides, lease_s: float) -> tuple[str, str | None]:
    numbers = [str(i) for i in range(1, len(sides) + 1)]
    while True:
        choice = typer.prompt(
            f"Match with candidate {'/'.join(numbers)}, 'n' for no match, 'q' to leave it for later"
        ).strip()
        if choice == "q":
            console.print(f"case {case.case_id} stays yours for {_age(lease_s)}")
            raise typer.Exit(0)
        if choice == "n":
            return "no_match", None
        if choice in numbers:
            return "match", sides[int(choice) - 1].identity_ref
        console.print(f"[red]{choice!r}: answer {', '.join(numbers)}, n or q[/]")


def _case_table(case, sides):
    from rich.table import Table

    table = Table(
        title=f"Case {case.case_id}: query from {case.requesting} for {case.purpose}, "
        f"probe {', '.join(case.probe_modalities)}"
    )
    table.add_column("", style="bold")
    table.add_column("probe (from the query)")
    for i, side in enumerate(sides, 1):
        table.add_column(f"#{i} {side.identity_ref}")
    keys = (
        "family_name",
        "given_names",
        "date_of_birth",
        "sex",
        "claimed_nationality",
        "document_number",
    )
    table.add_row("fused score", "", *(f"{s.fused_score:.3f}" for s in sides))
    for modality in sorted({m for s in sides for m in s.scores}):
        table.add_row(
            f"{modality} score", "", *(f"{s.scores.get(modality, float('nan')):.3f}" for s in sides)
        )
    for key in keys:
        values = [
            str(case.probe_biographic.get(key) or ""),
            *(str((s.record.biographic if s.record else {}).get(key) or "") for s in sides),
        ]
        if any(values):  # a field nobody has is noise beside the ones to compare
            table.add_row(key, *values)
    table.add_row(
        "encounter",
        f"{case.encounter.get('country', '')} {case.encounter.get('encountered_at', '')[:10]}",
        *(f"{len(s.record.encounters) if s.record else 0} on file" for s in sides),
    )
    table.add_row(
        "derogatory", "", *(", ".join(s.record.derogatory) if s.record else "" for s in sides)
    )
    return table


@retrieval_app.command("request")
def retrieval_request(
    participant: str = _PARTICIPANT,
    query: str = typer.Option(..., "--query", help="a query this participant answered"),
    elements: str = typer.Option(
        "biographic,encounters", help="comma-separated: reference,biographic,encounters,derogatory"
    ),
    operator: str = typer.Option(None, "--operator", help="default: user@host"),
    justification: str = typer.Option(None, "--justification"),
) -> None:
    """Ask the requester of a query this participant matched for more data (§10)."""
    from biox import codec
    from biox.broker.deadletters import operator as default_operator
    from biox.broker.publisher import publish_once
    from biox.messages import Element, RetrievalAsk
    from biox.store import Transaction

    url = _amqp_url()
    try:
        wanted = [Element(e.strip()) for e in elements.split(",") if e.strip()]
    except ValueError as exc:
        console.print(f"[red]{exc}; elements are {', '.join(e.value for e in Element)}[/]")
        raise typer.Exit(2) from exc
    with _session(participant) as session:
        tx = session.get(Transaction, (query, "provider"))
    if tx is None or tx.status != "match":
        console.print(
            f"[red]{participant} did not answer query {query} with a match"
            + (f" (it answered {tx.status})" if tx else " (no such query)")
            + ": a retrieval may only follow a match (§10)[/]"
        )
        raise typer.Exit(1)
    who = operator or default_operator()
    ask = RetrievalAsk(query_id=query, elements=wanted, asked_by=who, justification=justification)
    out = codec.to_own_inbox(
        ask, participant=participant, message_id=str(uuid.uuid4()), correlation_id=query
    )
    publish_once(url, [codec.with_actor(out, who)], name="biox-retrieval")
    console.print(
        f"asked {tx.requesting} for {', '.join(e.value for e in wanted)} about query {query}"
    )


@retrieval_app.command("list")
def retrieval_list(participant: str = _PARTICIPANT) -> None:
    """Retrievals this participant asked for and answered."""
    from rich.table import Table
    from sqlmodel import select

    from biox.store import RetrievalRow

    with _session(participant) as session:
        rows = session.exec(select(RetrievalRow).order_by(RetrievalRow.asked_at)).all()  # type: ignore[arg-type]
    table = Table(title=f"{participant}: retrievals")
    for col in ("query", "role", "asker → holder", "asked", "status", "released", "reason"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(
            r.query_id,
            r.role,
            f"{r.asker} → {r.holder}",
            ",".join(r.elements),
            r.status,
            ",".join(r.released),
            r.reason_code or "",
        )
    console.print(table)


@records_app.command("show")
def records_show(
    ref: str = typer.Argument(..., help="identity ref, query id or encounter id"),
    participant: str = _PARTICIPANT,
) -> None:
    """Everything kept under REF, each piece with where it came from (§20)."""
    from biox.provenance import holdings

    with _session(participant) as session:
        found = holdings(session, participant, ref)
    if not found:
        console.print(f"{participant} keeps nothing under {ref!r}")
        raise typer.Exit(1)
    for table in found:
        console.print(table)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
