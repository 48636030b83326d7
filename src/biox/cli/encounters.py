"""``biox encounters``: what an encounter system was (or would have been) sent
(docs/integration.md, "When the reply queue is missing")."""

from __future__ import annotations

import msgpack
import typer
from rich.table import Table

from biox.broker import sweeps
from biox.broker.deadletters import DeadLetterQueues
from biox.broker.held import held_results, redeliver
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
from biox.queries.results import EncounterViews
from biox.render import text
from biox.wire import addresses

app = typer.Typer(
    help="Encounters this participant's encounter systems submitted, and their results.",
    no_args_is_help=True,
)


@app.command("show")
def encounters_show(
    encounter_id: str = typer.Argument(..., help="the encounter system's encounter id"),
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
    as_json: bool = typer.Option(False, "--json", help="the encounter.result as JSON"),
) -> None:
    """The encounter's current result, as its encounter system gets it: every partner,
    asked or skipped, with its outcome; and where its results are sent."""
    who = acting(participant, "encounters show", operator)
    me = code(participant)
    with session(participant) as s:
        views = EncounterViews.load(s, [encounter_id])
        row = views.encounters.get(encounter_id)
        result = views.result(me, row) if row is not None else None
    audited_read(
        me,
        "encounters show",
        {"encounter_id": encounter_id},
        int(result is not None),
        who,
    )
    if row is None or result is None:
        console.print(f"{me} has no encounter {text(repr(encounter_id))}")
        raise typer.Exit(1)
    if as_json:
        print(result.model_dump_json(indent=2, exclude_none=True))
        return
    console.print(
        f"[bold]{text(encounter_id)}[/] ({row.purpose}): {result.status.value}, revision "
        f"{row.revision}; results to {text(row.reply_to or '(no reply_to)')} on "
        f"{addresses.results(me)}; submitted {row.submitted_at:%Y-%m-%d %H:%M:%S} as "
        f"{text(row.source_message_id or '?')}"
    )
    table = Table()
    for col in (
        "partner",
        "status",
        "reason",
        "decided by",
        "top candidate",
        "sent",
        "answered",
        "due",
    ):
        table.add_column(col)
    for o in result.outcomes:
        top = o.candidates[0] if o.candidates else None
        table.add_row(
            o.partner,
            o.status.value,
            text(o.reason_code.value if o.reason_code else ""),
            o.decided_by.value if o.decided_by else "",
            f"{text(top.identity_ref)} ({top.fused_score:.2f})" if top else "",
            f"{o.sent_at:%H:%M:%S}" if o.sent_at else "",
            f"{o.answered_at:%H:%M:%S}" if o.answered_at else "",
            f"{o.answer_due:%H:%M:%S}" if o.answer_due and not o.answered_at else "",
        )
    console.print(table)


@app.command("held")
def encounters_held(participant: Participant = PARTICIPANT) -> None:
    """Results no reply queue took (its queue missing or unnamed), oldest first. They
    stay until `biox encounters redeliver` sends them on."""
    me = code(participant)
    queue = addresses.held_results_queue(me)
    dlq = DeadLetterQueues(amqp_url(), settings().client_tls())
    try:  # looked at, not taken: they stay in the queue
        held = held_results(dlq, me)
    finally:
        dlq.close()
    table = Table(title=f"{queue}: {len(held)} held")
    for col in ("encounter", "revision", "status", "reply queue", "message id"):
        table.add_column(col)
    for d in held:
        data = msgpack.unpackb(d.body, raw=False, timestamp=3)
        table.add_row(
            text(d.properties.correlation_id or ""),
            str(data.get("revision", "")),
            text(data.get("status", "")),
            text(d.routing_key or "(none)"),
            text(d.properties.message_id or ""),
        )
    console.print(table)


@app.command("redeliver")
def encounters_redeliver(
    participant: Participant = PARTICIPANT,
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Send every held result on to its reply queue, now that it exists. One whose queue
    is still missing is held again: nothing is lost either way. Each is taken from the
    held queue only once the broker confirmed it sent on."""
    who = acting(participant, "encounters redeliver", operator)
    me = code(participant)
    with session(me) as s:  # what carries deleted data or is past retention goes first
        swept = sweeps.sweep(amqp_url(), settings().client_tls(), me, s, settings().shards)
    if swept.get("held_results"):
        console.print(
            f"{swept['held_results']} held result(s) removed: they carried data deleted "
            "since (§22) or were about an encounter no longer kept (§21)"
        )
    dlq = DeadLetterQueues(amqp_url(), settings().client_tls())
    try:
        sent, waiting = redeliver(dlq, me, who)
    finally:
        dlq.close()
    console.print(f"{sent} held result(s) sent on to their reply queues")
    for queue, n in sorted(waiting.items()):
        console.print(text(f"{n} still held: reply queue {queue} does not exist"))
