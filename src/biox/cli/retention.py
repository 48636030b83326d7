"""``biox retention``: the purge of what is past its retention date (§21), by hand; the
notice worker runs the same purge on its schedule."""

from __future__ import annotations

import typer
from rich.table import Table

from biox.broker import sweeps
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
from biox.handlers.notice import purge_all, purge_event
from biox.policy.release import Policies
from biox.wire.messages import utcnow

app = typer.Typer(help="Retention (§21): purge what is past its date.", no_args_is_help=True)


@app.command("purge")
def retention_purge(
    participant: Participant = PARTICIPANT,
    dry_run: bool = typer.Option(False, "--dry-run", help="count, remove nothing"),
    operator: str = typer.Option(
        None, "--operator", help="your name as staff, where no certificate says it"
    ),
) -> None:
    """Remove every row past its retention date, from every table and every matcher's
    index; the audit trail records the counts (not with --dry-run)."""
    who = acting(participant, "retention purge", operator)
    me = code(participant)
    with session(participant) as s:
        policy = Policies.load(settings().policy).of(me)
        counts = purge_all(s, utcnow(), me, settings(), policy, dry_run=dry_run)
        table = Table(title=f"{me}: {'would purge' if dry_run else 'purged'}")
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, n in sorted(counts.items()):
            table.add_row(name, str(n))
        console.print(table if counts else "nothing is past its retention date")
        if counts.get("gallery_snapshot_busy"):
            console.print(
                "the gallery snapshot is being written by another process (an import, a "
                "split): left as it is; the next purge takes out what was deleted since"
            )
        if dry_run:
            return
        s.commit()
        # and the broker's copies: dead letters and held results that carry data deleted
        # or past its retention (docs/lifecycle.md, "A deletion is final")
        swept = sweeps.sweep(amqp_url(), settings().client_tls(), me, s, settings().shards)
    for name, n in sorted(swept.items()):
        console.print(f"{name}: {n} removed from the broker")
    counts.update(swept)
    if not counts:
        return

    publish_once(
        amqp_url(),
        [purge_event(me, counts, who)],
        name="biox-retention",
        tls=settings().client_tls(),
    )
