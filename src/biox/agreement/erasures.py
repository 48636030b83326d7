"""What a partner had us delete stays deleted (§22; docs/lifecycle.md, "A deletion is
final"): each item a deletion notice names leaves an erasure, and every later path that
could store or send it again asks here first.

The paths are the ones a copy can come back by: the same answer retried, or replayed from
a dead letter, or imported from an export file (response worker, ``dlq replay``,
``dlq import``); a retrieval response (retrieval worker); a query's data enrolled or put
before an examiner (matcher, review worker); a result held for an encounter system
(``encounters redeliver`` and the sweep). An item is named as the notice named it: by the
query it belongs to, the message that carried it, or the record it became, always under
the participant it came from, so one partner's notice never erases another's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from biox.agreement.ledgers import ErasureRow
from biox.wire.notices import About

QUERY, MESSAGE, RECORD = "query", "message", "record"


def named(about: About) -> list[tuple[str, str]]:
    """The items ``about`` names, as (kind, key)."""
    return [
        *((QUERY, q) for q in about.query_ids),
        *((MESSAGE, m) for m in about.message_ids),
        *((RECORD, r) for r in about.identity_refs),
    ]


def erase(session: Session, source: str, items: Iterable[tuple[str, str]], cause: str) -> int:
    """An erasure for every item not erased already (not committed); how many are new."""
    wanted = set(items)
    if not wanted:
        return 0
    held = _held(session, [source], {key for _kind, key in wanted})
    new = sorted(wanted - {(kind, key) for _source, kind, key in held})
    session.add_all(ErasureRow(source=source, kind=kind, key=key, cause=cause) for kind, key in new)
    return len(new)


def _held(
    session: Session, sources: Iterable[str], keys: Iterable[str]
) -> set[tuple[str, str, str]]:
    keys = list(keys)
    if not keys:
        return set()
    rows = session.exec(
        select(ErasureRow.source, ErasureRow.kind, ErasureRow.key).where(
            col(ErasureRow.source).in_(list(sources)), col(ErasureRow.key).in_(keys)
        )
    )
    return {(s, k, key) for s, k, key in rows}


@dataclass(frozen=True)
class Erased:
    """The erasures among the items one batch or one sweep is about to touch, loaded in
    one query: (source, kind, key)."""

    items: frozenset[tuple[str, str, str]]

    @classmethod
    def of_messages(
        cls, session: Session, messages: Iterable[tuple[str, str | None, str | None]]
    ) -> Erased:
        """The erasures among what these messages may be erased as: each (sender, query
        id, message id) names its query and itself (either may be None)."""
        wanted = {item for m in messages for item in _items(*m)}
        if not wanted:
            return cls(frozenset())
        held = _held(session, {s for s, _k, _key in wanted}, {key for _s, _k, key in wanted})
        return cls(frozenset(held & wanted))

    def query(self, source: str, query_id: str | None) -> bool:
        return query_id is not None and (source, QUERY, query_id) in self.items

    def message(self, source: str, message_id: str | None) -> bool:
        return message_id is not None and (source, MESSAGE, message_id) in self.items

    def any(self, source: str, query_id: str | None = None, message_id: str | None = None) -> bool:
        return self.query(source, query_id) or self.message(source, message_id)


def _items(source: str, query_id: str | None, message_id: str | None) -> list[tuple[str, str, str]]:
    """The items an exchange message may be erased as: its query and itself."""
    out = []
    if query_id:
        out.append((source, QUERY, query_id))
    if message_id:
        out.append((source, MESSAGE, message_id))
    return out
