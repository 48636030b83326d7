"""Everything a participant keeps under one reference, each piece with where it came from
(§20): source participant, query id, message id, time received, conditions of use (§9)
and how long it is kept (§21). ``biox records show`` renders it.

A reference may be a gallery identity (``MX-000000123``, or ``MX-ENR-…`` for enrolled
query data), a query id, or an encounter id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from biox.store import EncounterRow, Record, RetrievalRow, ReviewCaseRow, Transaction


@dataclass
class Section:
    """One kept item: a title and its fields, in the order a reader wants them."""

    title: str
    fields: dict[str, Any]


def holdings(session: Session, me: str, ref: str) -> list[Section]:
    tables: list[Section] = []
    for r in session.exec(select(Record).where(Record.identity_ref == ref)):
        tables.append(
            Section(
                f"Gallery record {r.identity_ref}",
                {
                    "source": _source(r.source, me),
                    "source query": r.source_query_id,
                    "source message": r.source_message_id,
                    "received": r.received_at,
                    "retain until": r.retain_until,
                    "conditions of use": r.conditions,
                    "releasable": r.releasable,
                    "biographic": r.biographic,
                    "encounters": len(r.encounters),
                    "derogatory": r.derogatory,
                },
            )
        )
    txs = session.exec(
        select(Transaction).where(
            or_(col(Transaction.query_id) == ref, col(Transaction.encounter_id) == ref)
        )
    ).all()
    for tx in txs:
        if tx.role == "requester":
            tables.append(_answer_received(tx))
        else:
            tables.append(_answer_given(tx))
    retrievals = session.exec(
        select(RetrievalRow).where(
            or_(
                col(RetrievalRow.identity_ref) == ref,
                col(RetrievalRow.query_id) == ref,
                col(RetrievalRow.query_id).in_([tx.query_id for tx in txs]),
            )
        )
    ).all()
    for row in retrievals:
        tables.append(_retrieval(row))
    encounter = session.get(EncounterRow, ref)
    if encounter is not None:
        tables.append(
            Section(
                f"Encounter {ref} (submitted by {me}'s own encounter system)",
                {
                    "purpose": encounter.purpose,
                    "submitted": encounter.submitted_at,
                    "source message": encounter.source_message_id,
                    "partners queried": encounter.partners,
                    "result": f"{encounter.status}, revision {encounter.revision}",
                    "retain until": encounter.retain_until,
                    "biographic": encounter.biographic,
                },
            )
        )
    for case in session.exec(select(ReviewCaseRow).where(ReviewCaseRow.query_id == ref)):
        tables.append(
            Section(
                f"Review case {case.case_id}",
                {
                    "probe data from": _source(case.source, me),
                    "source message": case.source_message_id,
                    "retain until": case.retain_until,
                    "opened": case.opened_at,
                    "status": case.status,
                    "verdict": case.verdict,
                    "identity": case.identity_ref,
                    "examiner": case.examiner,
                    "decided": case.decided_at,
                },
            )
        )
    return tables


def _answer_received(tx: Transaction) -> Section:
    answer = tx.answer or {}
    fields: dict[str, Any] = {
        "status": tx.status,
        "source": tx.source,
        "query": tx.query_id,
        "source message": tx.source_message_id,
        "received": tx.received_at,
        "retain until": tx.retain_until,
        "conditions of use": tx.conditions,
        "withheld by the provider": answer.get("withheld", []),
        "decided by": answer.get("decided_by"),
        "reason": answer.get("reason_code"),
    }
    for i, c in enumerate(answer.get("candidates", []), 1):
        record = c.get("record") or {}
        fields[f"candidate {i}"] = {
            "identity_ref": c["identity_ref"],
            "fused_score": c["fused_score"],
            **{k: v for k, v in record.items() if k != "identity_ref" and v},
        }
    return Section(f"Answer from {tx.providing} to query {tx.query_id}", fields)


def _answer_given(tx: Transaction) -> Section:
    answer = tx.answer or {}
    return Section(
        f"Our answer to {tx.requesting}'s query {tx.query_id}",
        {
            "query data from": tx.source,
            "source message": tx.source_message_id,
            "purpose": tx.purpose,
            "status": tx.status,
            "decided by": answer.get("decided_by"),
            "released": [c["identity_ref"] for c in answer.get("candidates", [])],
            "conditions attached": answer.get("conditions", []),
            "withheld": answer.get("withheld", []),
            "answered": tx.answered_at,
        },
    )


def _retrieval(row: RetrievalRow) -> Section:
    if row.role == "asker":
        title = f"Retrieval {row.retrieval_id[:8]}: data received from {row.holder}"
        fields: dict[str, Any] = {
            "about": row.identity_ref,
            "query": row.query_id,
            "asked by": row.asked_by,
            "asked for": row.elements,
            "status": row.status,
            "source": row.source,
            "source message": row.source_message_id,
            "received": row.received_at,
            "retain until": row.retain_until,
            "conditions of use": row.conditions,
            "data": row.data,
        }
    else:
        title = f"Retrieval {row.retrieval_id[:8]}: {row.asker} asked us"
        fields = {
            "query": row.query_id,
            "asked for": row.elements,
            "status": row.status,
            "released": row.released,
            "withheld": row.withheld,
            "reason": row.reason_code,
            "answered": row.answered_at,
        }
    return Section(title, fields)


def _source(source: str, me: str) -> str:
    return f"{source} (own data)" if source == me else f"{source} (received, §20)"
