"""Where an encounter's time goes between its arrival and its result, hop by hop
(docs/performance.md, "Where the latency goes").

A latency run's figures say how long encounters took, not where. Each hop here ends at
a time a process of the exchange wrote down anyway, so nothing is added to what is
measured:

* ``to intake``: from the encounter's arrival to intake's handler (the requester's
  ``transactions.sent_at``): the encounter system's publish, the broker, the wait in
  ``intake``'s queue and the admission of the batch it came in;
* ``intake to matcher``: the rest of intake's batch, its commit, the query's publish and
  confirm, the broker (and the link between brokers where there are several), the wait
  in the provider's queue, admission, the matcher's catch-up (``timings.received_at`` of
  the response, the matcher's handler starting its batch);
* ``matcher's batch``: the matcher's handler from the start of the batch to this query's
  answer (``timings.answered_at``): the batch's search and answers, so a query in a large
  batch waits for the others;
* ``matcher to response``: the rest of the matcher's batch, its commit, the response's
  publish, the broker, the wait in ``response``'s queue and admission (the requester's
  ``transactions.received_at``);
* ``response to result``: the response worker's batch, its commit, the result's publish
  and the broker, until the encounter system received the final result.

The clocks are the machine's one clock read by different processes (the brokers of the
sovereign layout run on the same machine), so the hops add up to the latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
from sqlmodel import col, select

from biox.database import session_for
from biox.store import Transaction

HOPS = (
    "to intake",
    "intake to matcher",
    "matcher's batch",
    "matcher to response",
    "response to result",
)


@dataclass(frozen=True)
class Timed:
    """An encounter of a latency run: when it arrived (wall clock, seconds since the
    epoch) and how long until its final result."""

    arrived: float
    latency_s: float


def _seconds(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def spans(database_url: str, timed: dict[str, Timed]) -> list[list[float]]:
    """Per encounter answered, its latency and then each hop of ``HOPS``, in ms.

    An encounter asked of several partners is timed through the answer that came last
    (the one that completed it); encounters refused, unanswered or answered without
    timings (a decline before the search) are left out."""
    last: dict[str, Transaction] = {}
    ids = list(timed)
    with session_for(database_url) as session:
        for start in range(0, len(ids), 500):
            for tx in session.exec(
                select(Transaction).where(
                    Transaction.role == "requester",
                    col(Transaction.encounter_id).in_(ids[start : start + 500]),
                )
            ):
                kept = last.get(tx.encounter_id)
                if tx.received_at is not None and (
                    kept is None or kept.received_at is None or tx.received_at > kept.received_at
                ):
                    last[tx.encounter_id] = tx
    rows = []
    for encounter_id, tx in last.items():
        timings = (tx.answer or {}).get("timings") or {}
        marks = [
            _seconds(tx.sent_at),
            _seconds(timings.get("received_at")),
            _seconds(timings.get("answered_at")),
            _seconds(tx.received_at),
        ]
        known = [m for m in marks if m is not None]
        if len(known) < len(marks):
            continue
        t = timed[encounter_id]
        points = [t.arrived, *known, t.arrived + t.latency_s]
        rows.append([t.latency_s * 1000] + [(b - a) * 1000 for a, b in pairwise(points)])
    return rows


def summary(rows: list[list[float]]) -> dict:
    """Each hop's median, and its mean over the slowest 1 % of encounters (those at or
    above the 99th percentile of latency): where the typical encounter spends its time,
    and where the tail does."""
    if not rows:
        return {}
    table = np.array(rows)
    slowest = table[table[:, 0] >= np.percentile(table[:, 0], 99)]
    return {
        "encounters": len(rows),
        "slowest": len(slowest),
        "p50_ms": {h: round(float(np.median(table[:, i + 1])), 1) for i, h in enumerate(HOPS)},
        "slowest_mean_ms": {
            h: round(float(slowest[:, i + 1].mean()), 1) for i, h in enumerate(HOPS)
        },
    }


def of_run(database_url: str, timed: dict[str, Timed]) -> dict:
    """``summary`` of a latency run, read from the requester's database."""
    return summary(spans(database_url, timed))
