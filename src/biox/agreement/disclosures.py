"""Disclosures outside the exchange (§14-15): data a participant received goes to a third
state, an international body or a private entity only with the providing participant's
consent (§15), or when its law compels it, with notice to the provider (§14). Each
disclosure is logged with the notice that allows or announces it.

A consent or a notice is bound to what it names (docs/lifecycle.md, "Disclosures"): the
records (by reference), the recipient, and for a consent the purpose. One yes covers
those records to that recipient for that purpose, nothing else; a compelled disclosure
stands only on a notice we sent about those records and that recipient.
"""

from __future__ import annotations

from sqlmodel import Session, select

from biox.agreement.corrections import answers_releasing
from biox.agreement.ledgers import DisclosureRow, NoticeRow
from biox.store import Record, RetrievalRow


class NotAllowed(Exception):
    """Why a disclosure may not be made (or logged) as asked."""


def source_of(session: Session, identity_ref: str) -> str | None:
    """Where the data kept under ``identity_ref`` came from: a gallery record, a record a
    partner released in an answer to our query, or what a partner released to our
    retrieval (§20). None: nothing is kept under it."""
    rec = session.exec(select(Record).where(Record.identity_ref == identity_ref)).first()
    if rec is not None:
        return rec.source
    answer = next(iter(answers_releasing(session, [identity_ref])), None)
    if answer is not None:
        return answer.source or answer.providing
    for r in session.exec(select(RetrievalRow).where(RetrievalRow.role == "asker")):
        if r.data and r.data.get("identity_ref") == identity_ref:
            return r.source or r.holder
    return None


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").strip().casefold() == (b or "").strip().casefold()


def _bound(row: NoticeRow, identity_ref: str, recipient: str) -> None:
    """The notice names this record and this recipient."""
    if identity_ref not in (row.about or {}).get("identity_refs", []):
        raise NotAllowed(f"{row.type} {row.notice_id} is not about {identity_ref}")
    if not _same(row.details.get("disclose_to"), recipient):
        named = row.details.get("disclose_to")
        raise NotAllowed(f"{row.type} {row.notice_id} names {named!r}, not {recipient!r}")


def consent_for(
    session: Session,
    source: str,
    consent_request: str | None,
    identity_ref: str,
    recipient: str,
    purpose: str | None,
) -> NoticeRow:
    """The consent request we sent ``source`` about this record, this recipient and this
    purpose, answered yes."""
    row = session.get(NoticeRow, consent_request or "")
    if row is None or row.direction != "out" or row.type != "consent_request":
        raise NotAllowed(f"no consent request {consent_request!r} of ours")
    if row.partner != source:
        raise NotAllowed(f"consent request {row.notice_id} went to {row.partner}, not {source}")
    if row.status != "answered" or row.details.get("consent") is not True:
        raise NotAllowed(f"{source} has not consented ({row.status}, {row.details})")
    _bound(row, identity_ref, recipient)
    asked = row.details.get("disclose_purpose")
    if asked and not _same(asked, purpose):
        raise NotAllowed(f"consent {row.notice_id} is for {asked!r}, not {purpose!r}")
    return row


def compelled_notice(
    session: Session, source: str, notice_id: str | None, identity_ref: str, recipient: str
) -> NoticeRow:
    """The compelled-disclosure notice we sent ``source`` about this record and recipient."""
    if not notice_id:
        raise NotAllowed("a compelled disclosure is announced to the source first (§14)")
    row = session.get(NoticeRow, notice_id)
    if row is None or row.direction != "out" or row.type != "compelled_disclosure":
        raise NotAllowed(f"no compelled_disclosure notice {notice_id!r} sent by us (§14)")
    if row.partner != source:
        raise NotAllowed(f"notice {notice_id} went to {row.partner}, not {source}")
    _bound(row, identity_ref, recipient)
    return row


def why_not(session: Session, me: str, d: DisclosureRow) -> str | None:
    """Why a logged disclosure does not stand (``qa``); None when it does."""
    if d.source == me:
        return None
    try:
        if d.basis == "consent":
            consent_for(session, d.source, d.notice_id, d.identity_ref, d.recipient, d.purpose)
        elif d.basis == "compelled":
            compelled_notice(session, d.source, d.notice_id, d.identity_ref, d.recipient)
        else:
            return f"basis {d.basis!r} for {d.source}'s data"
    except NotAllowed as exc:
        return str(exc)
    return None


def record(
    session: Session,
    me: str,
    identity_ref: str,
    recipient: str,
    basis: str,
    by: str,
    notice_id: str | None = None,
    purpose: str | None = None,
) -> DisclosureRow:
    """Logs a disclosure of ``identity_ref`` (not committed); refuses partner data without
    a consent or a compelled-disclosure notice bound to it (``consent_for``)."""
    source = source_of(session, identity_ref)
    if source is None:
        raise NotAllowed(f"{me} keeps nothing under {identity_ref}")
    if source == me:
        basis, notice_id = "own_data", None
    elif basis == "consent":
        notice_id = consent_for(
            session, source, notice_id, identity_ref, recipient, purpose
        ).notice_id
    elif basis == "compelled":
        notice_id = compelled_notice(session, source, notice_id, identity_ref, recipient).notice_id
    else:
        raise NotAllowed(f"{identity_ref} came from {source}: consent or compelled (§14-15)")
    row = DisclosureRow(
        recipient=recipient,
        identity_ref=identity_ref,
        source=source,
        basis=basis,
        notice_id=notice_id,
        purpose=purpose,
        by=by,
    )
    session.add(row)
    return row
