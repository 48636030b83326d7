"""The consolidated result an encounter system receives (one per encounter, re-sent whole
on every change): each partner's latest outcome and the retrievals about it.

Built from the requester's own rows, by the response worker when an answer arrives and
by the retrieval worker when it answers a partner's retrieval request, so both send the
same view. ``revision`` is also the row's optimistic lock (see ``EncounterRow``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from biox.store import EncounterRow, RetrievalRow, Transaction
from biox.wire import codec
from biox.wire.errors import REASON_TEXT, Reason
from biox.wire.messages import (
    EncounterResult,
    EncounterResultStatus,
    OutcomeStatus,
    PartnerOutcome,
    ResponseStatus,
    RetrievalNote,
    utcnow,
)


@dataclass(frozen=True)
class Revision:
    """What an encounter's new revision changes: its row to store (none for an encounter
    this participant has no row of) and the result for its encounter system (none without
    a reply queue). The caller adds both to its effects as they are."""

    rows: list[EncounterRow]
    outgoing: list[codec.Outgoing]


class EncounterViews:
    """What one batch needs to rebuild its encounters' results (``load``: three queries)."""

    def __init__(
        self,
        encounters: Iterable[EncounterRow],
        queries: Iterable[Transaction] = (),
        retrievals: Iterable[RetrievalRow] = (),
    ) -> None:
        self.encounters: dict[str, EncounterRow] = {e.encounter_id: e for e in encounters}
        self.queries: dict[str, list[Transaction]] = {}
        self.by_query: dict[str, Transaction] = {}
        for tx in queries:
            self.queries.setdefault(tx.encounter_id, []).append(tx)
            self.by_query[tx.query_id] = tx
        self.retrievals: dict[str, list[RetrievalRow]] = {}
        for r in retrievals:
            self.add_retrieval(r)

    @classmethod
    def load(cls, session: Session, encounter_ids: Iterable[str]) -> EncounterViews:
        ids = set(encounter_ids)
        encounters = session.exec(
            select(EncounterRow).where(col(EncounterRow.encounter_id).in_(ids))
        ).all()
        queries = session.exec(
            select(Transaction).where(
                Transaction.role == "requester",
                col(Transaction.encounter_id).in_(ids),
            )
        ).all()
        query_ids = [tx.query_id for tx in queries]
        retrievals = session.exec(
            select(RetrievalRow).where(
                RetrievalRow.role == "holder",
                col(RetrievalRow.query_id).in_(query_ids),
            )
        ).all()
        return cls(encounters, queries, retrievals)

    def transaction(self, query_id: str) -> Transaction | None:
        return self.by_query.get(query_id)

    def add_retrieval(self, row: RetrievalRow) -> None:
        self.retrievals.setdefault(row.query_id, []).append(row)

    def updated(self, me: str, encounter_id: str, cause_message_id: str, tag: str) -> Revision:
        """Raise the encounter's revision and build its result for ``reply_to``.

        Nothing to store or send for an encounter this participant has no row of (submitted
        before encounters were kept); the caller still stores what it received.
        """
        encounter = self.encounters.get(encounter_id)
        if encounter is None:
            return Revision([], [])
        encounter.revision += 1
        result = self.result(me, encounter)
        encounter.status = result.status.value
        if not encounter.reply_to:
            return Revision([encounter], [])
        out = codec.to_reply_queue(
            result,
            participant=me,
            reply_to=encounter.reply_to,
            message_id=codec.derived_id(cause_message_id, tag),
        )
        return Revision([encounter], [out])

    def result(self, me: str, encounter: EncounterRow) -> EncounterResult:
        """The encounter's consolidated result at its current revision: every participant
        asked, with its latest outcome, and every one skipped, with why (in code order)."""
        txs = self.queries.get(encounter.encounter_id, [])
        outcomes = [self._outcome(tx) for tx in txs]
        finished = all(o.status not in _OPEN for o in outcomes)
        outcomes += [
            PartnerOutcome(
                partner=partner,
                status=OutcomeStatus.skipped,
                reason_code=Reason(reason),
                reason=REASON_TEXT[Reason(reason)],
            )
            for partner, reason in (encounter.skipped or {}).items()
        ]
        return EncounterResult(
            encounter_id=encounter.encounter_id,
            requesting=me,
            status=EncounterResultStatus.complete if finished else EncounterResultStatus.pending,
            submission_id=encounter.source_message_id,
            revision=encounter.revision,
            outcomes=sorted(outcomes, key=lambda o: o.partner),
            updated_at=utcnow(),
        )

    def _outcome(self, tx: Transaction) -> PartnerOutcome:
        notes = [
            RetrievalNote(
                retrieval_id=r.retrieval_id,
                elements=r.elements,
                status=None if r.status == "pending" else r.status,
                released=r.released,
                reason_code=r.reason_code,
                answered_at=r.answered_at,
            )
            for r in sorted(self.retrievals.get(tx.query_id, []), key=lambda r: r.asked_at)
        ]
        if tx.status == "withdrawn" or tx.blocked_at is not None:
            withdrawn = tx.status == "withdrawn"
            return PartnerOutcome(
                partner=tx.providing,
                query_id=tx.query_id,
                status=OutcomeStatus.withdrawn if withdrawn else OutcomeStatus.blocked,
                reason=(
                    f"{tx.providing} had its answer deleted (§22); no later copy is kept"
                    if withdrawn
                    else f"{tx.providing} blocked its answer (§23): do not rely on it"
                ),
                sent_at=tx.sent_at,
                retrievals=notes,
            )
        if tx.answer is None:
            late = tx.timed_out_at is not None
            return PartnerOutcome(
                partner=tx.providing,
                query_id=tx.query_id,
                status=OutcomeStatus.timed_out if late else OutcomeStatus.pending,
                reason_code=Reason.no_answer if late else None,
                reason=REASON_TEXT[Reason.no_answer] if late else None,
                sent_at=tx.sent_at,
                answer_due=tx.answer_due,
                retrievals=notes,
            )
        a = tx.answer
        return PartnerOutcome.model_validate(
            {
                "partner": tx.providing,
                "query_id": tx.query_id,
                "status": a["status"],
                "candidates": a.get("candidates", []),
                "conditions": a.get("conditions", []),
                "withheld": a.get("withheld", []),
                # only a decision has a decider: not a pending_review, nor a rejection
                "decided_by": a.get("decided_by") if a["status"] in _DECIDED else None,
                "reason_code": a.get("reason_code"),
                "reason": a.get("reason"),
                "sent_at": tx.sent_at,
                "answered_at": a.get("timings", {}).get("answered_at"),
                "corrected_at": tx.corrected_at,
                "retrievals": notes,
            }
        )


_OPEN = (OutcomeStatus.pending, OutcomeStatus.pending_review)
_DECIDED = frozenset(
    s.value for s in (ResponseStatus.match, ResponseStatus.no_match, ResponseStatus.declined)
)


#: an answer its provider had deleted (§22): final too, so no later copy is stored again
WITHDRAWN = "withdrawn"


def is_final(status: str | None) -> bool:
    return status is not None and (
        status == WITHDRAWN or status in {s.value for s in ResponseStatus if s.final}
    )
