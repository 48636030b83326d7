"""Disclosures outside the exchange (§14-15): data a participant received goes to a third
state, an international body or a private entity only with the providing participant's
consent (§15), or when its law compels it, with notice to the provider (§14). Each
disclosure is logged with the notice that allows or announces it.
"""

from __future__ import annotations

from sqlmodel import Session, select

from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.store import Record


class NotAllowed(Exception):
    """Why a disclosure may not be made (or logged) as asked."""


def consent_for(session: Session, source: str, consent_request: str | None) -> NoticeRow:
    """The consent request we sent ``source``, answered yes."""
    row = session.get(NoticeRow, consent_request or "")
    if row is None or row.direction != "out" or row.type != "consent_request":
        raise NotAllowed(f"no consent request {consent_request!r} of ours")
    if row.partner != source:
        raise NotAllowed(f"consent request {row.notice_id} went to {row.partner}, not {source}")
    if row.status != "answered" or row.details.get("consent") is not True:
        raise NotAllowed(f"{source} has not consented ({row.status}, {row.details})")
    return row


def record(
    session: Session,
    me: str,
    identity_ref: str,
    recipient: str,
    basis: str,
    by: str,
    notice_id: str | None = None,
) -> DisclosureRow:
    """Logs a disclosure of ``identity_ref`` (not committed); refuses partner data without
    consent or a compelled-disclosure notice."""
    rec = session.exec(select(Record).where(Record.identity_ref == identity_ref)).first()
    if rec is None:
        raise NotAllowed(f"{me} keeps no record {identity_ref}")
    if rec.source == me:
        basis, notice_id = "own_data", None
    elif basis == "consent":
        notice_id = consent_for(session, rec.source, notice_id).notice_id
    elif basis == "compelled":
        if not notice_id:
            raise NotAllowed("a compelled disclosure is announced to the source first (§14)")
    else:
        raise NotAllowed(f"{identity_ref} came from {rec.source}: consent or compelled (§14-15)")
    row = DisclosureRow(
        recipient=recipient,
        identity_ref=identity_ref,
        source=rec.source,
        basis=basis,
        notice_id=notice_id,
        by=by,
    )
    session.add(row)
    return row
