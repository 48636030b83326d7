"""The audit worker's transaction per batch, with its idempotency kept two ways.

``python -m bench.trail``: a batch's lookup of what it handled before, its entries
chained and inserted, and the commit, on a SQLite trail that already holds some
entries. ``hops`` is how the audit queue works now: each entry carries its hop under a
unique index (``trust/audit.recorded``). ``markers`` is how every other queue works, and
how the audit queue worked before 2026-12-04: a ``processed_messages`` row beside each
entry. The two run in turn, on trails of their own, so that the machine's drift falls
on both (docs/performance.md, "The audit's own idempotency").
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session

from biox.database import add_markers, handled, processed, session_for
from biox.handlers.audit import AuditHandler
from biox.trust import audit
from biox.wire.codec import Envelope
from biox.wire.inbound import Inbound

QUEUE = "us.audit"


def batch(n: int) -> list[Inbound[None]]:
    """Queries as us's outbox sends them, each as the audit queue receives it."""
    return [
        Inbound(
            Envelope(str(uuid.uuid4()), "query", "query/1", "us", "mx", "q", None, "us.workers"),
            None,
            b"\x00" * 5463,  # a sealed query's size (the relay's capture)
            "biox.us.out",
            "mx.query",
        )
        for _ in range(n)
    ]


def with_hops(session: Session, entries: list[Inbound[None]]) -> None:
    handled(session, QUEUE, [(i.hop, False) for i in entries], audit.recorded)
    AuditHandler("us").chain(entries, session)


def with_markers(session: Session, entries: list[Inbound[None]]) -> None:
    keys = [i.hop for i in entries]
    processed(session, QUEUE, keys)
    AuditHandler("us").chain(entries, session)
    add_markers(session, [{"consumer": QUEUE, "message_id": k, "outputs": b""} for k in keys])


def cpu_ms(url: str, way: Callable[[Session, list[Inbound[None]]], None], size: int) -> float:
    """CPU ms of one batch's transaction, the mean of 100."""
    batches = [batch(size) for _ in range(100)]
    started = time.process_time()
    for entries in batches:
        with session_for(url) as session:
            way(session, entries)
            session.commit()
    return (time.process_time() - started) * 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=20, help="entries per batch")
    parser.add_argument("--before", type=int, default=10_000, help="entries already there")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ways = {"hops": with_hops, "markers": with_markers}
    directory = Path(tempfile.mkdtemp(prefix="biox-trail-"))
    urls = {name: f"sqlite:///{directory / name}.db" for name in ways}
    for name, way in ways.items():  # the trail's earlier entries, written the same way
        for _ in range(args.before // 100):
            with session_for(urls[name]) as session:
                way(session, batch(100))
                session.commit()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            times[name].append(cpu_ms(urls[name], way, args.batch))
    print(f"CPU ms per batch of {args.batch}, {args.before} entries before, {args.rounds} rounds")
    for name, got in times.items():
        runs = ", ".join(f"{t:.3f}" for t in got)
        print(f"  {name:8s} median {sorted(got)[len(got) // 2]:.3f}  ({runs})")


if __name__ == "__main__":
    main()
