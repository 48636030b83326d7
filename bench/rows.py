"""The rows a handler adds on every message, built two ways.

``python -m bench.rows``: intake's requester row of a query and its encounter row, and
the matcher's provider row, each built by SQLModel's constructor and by ``store.fresh``
in turn (docs/performance.md, "Rows made without SQLModel's setattr"). The constructor
sends each field through pydantic's and SQLAlchemy's ``__setattr__``; ``fresh`` fills
the new row's dictionary, where the INSERT reads it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import SQLModel

from biox.store import EncounterRow, Transaction, fresh

AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

ROWS: dict[str, tuple[type[SQLModel], dict[str, Any]]] = {
    "intake's query row": (
        Transaction,
        {
            "query_id": "q-1",
            "role": "requester",
            "encounter_id": "e-1",
            "requesting": "us",
            "providing": "mx",
            "purpose": "enforce",
            "reply_to": "us.replies.sim",
            "created_at": AT,
            "sent_at": AT,
            "answer_due": AT + timedelta(seconds=30),
            "status": "pending",
            "retain_until": AT + timedelta(days=90),
        },
    ),
    "intake's encounter row": (
        EncounterRow,
        {
            "encounter_id": "e-1",
            "purpose": "enforce",
            "reply_to": "us.replies.sim",
            "partners": ["mx", "sv"],
            "skipped": {},
            "person_centric_id": None,
            "biographic": {"family_name": "Doe", "given_names": "Jane"},
            "encounter": {"country": "us", "type": "border"},
            "submitted_at": AT,
            "source_message_id": "m-1",
            "retain_until": AT + timedelta(days=90),
        },
    ),
    "the matcher's provider row": (
        Transaction,
        {
            "query_id": "q-1",
            "role": "provider",
            "encounter_id": "e-1",
            "requesting": "us",
            "providing": "mx",
            "purpose": "enforce",
            "created_at": AT,
            "sent_at": AT,
            "received_at": AT,
            "top_score": 0.42,
            "source": "us",
            "source_message_id": "m-2",
            "retain_until": AT + timedelta(days=90),
        },
    ),
}


def per_row(build: Callable[[], object], n: int) -> float:
    """CPU microseconds of one row, over ``n`` of them."""
    start = time.process_time()
    for _ in range(n):
        build()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="rows per timing")
    parser.add_argument("--rounds", type=int, default=5, help="timings per way, in turn")
    args = parser.parse_args()
    print("| row | constructor, us | store.fresh, us |\n| --- | ---: | ---: |")
    for name, (model, values) in ROWS.items():
        ways: dict[str, list[float]] = {"constructor": [], "fresh": []}
        for _ in range(args.rounds):
            ways["constructor"].append(per_row(lambda m=model, v=values: m(**v), args.rows))
            ways["fresh"].append(per_row(lambda m=model, v=values: fresh(m, **v), args.rows))
        built, made = statistics.median(ways["constructor"]), statistics.median(ways["fresh"])
        print(f"| {name} | {built:.1f} | {made:.1f} |")


if __name__ == "__main__":
    main()
