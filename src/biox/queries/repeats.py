"""A query id the provider has met before, arriving under a new message id.

The consume loop's markers stop a copy under the same message id. A second message
carrying a query id this participant answered, declined or scattered already is a
partner's error or a replay: searching it again would run the same templates through
the gallery a second time, and a second answer could overturn the first at the
requester (a ``rejected`` after a ``pending_review``). It is dead-lettered
``duplicate_query`` naming the first message, never answered (docs/security.md,
"Freshness and duplicates").
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from biox.store import ScatterRow, Transaction
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import Query

#: built once: a fresh ``select`` per batch cost 147 us to build and compile, this 33 us
#: (``python -m bench.repeats``; the matcher spends 1.4-2.4 ms of CPU a query)
_ANSWERED = select(Transaction.query_id, Transaction.source_message_id).where(
    Transaction.role == "provider",
    col(Transaction.query_id).in_(bindparam("ids", expanding=True)),
)
_SCATTERED = select(ScatterRow.query_id, ScatterRow.key).where(
    col(ScatterRow.query_id).in_(bindparam("ids", expanding=True))
)


class Seen:
    """The query ids of one batch met before, with the message each came first in."""

    def __init__(self, first: dict[str, str]) -> None:
        self.first = first

    @classmethod
    def of(cls, session: Session, query_ids: Sequence[str], scattered: bool = False) -> Seen:
        """One read for the batch: the provider's rows and, with ``scattered``, the
        queries still waiting for their shards (no row yet)."""
        ids = {"ids": list(query_ids)}
        connection = session.connection()
        first = {q: m or "(not recorded)" for q, m in connection.execute(_ANSWERED, ids)}
        if scattered:
            for query_id, key in connection.execute(_SCATTERED, ids):
                first.setdefault(query_id, key.partition("/")[2])  # store.marker_key
        return cls(first)

    def check(self, inb: Inbound[Query]) -> None:
        """Raises for a query id met before under another message id: checked before
        anything else, so that not even a ``rejected`` answer goes back for it."""
        query_id = inb.message.query_id
        first = self.first.get(query_id, inb.envelope.message_id)
        if first != inb.envelope.message_id:
            raise PermanentError(
                Reason.duplicate_query, f"query {query_id} came first as message {first}"
            )

    def met(self, inb: Inbound[Query]) -> None:
        """This message answers its query (it leaves a row): a second copy later in the
        batch is a duplicate. A rejected one leaves none, so a corrected copy may follow."""
        self.first.setdefault(inb.message.query_id, inb.envelope.message_id)
