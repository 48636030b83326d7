"""Scatter a query to the gallery's shards and gather their candidates into one answer
(docs/architecture.md, "Shards").

The query worker scatters one ``shard.search`` through its inbox, which the broker copies
to every shard's queue, and keeps a ``ScatterRow``; each shard sends back its best
candidates (``shard.hits``); the query worker that takes the last of them answers, from
the merged candidates, exactly as an unsharded matcher answers from its own. A shard
that is down delays its queries' answers (its queue keeps them), and never turns them
into "no match": nothing is answered until every shard has searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from biox.gallery.gallery import Hit
from biox.gallery.shards import merge
from biox.store import ScatterRow, marker_key
from biox.wire import codec
from biox.wire.codec import Envelope
from biox.wire.inbound import Inbound
from biox.wire.messages import Query
from biox.wire.shards import ShardHit, ShardHits, ShardSearch


def key_of(search: ShardSearch) -> str:
    """The requester and its message id: one requester cannot name another's scatter."""
    return marker_key(search.query.requesting, search.query_message_id)


def scatter(
    inb: Inbound[Query], received: datetime, shards: int, me: str
) -> tuple[ScatterRow, codec.Outgoing]:
    """The row that waits for the shards, and the one message the broker copies to each."""
    search = ShardSearch(
        query=inb.message,
        query_message_id=inb.envelope.message_id,
        correlation_id=inb.envelope.correlation_id,
        received_at=received,
        shards=shards,
    )
    row = ScatterRow(key=key_of(search), query_id=inb.message.query_id, shards=shards)
    out = codec.to_own_inbox(
        search,
        participant=me,
        message_id=codec.derived_id(inb.envelope.message_id, "shard.search"),
        correlation_id=inb.message.query_id,
    )
    return row, out


def hits_of(found: Sequence[Hit]) -> list[ShardHit]:
    return [
        ShardHit(record_id=h.record_id, fused=h.fused, scores=h.scores, evidence=h.evidence)
        for h in found
    ]


@dataclass(frozen=True)
class Gathered:
    """Every shard's candidates for one query, merged: what to answer from."""

    query: Inbound[Query]
    received: datetime
    hits: list[Hit]
    gallery_size: int
    search_ms: float


def query_of(search: ShardSearch, me: str) -> Inbound[Query]:
    """The query as the worker that scattered it admitted it (its sender proven then)."""
    q = search.query
    envelope = Envelope(
        message_id=search.query_message_id,
        kind=Query.KIND,
        schema=Query.schema_id(),
        sender=q.requesting,
        recipient=me,
        correlation_id=search.correlation_id,
    )
    return Inbound(envelope, q)


def gather(
    session: Session, batch: Sequence[Inbound[ShardHits]], top: int, me: str
) -> list[Gathered | str]:
    """Per message: the merged answer when it brings the last shard's candidates, else
    why there is nothing to answer yet ("waiting"), or ever ("repeated": a shard's hits
    seen already; "unknown": no such scatter, answered and gone)."""
    keys = sorted({key_of(inb.message.search) for inb in batch})
    rows = {r.key: r for r in session.exec(select(ScatterRow).where(col(ScatterRow.key).in_(keys)))}
    out: list[Gathered | str] = []
    for inb in batch:
        m = inb.message
        row = rows.get(key_of(m.search))
        if row is None:
            out.append("unknown")
            continue
        if m.shard in row.arrived or m.shard >= row.shards:
            out.append("repeated")
            continue
        # new lists: a JSON column is written back when it is assigned, not when appended to
        row.arrived = [*row.arrived, m.shard]
        row.hits = [*row.hits, *(h.model_dump() for h in m.hits)]
        row.gallery_size += m.gallery_size
        row.search_ms = max(row.search_ms, m.search_ms)
        if len(row.arrived) < row.shards:
            session.add(row)
            out.append("waiting")
            continue
        out.append(
            Gathered(
                query_of(m.search, me),
                m.search.received_at,
                merge((Hit(**h) for h in row.hits), top),
                row.gallery_size,
                row.search_ms,
            )
        )
        session.delete(row)  # the answer is the record from here on
        del rows[row.key]
    return out
