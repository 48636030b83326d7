"""The participants' live state: the registry file seeds it, notices change it (§12, §34,
§36), and every handler reads it at each batch, so a worker acts on a discontinuation
without a restart (docs/workflows.md, "Notices").

The file says who takes part and what each pair agreed; the ``participants`` table says
whether each is active now and who to call. A status in the file is read once, when the
participant is first seen; after that only a notice or an operator changes it, and each
change is kept in ``participant_events`` with its cause.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from biox.agreement.ledgers import ParticipantEvent
from biox.registry import Registry, Status
from biox.store import ParticipantRow
from biox.wire.messages import utcnow
from biox.wire.notices import NoticeSend, NoticeType


def sync(session: Session, registry: Registry, attempts: int = 5) -> None:
    """Adds the participants the table does not know yet (workers may race to do it);
    never overwrites a live status."""
    for attempt in range(attempts):
        try:
            known = {r.code for r in session.exec(select(ParticipantRow))}
            for p in registry.participants.values():
                if p.code in known:
                    continue
                contacts = dict(p.contacts)
                session.add(
                    ParticipantRow(
                        code=p.code, agency=p.agency, status=p.status.value, contacts=contacts
                    )
                )
                session.add(
                    ParticipantEvent(
                        code=p.code, status=p.status.value, contacts=contacts, cause="registry"
                    )
                )
            session.commit()
            return
        except (IntegrityError, OperationalError):
            session.rollback()
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


class Live:
    """The registry as it stands now: the file's agreements with the table's statuses and
    contacts. Rebuilt only when the table (or the file's registry object) changed since the
    last batch: one small read per batch."""

    def __init__(self, refresh_s: float = 0.0) -> None:
        """``refresh_s``: read the table at most this often (workers: BIOX_REGISTRY_REFRESH_S);
        0 reads it at every batch."""
        self.refresh_s = refresh_s
        self._base: Registry | None = None
        self._key: tuple[tuple[str, str, str], ...] = ()
        self._now: Registry | None = None
        self._read_at = float("-inf")

    def now(self, registry: Registry, session: Session) -> Registry:
        fresh = time.monotonic() - self._read_at < self.refresh_s
        if self._now is not None and self._base is registry and fresh:
            return self._now
        self._read_at = time.monotonic()
        rows = session.exec(select(ParticipantRow)).all()
        key = tuple(
            sorted((r.code, r.status, repr(sorted((r.contacts or {}).items()))) for r in rows)
        )
        if self._now is None or self._base is not registry or key != self._key:
            self._base, self._key = registry, key
            self._now = overlay(registry, rows) if rows else registry
        return self._now


def overlay(registry: Registry, rows: Sequence[ParticipantRow]) -> Registry:
    live = registry.model_copy(deep=True)
    for r in rows:
        p = live.participants.get(r.code)
        if p is None:
            continue
        p.status = Status(r.status)
        if r.contacts:
            p.contacts = dict(r.contacts)
    return live


def status_of(session: Session, code: str) -> Status:
    """``code``'s live status (``KeyError`` for a code the table does not hold)."""
    row = session.get(ParticipantRow, code)
    if row is None:
        raise KeyError(code)
    return Status(row.status)


def set_status(
    session: Session, code: str, status: Status, cause: str, note: str | None = None
) -> bool:
    """Changes ``code``'s live status (not committed); False when it already had it."""
    row = session.get(ParticipantRow, code)
    if row is None:
        raise KeyError(code)
    if row.status == status.value:
        return False
    row.status, row.updated_at = status.value, utcnow()
    session.add(row)
    session.add(ParticipantEvent(code=code, status=status.value, cause=cause, note=note))
    return True


def set_contacts(
    session: Session, code: str, contacts: dict[str, str], cause: str, note: str | None = None
) -> None:
    row = session.get(ParticipantRow, code)
    if row is None:
        raise KeyError(code)
    row.contacts = {**(row.contacts or {}), **contacts}
    row.updated_at = utcnow()
    session.add(row)
    session.add(
        ParticipantEvent(
            code=code, status=row.status, contacts=row.contacts, cause=cause, note=note
        )
    )


def history(session: Session, code: str | None = None) -> list[ParticipantEvent]:
    q = select(ParticipantEvent).order_by(col(ParticipantEvent.id))
    if code is not None:
        q = q.where(ParticipantEvent.code == code)
    return list(session.exec(q))


def since(session: Session, code: str, status: Status) -> datetime | None:
    """When ``code`` last took ``status`` (None: it never did)."""
    events = [e for e in history(session, code) if e.status == status.value]
    return events[-1].at if events else None


def readiness(registry: Registry, me: str, actor: str, to: Sequence[str] = ()) -> list[NoticeSend]:
    """§34: ``me``'s notices to its partners that it is prepared to begin operations, one
    to each partner it has an agreement with (``to``: only these). Participation with a
    partner commences once both sides have sent theirs."""
    linked = registry.linked(me)
    unknown = [c for c in to if c not in linked]
    if unknown:
        raise ValueError(f"{me} has no agreement with {', '.join(unknown)}")
    return [
        NoticeSend(
            type=NoticeType.readiness,
            to=partner,
            actor=actor,
            text=f"§34: {me} is prepared to begin operations",
        )
        for partner in (to or linked)
    ]
