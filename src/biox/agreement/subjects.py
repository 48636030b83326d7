"""Subject requests (§25): find everything kept about a person, across every table, each
piece with where it came from; note on a row that its subject asked; and turn a request
to correct data a partner sent into a notice to that partner.

Searches read the biographic fields through the database's JSON operators (SQLite and
PostgreSQL alike), so a search does not load the gallery; answers received from partners
hold their records inside a list and are read row by row, answered queries only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from biox.agreement.ledgers import NotationRow
from biox.store import EncounterRow, Record, RetrievalRow, ReviewCaseRow, Transaction
from biox.wire import codec
from biox.wire.codec import Outgoing
from biox.wire.operations import PersonalDataRead


@dataclass(frozen=True)
class Terms:
    name: str | None = None
    date_of_birth: str | None = None
    document: str | None = None
    ref: str | None = None

    def empty(self) -> bool:
        return not (self.name or self.date_of_birth or self.document or self.ref)

    def fits(self, bio: dict[str, Any] | None, refs: tuple[str | None, ...] = ()) -> bool:
        """The Python side of the same test the SQL filter makes."""
        bio = bio or {}
        if self.ref and self.ref not in refs:
            return False
        if self.name:
            names = " ".join(str(bio.get(k) or "") for k in ("family_name", "given_names"))
            if self.name.lower() not in names.lower():
                return False
        if self.date_of_birth and not str(bio.get("date_of_birth") or "").startswith(
            self.date_of_birth
        ):
            return False
        return not (self.document and bio.get("document_number") != self.document)


@dataclass
class Found:
    """One kept row about the subject."""

    table: str
    key: str
    source: str | None
    biographic: dict[str, Any]
    retain_until: datetime | None
    blocked: bool
    notes: list[str]


def _where(column: Any, terms: Terms) -> list[Any]:
    clauses: list[Any] = []
    if terms.name:
        like = f"%{terms.name.lower()}%"
        clauses.append(
            or_(
                func.lower(column["family_name"].as_string()).like(like),
                func.lower(column["given_names"].as_string()).like(like),
            )
        )
    if terms.date_of_birth:
        clauses.append(column["date_of_birth"].as_string().like(f"{terms.date_of_birth}%"))
    if terms.document:
        clauses.append(column["document_number"].as_string() == terms.document)
    return clauses


def _filtered(table: Any, key: Any, biographic: Any, terms: Terms) -> Any:
    """A table whose rows have a key and a biographic column: filtered in SQL."""
    query = select(table)
    if terms.ref:
        query = query.where(key == terms.ref)
    return query.where(*_where(biographic, terms))


def search(session: Session, terms: Terms) -> list[Found]:
    if terms.empty():
        return []
    found: list[Found] = []
    for r in session.exec(_filtered(Record, Record.identity_ref, Record.biographic, terms)):
        found.append(
            Found(
                "records",
                r.identity_ref,
                r.source,
                r.biographic,
                r.retain_until,
                r.blocked_at is not None,
                [],
            )
        )
    kept = _filtered(EncounterRow, EncounterRow.encounter_id, EncounterRow.biographic, terms)
    for e in session.exec(kept):
        found.append(
            Found("encounters", e.encounter_id, None, e.biographic, e.retain_until, False, [])
        )
    for c in session.exec(select(ReviewCaseRow)):
        if terms.fits(c.probe_biographic, (c.case_id, c.query_id)):
            found.append(
                Found(
                    "review_cases",
                    c.case_id,
                    c.source,
                    c.probe_biographic,
                    c.retain_until,
                    False,
                    [],
                )
            )
    for rr in session.exec(select(RetrievalRow).where(RetrievalRow.role == "asker")):
        if not rr.data:  # JSON null: nothing received
            continue
        bio = (rr.data or {}).get("biographic") or {}
        if terms.fits(bio, (rr.identity_ref, rr.query_id, (rr.data or {}).get("identity_ref"))):
            found.append(
                Found(
                    "retrievals",
                    rr.retrieval_id,
                    rr.source,
                    bio,
                    rr.retain_until,
                    rr.blocked_at is not None,
                    [],
                )
            )
    answered = select(Transaction).where(Transaction.role == "requester")
    for tx in session.exec(answered):
        for c in (tx.answer or {}).get("candidates", []):
            bio = (c.get("record") or {}).get("biographic") or {}
            if terms.fits(bio, (c.get("identity_ref"), tx.query_id, tx.encounter_id)):
                found.append(
                    Found(
                        "transactions",
                        f"{tx.query_id}/{c.get('identity_ref')}",
                        tx.source,
                        bio,
                        tx.retain_until,
                        tx.blocked_at is not None,
                        [],
                    )
                )
    _with_notes(session, found)
    return found


def _with_notes(session: Session, found: list[Found]) -> None:
    keys = {f.key for f in found}
    if not keys:
        return
    notes: dict[tuple[str, str], list[str]] = {}
    for n in session.exec(select(NotationRow).where(col(NotationRow.key).in_(keys))):
        notes.setdefault((n.table, n.key), []).append(f"{n.at:%Y-%m-%d} {n.by}: {n.text}")
    for f in found:
        f.notes = notes.get((f.table, f.key), [])


def note(session: Session, table: str, key: str, text: str, by: str) -> NotationRow:
    row = NotationRow(table=table, key=key, text=text, by=by)
    session.add(row)
    return row


def read_event(me: str, command: str, terms: dict[str, object], shown: int, who: str) -> Outgoing:
    """The audit trail's record of a read of personal data: who, which command, a digest
    of what was asked, how many rows were shown; never the terms or the rows."""
    digest = hashlib.sha256(json.dumps(terms, sort_keys=True, default=str).encode()).hexdigest()
    event = PersonalDataRead(command=command, terms_sha256=digest, shown=shown)
    return codec.from_person(event, participant=me, actor=who)
