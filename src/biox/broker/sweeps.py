"""The broker's part of a deletion or an expiry (§21-22; docs/lifecycle.md, "A deletion
is final"): the dead letters and held results that still carry data a partner had
deleted, or about an encounter no longer kept, are removed from their queues.

RabbitMQ removes no single message from a queue, so a sweep reads each queue once
(``DeadLetterQueues.sweep``), decides here, and takes only what is doomed; the rest goes
back untouched. The notice worker sweeps after every deletion notice and on its
retention schedule; ``biox retention purge`` sweeps too.
"""

from __future__ import annotations

import msgpack
from sqlmodel import Session, col, select

from biox.agreement.erasures import Erased
from biox.broker.deadletters import DeadLetter, DeadLetterQueues, dlq_names
from biox.store import EncounterRow
from biox.trust.tls import ClientTLS
from biox.wire import addresses
from biox.wire.codec import H_FROM
from biox.wire.inbound import header_text
from biox.wire.shards import ShardHits, ShardSearch


# pragma: no mutate start (it opens a real connection: the integration tests cover it)
def sweep(
    url: str, tls: ClientTLS | None, participant: str, session: Session, shards: int = 1
) -> dict[str, int]:
    """Sweeps ``participant``'s dead-letter queues (each shard's too) and held results;
    counts by place."""
    held = addresses.held_results_queue(participant)
    queues = [*dlq_names([participant], participant, None, shards), held]
    dlq = DeadLetterQueues(url, tls)
    try:
        swept = dlq.sweep(queues, lambda letters: erased_letters(session, letters))
    finally:
        dlq.close()
    counts = {
        "held_results": swept.get(held, 0),
        "dead_letters": sum(n for q, n in swept.items() if q != held),
    }
    return {k: n for k, n in counts.items() if n}


# pragma: no mutate end
def erased_letters(session: Session, letters: list[DeadLetter]) -> set[tuple[str, str]]:
    """The dead letters and held results that carry data a partner had deleted (§22):
    a partner's message named by the deletion (by its query or itself), or a held result
    whose outcome still shows an answer its provider deleted, or about an encounter
    no longer kept (past its retention, or gone with a deletion)."""
    held = {(d.queue, d.id): _held_result(d.body) for d in letters if _is_held(d)}
    sent = [d for d in letters if not _is_held(d)]
    erased = Erased.of_messages(
        session,
        [
            *((_sender(d), d.properties.correlation_id, d.properties.message_id) for d in sent),
            *((p, q, None) for r in held.values() if r for p, q, _status in r[1]),
        ],
    )
    eids = {r[0] for r in held.values() if r}
    kept = (
        set(
            session.exec(
                select(EncounterRow.encounter_id).where(col(EncounterRow.encounter_id).in_(eids))
            )
        )
        if eids
        else set()
    )
    doomed = {
        (d.queue, d.id)
        for d in sent
        if erased.any(_sender(d), d.properties.correlation_id, d.properties.message_id)
    }
    for key, result in held.items():
        if (
            result is None
            or result[0] not in kept
            or any(
                status != "withdrawn" and erased.query(partner, q)
                for partner, q, status in result[1]
            )
        ):
            doomed.add(key)
    return doomed


def _held_result(body: bytes) -> tuple[str, list[tuple[str, str, str]]] | None:
    """A held result's encounter id and the (partner, query id, status) of each outcome;
    None for a body that is no result (it is then swept: nothing can read it)."""
    try:
        result = msgpack.unpackb(body, raw=False, strict_map_key=False)
        outcomes = [
            (str(o["partner"]), str(o.get("query_id") or ""), str(o["status"]))
            for o in result.get("outcomes", [])
        ]
        return str(result["encounter_id"]), outcomes
    except Exception:
        return None


def _is_held(d: DeadLetter) -> bool:
    return d.queue == addresses.held_results_queue(addresses.owner(d.queue))


def _sender(d: DeadLetter) -> str:
    """Who the data in ``d`` came from: its sender, or of a scattered query (a
    ``shard.search`` or ``shard.hits`` one's own workers sent), the partner who asked."""
    if d.properties.type in SHARD_KINDS:
        try:
            body = msgpack.unpackb(d.body, raw=False, strict_map_key=False)
            search = body.get("search", body)
            return str(search["query"]["requesting"])
        except Exception:
            return ""  # unreadable: its message id may still name it
    return header_text(d.headers.get(H_FROM)) or ""


SHARD_KINDS = (ShardSearch.KIND, ShardHits.KIND)
