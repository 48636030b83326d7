"""Rich renderings of what the domain returns: provenance sections, an audit trail, a
review case beside its candidates. Shared by the commands (``biox.cli``) and the demo
(``biox.sim``), so it stands above neither. Every value that
came from a partner, a subject or an encounter system is escaped: partner text such as
``[/x]`` is shown as written, never read as markup."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from biox.agreement.provenance import Section
from biox.agreement.report import Report
from biox.queries.examiners import Side
from biox.store import AuditEntry, ReviewCaseRow


def text(value: object) -> str:
    """Anything a partner or a subject wrote, made inert for a rich table (no markup)."""
    return escape(str(value))


def section_table(section: Section) -> Table:
    table = Table(title=text(section.title), show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in section.fields.items():
        table.add_row(text(key), text(_value(value)))
    return table


def _value(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def trail_table(query_id: str, rows: list[tuple[str, AuditEntry]]) -> Table:
    table = Table(title=f"Audit trail of query {text(query_id)}")
    for col in ("+ms", "participant", "dir", "kind", "from → to", "user", "message", "body sha256"):
        table.add_column(col, no_wrap=True)
    start = rows[0][1].received_at
    for code, e in rows:
        table.add_row(
            f"{(e.received_at - start).total_seconds() * 1000:.0f}",
            code,
            text(e.direction),
            text(e.kind),
            text(f"{e.sender or '?'} → {e.recipient or '?'}"),
            text(e.sender_user or ""),
            text(e.message_id[:8]),
            e.body_sha256[:12],
        )
    return table


CASE_FIELDS = (
    "family_name",
    "given_names",
    "date_of_birth",
    "sex",
    "claimed_nationality",
    "document_number",
)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


def case_table(case: ReviewCaseRow, sides: list[Side]) -> Table:
    table = Table(
        title=text(
            f"Case {case.case_id}: query from {case.requesting} for {case.purpose}, "
            f"probe {', '.join(case.probe_modalities)}"
        )
    )
    table.add_column("", style="bold")
    table.add_column("probe (from the query)")
    for i, side in enumerate(sides, 1):
        table.add_column(text(f"#{i} {side.identity_ref}"))
    table.add_row("fused score", "", *(f"{s.fused_score:.3f}" for s in sides))
    for modality in sorted({m for s in sides for m in s.scores}):
        table.add_row(
            f"{text(modality)} score",
            "",
            *(f"{s.scores.get(modality, float('nan')):.3f}" for s in sides),
        )
    if any(s.evidence for s in sides):  # calibrated: the evidence, modality by modality
        evidence = [s.evidence or {} for s in sides]
        for modality in sorted({m for e in evidence for m in e.get("modalities", {})}):
            table.add_row(
                f"{text(modality)} log-LR",
                "",
                *(_signed(e.get("modalities", {}).get(modality)) for e in evidence),
            )
        table.add_row("FPIR at this score", "", *(_share(e.get("fpir")) for e in evidence))
    for key in CASE_FIELDS:
        values = [
            str(case.probe_biographic.get(key) or ""),
            *(str((s.record.biographic if s.record else {}).get(key) or "") for s in sides),
        ]
        if any(values):  # a field nobody has is noise beside the ones to compare
            table.add_row(key, *(text(v) for v in values))
    where = case.encounter.get("country", "")
    when = str(case.encounter.get("encountered_at", ""))[:10]
    table.add_row(
        "encounter",
        text(f"{where} {when}"),
        *(f"{len(s.record.encounters) if s.record else 0} on file" for s in sides),
    )
    table.add_row(
        "derogatory",
        "",
        *(text(", ".join(s.record.derogatory)) if s.record else "" for s in sides),
    )
    return table


def annual_table(rep: Report, title: str) -> Table:
    """The annual review's flows (§27), one row per direction, partner and purpose."""
    table = Table(title=text(title))
    columns = ("direction", "partner", "purpose", "queries", "outcomes", "reasons")
    for column in (*columns, "decided by", "p50/p95/p99 s"):
        table.add_column(column)
    for f in rep.flows:
        table.add_row(
            f.direction,
            f.partner,
            f.purpose,
            str(f.queries),
            ", ".join(f"{k} {v}" for k, v in f.outcomes.most_common()),
            ", ".join(f"{k} {v}" for k, v in f.reasons.most_common()),
            ", ".join(f"{k} {v}" for k, v in f.decided_by.most_common()),
            " / ".join(f"{v:.2f}" for v in f.latency_s.values()),
        )
    return table
