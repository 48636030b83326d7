"""Rich renderings shared by the CLI and the demo."""

from __future__ import annotations

from rich.table import Table

from biox.store import AuditEntry


def trail_table(query_id: str, rows: list[tuple[str, AuditEntry]]) -> Table:
    table = Table(title=f"Audit trail of query {query_id}")
    for col in ("+ms", "participant", "dir", "kind", "from → to", "user", "message", "body sha256"):
        table.add_column(col, no_wrap=True)
    start = rows[0][1].received_at
    for code, e in rows:
        table.add_row(
            f"{(e.received_at - start).total_seconds() * 1000:.0f}",
            code,
            e.direction,
            e.kind,
            f"{e.sender or '?'} → {e.recipient or '?'}",
            e.sender_user or "",
            e.message_id[:8],
            e.body_sha256[:12],
        )
    return table
