"""``biox retrieval``: asking for more data after a match (§10, docs/workflows.md)."""

from __future__ import annotations

import uuid

import typer
from rich.table import Table
from sqlmodel import col, select

from biox.broker.publisher import publish_once
from biox.cli.common import (
    PARTICIPANT,
    Participant,
    acting,
    amqp_url,
    code,
    console,
    session,
    settings,
)
from biox.render import text
from biox.store import RetrievalRow, Transaction
from biox.wire import codec
from biox.wire.messages import Element, RetrievalAsk

app = typer.Typer(help="Retrieval queries after a match (§10).", no_args_is_help=True)


@app.command("request")
def retrieval_request(
    participant: Participant = PARTICIPANT,
    query: str = typer.Option(..., "--query", help="a query this participant answered"),
    elements: str = typer.Option(
        "biographic,encounters", help="comma-separated: reference,biographic,encounters,derogatory"
    ),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
    justification: str = typer.Option(None, "--justification"),
) -> None:
    """Ask the requester of a query this participant matched for more data (§10)."""
    who = acting(participant, "retrieval request", operator)
    url = amqp_url()
    me = code(participant)
    try:
        wanted = [Element(e.strip()) for e in elements.split(",") if e.strip()]
    except ValueError as exc:
        console.print(f"[red]{text(exc)}; elements are {', '.join(e.value for e in Element)}[/]")
        raise typer.Exit(2) from exc
    with session(participant) as s:
        tx = s.get(Transaction, (query, "provider"))
    if tx is None or tx.status != "match":
        console.print(
            "[red]"
            + text(
                f"{me} did not answer query {query} with a match"
                + (f" (it answered {tx.status})" if tx else " (no such query)")
                + ": a retrieval may only follow a match (§10)"
            )
            + "[/]"
        )
        raise typer.Exit(1)

    ask = RetrievalAsk(query_id=query, elements=wanted, asked_by=who, justification=justification)
    out = codec.to_own_inbox(
        ask, participant=me, message_id=str(uuid.uuid4()), correlation_id=query
    )
    publish_once(
        url, [codec.with_actor(out, who)], name="biox-retrieval", tls=settings().client_tls()
    )
    console.print(
        text(f"asked {tx.requesting} for {', '.join(e.value for e in wanted)} about query {query}")
    )


@app.command("list")
def retrieval_list(participant: Participant = PARTICIPANT) -> None:
    """Retrievals this participant asked for and answered."""
    with session(participant) as s:
        rows = s.exec(select(RetrievalRow).order_by(col(RetrievalRow.asked_at))).all()
    table = Table(title=f"{code(participant)}: retrievals")
    for column in ("query", "role", "asker → holder", "asked", "status", "released", "reason"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(
            text(r.query_id),
            r.role,
            text(f"{r.asker} → {r.holder}"),
            ",".join(r.elements),
            r.status,
            ",".join(r.released),
            text(r.reason_code or ""),
        )
    console.print(table)
