"""The annual review (§27): volume, outcomes and timeliness per partner and purpose, from a
participant's own rows, for a period. ``biox report`` prints it as a table, JSON or an
HTML page with charts (``agreement/report_page.py``).

Queries sent are counted on the requester's transactions (when sent), queries answered
on the provider's (when received); refusals from the ``refusals`` table; review ages from
the review cases; notices from the notices ledger.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nacl.exceptions import BadSignatureError
from sqlmodel import Session, col, select

from biox.agreement.ledgers import NoticeRow, RefusalRow
from biox.agreement.measures import Measures
from biox.store import ReviewCaseRow, Transaction
from biox.trust.sealing import KeyRing, Trust


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
    #: outcomes as the requester was told them: a concealed decline is a no_match here
    answered_as: Counter[str] = field(default_factory=Counter)
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
        # not dataclasses.asdict: it rebuilds a Counter from its items, counting the pairs
        out = {k: v for k, v in vars(self).items() if k not in ("flows", "latencies_s")}
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        out["flows"] = [
            {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(f).items()}
            for f in self.flows
        ]
        for f in out["flows"]:
            f.pop("_latencies", None)
        return out


def build(
    session: Session,
    me: str,
    start: datetime,
    end: datetime,
    ps: tuple[int, ...] = (50, 95, 99),
) -> Report:
    """The review of ``[start, end)``; ``ps``: the percentiles the agreement measures."""
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
        # as the requester was told: an answer its provider had deleted since (§22) was
        # still given, so both sides count it as what it said
        told = (tx.withdrawn_from or tx.status) if mine else (tx.answer or {}).get("status")
        told = told or tx.status
        flow.answered_as[told or "pending"] += 1
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
        flow.latency_s = percentiles(flow._latencies, ps)
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


# --- a review both sides can check: signed, and reconciled with the partner's -------------

_CONTEXT = "biox-annual-review-v1"
#: outcomes final on both sides, compared by a reconciliation
FINAL = ("match", "no_match", "declined", "rejected")


def _canonical(review: dict[str, Any]) -> bytes:
    body = {k: v for k, v in review.items() if k != "signed"}
    return json.dumps([_CONTEXT, body], sort_keys=True, default=str).encode()


def signed(rep: Report, ring: KeyRing, measures: Measures) -> dict[str, Any]:
    """The review as JSON, naming the measures it was made under, signed with the
    participant's key: what it hands its partner for reconciliation (§27)."""
    out = rep.as_json()
    out["measures_sha256"] = measures.digest
    signature = ring.signing.sign(_canonical(out)).signature
    out["signed"] = {"key_id": ring.kid, "signature": base64.b64encode(signature).decode()}
    return out


def genuine(trust: Trust, review: dict[str, Any]) -> bool:
    """Signed by a key of the participant the review names."""
    sig = review.get("signed") or {}
    key = trust.keys.get(str(sig.get("key_id")))
    if key is None or key.code != review.get("participant"):
        return False
    try:
        key.verify.verify(_canonical(review), base64.b64decode(str(sig.get("signature"))))
    except (BadSignatureError, ValueError):
        return False
    return True


class NotComparable(Exception):
    """Two reviews that cannot be reconciled at all, and why."""


def reconcile(
    mine: dict[str, Any], theirs: dict[str, Any], trust: Trust, measures: Measures
) -> list[str]:
    """The differences between our review and the partner's signed one of the same
    period, pair direction by purpose: what one sent the other must have answered, and
    with the outcomes it answered (as the requester was told them)."""
    if not genuine(trust, theirs):
        raise NotComparable(f"the review of {theirs.get('participant')!r} is not signed by it")
    if (mine["start"], mine["end"]) != (theirs["start"], theirs["end"]):
        raise NotComparable(
            f"periods differ: ours {mine['start']}..{mine['end']}, "
            f"theirs {theirs['start']}..{theirs['end']}"
        )
    if theirs.get("measures_sha256") != measures.digest:
        raise NotComparable("the reviews were made under different measures (agreement.toml)")
    me, them = mine["participant"], theirs["participant"]

    def flows(review: dict[str, Any], partner: str, direction: str) -> dict[str, dict[str, Any]]:
        return {
            f["purpose"]: f
            for f in review["flows"]
            if f["partner"] == partner and f["direction"] == direction
        }

    out: list[str] = []
    for asker, answerer, sent, answered in (
        (me, them, flows(mine, them, "sent"), flows(theirs, me, "answered")),
        (them, me, flows(theirs, me, "sent"), flows(mine, them, "answered")),
    ):
        for purpose in sorted(set(sent) | set(answered)):
            s, a = sent.get(purpose, {}), answered.get(purpose, {})
            if "queries" in measures.review.reconcile and s.get("queries", 0) != a.get(
                "queries", 0
            ):
                out.append(
                    f"{asker}→{answerer} {purpose}: {asker} sent {s.get('queries', 0)}, "
                    f"{answerer} answered {a.get('queries', 0)}"
                )
            if "outcomes" in measures.review.reconcile:
                for outcome in FINAL:
                    got = (s.get("answered_as") or {}).get(outcome, 0)
                    gave = (a.get("answered_as") or {}).get(outcome, 0)
                    if got != gave:
                        out.append(
                            f"{asker}→{answerer} {purpose} {outcome}: {asker} holds {got}, "
                            f"{answerer} answered {gave}"
                        )
    return out
