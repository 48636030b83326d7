"""The annual review (§27): volume, outcomes and timeliness per partner and purpose, from a
participant's own rows, for a period. ``biox report`` prints it as a table, JSON or an
HTML page with charts (``agreement/report_page.py``).

Queries sent are counted on the requester's transactions (when sent), queries answered
on the provider's (when received); refusals from the ``refusals`` table; review ages from
the review cases; notices from the notices ledger.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from biox.agreement.ledgers import NoticeRow, RefusalRow
from biox.store import ReviewCaseRow, Transaction


def percentiles(values: list[float], ps: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, in the values' unit (empty: none)."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for p in ps:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n)
        out[f"p{p}"] = round(ordered[rank - 1], 3)
    return out


@dataclass
class Flow:
    """One direction with one partner for one purpose."""

    partner: str
    purpose: str
    direction: str  # sent (we asked) | answered (they asked us)
    queries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    decided_by: Counter[str] = field(default_factory=Counter)
    latency_s: dict[str, float] = field(default_factory=dict)
    _latencies: list[float] = field(default_factory=list, repr=False)


@dataclass
class Report:
    participant: str
    start: datetime
    end: datetime
    flows: list[Flow]
    per_month: dict[str, dict[str, int]]
    refusals: dict[str, int]
    review: dict[str, Any]
    notices: dict[str, Any]
    latencies_s: dict[str, list[float]]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        for f in out["flows"]:
            f.pop("_latencies", None)
        out.pop("latencies_s")
        return out


def build(session: Session, me: str, start: datetime, end: datetime) -> Report:
    flows: dict[tuple[str, str, str], Flow] = {}
    per_month: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "answered": 0})
    latencies: dict[str, list[float]] = {"sent": [], "answered": []}
    txs = session.exec(select(Transaction)).all()
    for tx in txs:
        mine = tx.role == "requester"
        when = tx.sent_at if mine else tx.received_at or tx.created_at
        if when is None or not (start <= when < end):
            continue
        direction = "sent" if mine else "answered"
        partner = tx.providing if mine else tx.requesting
        flow = flows.setdefault(
            (partner, tx.purpose, direction), Flow(partner, tx.purpose, direction)
        )
        flow.queries += 1
        flow.outcomes[tx.status or "pending"] += 1
        if tx.reason_code:
            flow.reasons[tx.reason_code] += 1
        decided = (tx.answer or {}).get("decided_by")
        if decided:
            flow.decided_by[decided] += 1
        begin = tx.sent_at if mine else tx.received_at
        finish = tx.received_at if mine else tx.answered_at
        if begin and finish and tx.status not in (None, "pending", "pending_review"):
            seconds = (finish - begin).total_seconds()
            flow._latencies.append(seconds)
            latencies[direction].append(seconds)
        per_month[f"{when:%Y-%m}"][direction] += 1
    for flow in flows.values():
        flow.latency_s = percentiles(flow._latencies)
    refusals = Counter(
        r.reason for r in session.exec(select(RefusalRow)) if start <= (r.at or start) < end
    )
    return Report(
        participant=me,
        start=start,
        end=end,
        flows=sorted(flows.values(), key=lambda f: (f.direction, f.partner, f.purpose)),
        per_month=dict(sorted(per_month.items())),
        refusals=dict(refusals.most_common()),
        review=_review(session, start, end),
        notices=_notices(session, start, end),
        latencies_s=latencies,
    )


def _review(session: Session, start: datetime, end: datetime) -> dict[str, Any]:
    cases = [
        c for c in session.exec(select(ReviewCaseRow)) if start <= (c.opened_at or start) < end
    ]
    now = datetime.now(UTC)
    decided = [
        ((c.decided_at or now) - (c.opened_at or now)).total_seconds() / 3600
        for c in cases
        if c.decided_at
    ]
    open_ages = [
        (now - (c.opened_at or now)).total_seconds() / 3600 for c in cases if c.status != "decided"
    ]
    return {
        "cases": len(cases),
        "by_status": dict(Counter(c.status for c in cases)),
        "by_examiner": dict(Counter(c.examiner for c in cases if c.examiner)),
        "hours_to_decide": percentiles(decided),
        "open_hours": percentiles(open_ages),
    }


def _notices(session: Session, start: datetime, end: datetime) -> dict[str, Any]:
    rows = session.exec(select(NoticeRow).order_by(col(NoticeRow.sent_at))).all()
    rows = [r for r in rows if start <= (r.sent_at or start) < end]
    now = datetime.now(UTC)
    overdue = [
        r.notice_id
        for r in rows
        if r.respond_by and (r.respond_by or now) < now and r.status in ("sent", "received")
    ]
    return {
        "count": len(rows),
        "by_type": dict(Counter(f"{r.direction}:{r.type}" for r in rows)),
        "by_status": dict(Counter(r.status for r in rows)),
        "overdue": overdue,
    }
