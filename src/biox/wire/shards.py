"""The messages between a participant's query worker and its shard workers, on its own
broker only (docs/architecture.md, "Shards"): never to a partner, who sees one query and
one response as from an unsharded matcher.

A ``shard.search`` carries the query as admitted (sender proven, body checked and
unsealed), so each shard needs no second check; a ``shard.hits`` carries it back, so the
worker that gathers keeps no templates of its own while it waits for the other shards.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from biox.wire.fields import Id, Model, Short, Timestamp
from biox.wire.messages import Message, Query


class ShardSearch(Message):
    """A query to search in every shard (scattered by the query worker)."""

    KIND: ClassVar[str] = "shard.search"

    query: Query
    query_message_id: Id = Field(description="the partner's message: the answer's key")
    correlation_id: Id | None = None
    received_at: Timestamp
    shards: int = Field(ge=2, le=64, description="how many shards the answer waits for")


class ShardHit(Model):
    record_id: int = Field(ge=0)
    fused: float
    scores: dict[Short, float]
    evidence: dict[Short, float] | None = None


class ShardHits(Message):
    """One shard's best candidates for a query (to the query worker, which gathers)."""

    KIND: ClassVar[str] = "shard.hits"

    search: ShardSearch
    shard: int = Field(ge=0, le=63)
    gallery_size: int = Field(ge=0, description="records this shard holds now")
    search_ms: float = Field(ge=0)
    hits: list[ShardHit] = Field(max_length=64)
