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

from biox.agreement.erasures import QUERY, Erased, exchange_items
from biox.broker.deadletters import DeadLetter, DeadLetterQueues, dlq_names
from biox.store import EncounterRow
from biox.trust.tls import ClientTLS
from biox.wire import addresses
from biox.wire.codec import H_FROM


# pragma: no mutate start (it opens a real connection: the integration tests cover it)
def sweep(url: str, tls: ClientTLS | None, participant: str, session: Session) -> dict[str, int]:
    """Sweeps ``participant``'s dead-letter queues and held results; counts by place."""
    held = addresses.held_results_queue(participant)
    queues = [*dlq_names([participant], participant, None), held]
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
    items, outcomes = [], {}
    for d in letters:
        if _is_held(d):
            seen = _held_outcomes(d.body)
            outcomes[(d.queue, d.id)] = seen
            items += [(partner, QUERY, q) for partner, q, _status, _eid in seen]
        else:
            sender = _sender(d)
            items += exchange_items(sender, d.properties.correlation_id, d.properties.message_id)
    erased = Erased.among(session, items)
    doomed = set()
    for d in letters:
        if _is_held(d):
            seen = outcomes[(d.queue, d.id)]
            kept = {
                e.encounter_id
                for e in session.exec(
                    select(EncounterRow).where(
                        col(EncounterRow.encounter_id).in_({eid for *_rest, eid in seen})
                    )
                )
            }
            if (
                any(
                    eid not in kept or (status != "withdrawn" and erased.query(partner, q))
                    for partner, q, status, eid in seen
                )
                or not seen
            ):
                doomed.add((d.queue, d.id))
        elif erased.any(
            _sender(d),
            d.properties.correlation_id,
            d.properties.message_id,
        ):
            doomed.add((d.queue, d.id))
    return doomed


def _held_outcomes(body: bytes) -> list[tuple[str, str, str, str]]:
    """(partner, query id, status, encounter id) of each outcome of a held result; an
    empty list for a body that is no result (it is then swept: nothing can read it)."""
    try:
        result = msgpack.unpackb(body, raw=False, strict_map_key=False)
        eid = str(result["encounter_id"])
        return [
            (str(o["partner"]), str(o.get("query_id") or ""), str(o["status"]), eid)
            for o in result.get("outcomes", [])
        ] or [("", "", "none", eid)]
    except Exception:
        return []


def _is_held(d: DeadLetter) -> bool:
    return d.queue == addresses.held_results_queue(addresses.owner(d.queue))


def _sender(d: DeadLetter) -> str:
    value = d.headers.get(H_FROM, "")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
