"""Quality assurance (§28): the checks a participant runs on itself, each finding named
with where to look. ``biox qa`` exits non-zero on any finding.

* expired data still present (§21): retention has not run;
* partner data without provenance (§20): a kept answer, retrieval or record from a
  partner that does not say which message brought it;
* released data that came from a third participant (§15): one of our answers carried a
  record whose source is neither us nor the requester;
* overdue notices (§15, §22-25), incidents (§17) and review cases (§8);
* a disclosure outside the exchange of partner data without consent or notice (§14-15);
* the audit chain (§28): altered, removed, inserted or reordered entries;
* need to know (§16): each audited read of personal data by someone whose duties
  (``BIOX_STAFF``, as it stands now) do not cover the command, or under a broker
  identity that is not a person of ours. Not checked on the shared development broker,
  where everyone is ``guest``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from biox.agreement import disclosures, incidents, retention
from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.queries import examiners
from biox.store import AuditEntry, Record, RetrievalRow, ReviewCaseRow, Transaction
from biox.trust import audit
from biox.trust.staff import NEEDS, Staff, person_of
from biox.wire.operations import PersonalDataRead


@dataclass(frozen=True)
class Finding:
    check: str
    detail: str


def late_notices(rows: list[NoticeRow], now: datetime) -> list[NoticeRow]:
    """Notices past their date: ours unacknowledged, or theirs we have not acted on."""

    def due(r: NoticeRow) -> bool:
        return r.respond_by is not None and r.respond_by < now

    waiting = {("out", "sent"), ("in", "received")}
    return [r for r in rows if due(r) and (r.direction, r.status) in waiting]


def run(
    session: Session,
    me: str,
    now: datetime,
    review_overdue_s: float,
    enabled: Iterable[str] | None = None,
    staff: Staff | None = None,
) -> list[Finding]:
    """Every finding of the checks ``enabled`` (the agreement's, ``measures.Checks``;
    None: all). ``staff``: whose duties reads are held to (None: reads are not checked,
    as on the shared development broker)."""
    chosen = set(enabled) if enabled is not None else None
    found = _all(session, me, now, review_overdue_s)
    if staff is not None:
        found += _reads_without_duty(session, me, staff)
    return [f for f in found if chosen is None or f.check in chosen]


def _all(session: Session, me: str, now: datetime, review_overdue_s: float) -> list[Finding]:
    found: list[Finding] = []
    for table, n in retention.expired(session, now).items():
        found.append(Finding("expired", f"{n} row(s) of {table} past their retention date"))
    found += _without_provenance(session, me)
    found += _third_party_releases(session, me)
    for r in late_notices(list(session.exec(select(NoticeRow))), now):
        what = f"{r.direction} {r.type} {r.notice_id} ({r.partner}) was due {r.respond_by}"
        found.append(Finding("notice_overdue", what))
    for late in incidents.overdue(session, now):
        found.append(
            Finding(
                "incident_overdue",
                f"{late.incident.incident_id}: {late.partner} not notified within 48 hours (§17)",
            )
        )
    cases = list(session.exec(select(ReviewCaseRow)))
    for c in examiners.overdue(cases, review_overdue_s):
        found.append(Finding("review_overdue", f"case {c.case_id} open since {c.opened_at}"))
    for d in session.exec(select(DisclosureRow)):
        why = disclosures.why_not(session, me, d)
        if why is not None:
            what = f"{d.identity_ref} from {d.source} disclosed to {d.recipient}: {why}"
            found.append(Finding("onward_disclosure", what))
    count, broken = audit.verify(session)
    if broken is not None:
        found.append(Finding("audit_chain", f"{broken} (of {count} entries)"))
    return found


def _reads_without_duty(session: Session, me: str, staff: Staff) -> list[Finding]:
    """The reader is the broker-validated user of the audit event, never its header."""
    found = []
    reads = select(AuditEntry).where(AuditEntry.kind == PersonalDataRead.KIND)
    for e in session.exec(reads.order_by(col(AuditEntry.seq))):
        where = f"audit #{e.seq} ({e.received_at:%Y-%m-%d %H:%M})"
        who = person_of(e.sender_user)
        if who is None or who[0] != me:
            what = f"{e.command} read as {e.sender_user!r}, not a person of {me}'s"
            found.append(Finding("need_to_know", f"{where}: {what}"))
            continue
        if e.command not in NEEDS:
            what = f"{who[1]} read by {e.command!r}, not a command of the staff table"
            found.append(Finding("need_to_know", f"{where}: {what}"))
            continue
        why = staff.refusal(me, who[1], e.command)
        if why is not None:
            found.append(Finding("need_to_know", f"{where}: {why}"))
    return found


def _without_provenance(session: Session, me: str) -> list[Finding]:
    found = []
    # a JSON column keeps None as JSON null, so "has data" is asked of each row
    for tx in session.exec(select(Transaction).where(Transaction.role == "requester")):
        if tx.answer and (not tx.source or not tx.source_message_id):
            found.append(Finding("provenance", f"answer to query {tx.query_id} has no source"))
    for rr in session.exec(select(RetrievalRow).where(RetrievalRow.role == "asker")):
        if rr.data and (not rr.source or not rr.source_message_id):
            found.append(Finding("provenance", f"retrieval {rr.retrieval_id} has no source"))
    for r in session.exec(
        select(Record).where(
            Record.source != me,
            col(Record.source_query_id).is_(None),
            col(Record.source_message_id).is_(None),
        )
    ):
        found.append(
            Finding(
                "provenance",
                f"record {r.identity_ref} from {r.source} names no query or message it came in",
            )
        )
    return found


def _third_party_releases(session: Session, me: str) -> list[Finding]:
    answers = session.exec(
        select(Transaction).where(Transaction.role == "provider", Transaction.status == "match")
    ).all()
    refs = {
        c["identity_ref"]: tx
        for tx in answers
        for c in (tx.answer or {}).get("candidates", [])
        if c.get("record")
    }
    if not refs:
        return []
    records = session.exec(select(Record).where(col(Record.identity_ref).in_(list(refs))))
    return [
        Finding(
            "onward_disclosure",
            f"record {r.identity_ref} from {r.source} was released to "
            f"{refs[r.identity_ref].requesting} in query "
            f"{refs[r.identity_ref].query_id} (§15)",
        )
        for r in records
        if r.source not in (me, refs[r.identity_ref].requesting)
    ]
