"""The matcher's read of the query ids it has met, once a batch, built two ways.

``python -m bench.repeats``: over a provider's table of ``--rows`` answered queries
(SQLite in a temporary directory), ``Seen.of`` for batches of 1, 16 and 64 new query
ids, against the same ``select`` built and compiled for each batch (docs/performance.md,
"A repeated query id").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, col, select

from biox.database import session_for
from biox.queries.repeats import Seen
from biox.store import Transaction, fresh

AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def answered(url: str, rows: int) -> None:
    with session_for(url) as s:
        for _ in range(rows):
            s.add(
                fresh(
                    Transaction,
                    query_id=str(uuid.uuid4()),
                    role="provider",
                    encounter_id="e-1",
                    requesting="us",
                    providing="mx",
                    purpose="enforce",
                    created_at=AT,
                    source_message_id=str(uuid.uuid4()),
                )
            )
        s.commit()


def built_per_batch(session: Session, ids: list[str]) -> dict[str, str | None]:
    """What ``Seen.of`` did first: a new ``select`` for every batch."""
    return dict(
        session.exec(
            select(Transaction.query_id, Transaction.source_message_id).where(
                Transaction.role == "provider", col(Transaction.query_id).in_(ids)
            )
        ).all()
    )


def per_batch(session: Session, read: Callable[[Session, list[str]], object], size: int) -> float:
    """Wall microseconds of one read of ``size`` ids none of which is there, over 300."""
    batches = [[str(uuid.uuid4()) for _ in range(size)] for _ in range(300)]
    read(session, batches[0])
    start = time.perf_counter()
    for ids in batches:
        read(session, ids)
    return (time.perf_counter() - start) / len(batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="provider rows in the table")
    parser.add_argument("--rounds", type=int, default=3, help="timings per way, in turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'mx.db'}"
        answered(url, args.rows)
        print("| batch | select per batch, us | Seen.of, us | Seen.of per query, us |")
        print("| ---: | ---: | ---: | ---: |")
        for size in (1, 16, 64):
            ways: dict[str, list[float]] = {"per batch": [], "seen": []}
            with session_for(url) as s:
                for _ in range(args.rounds):
                    ways["per batch"].append(per_batch(s, built_per_batch, size))
                    ways["seen"].append(per_batch(s, Seen.of, size))
            old, new = statistics.median(ways["per batch"]), statistics.median(ways["seen"])
            print(f"| {size} | {old:.0f} | {new:.0f} | {new / size:.1f} |")


if __name__ == "__main__":
    main()
