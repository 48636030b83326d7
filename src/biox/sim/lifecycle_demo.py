"""The demo's last act, while the workers still run: the agreement's data lifecycle as an
operator and a privacy officer see it. mx has one of its answers deleted by notice (§22)
and us's encounter result shows it withdrawn; us searches for that person (§25); us's
annual review (§27) as a table and an HTML page; and ``biox qa`` (§28) for everyone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import col, delete, select

from biox.agreement import quality, report, subjects
from biox.agreement.ledgers import NoticeRow
from biox.agreement.measures import Measures
from biox.agreement.report_page import render
from biox.broker.deadletters import DeadLetterQueues, Filters
from biox.broker.publisher import properties_for, publish_once
from biox.broker.sweeps import erased_letters
from biox.database import session_for
from biox.render import annual_table
from biox.settings import Settings
from biox.store import EncounterRow, ProcessedMessage, Transaction
from biox.trust.sealing import load_ring
from biox.wire import codec
from biox.wire.codec import Outgoing
from biox.wire.messages import Response
from biox.wire.notices import About, NoticeSend, NoticeType

OFFICER = "demo-privacy-officer"


def run(console: Console, settings: Settings, url: str, codes: list[str]) -> bool:
    """Returns whether every step did what it shows."""
    ok = _deletion(console, settings, url)
    ok = _stays_deleted(console, settings, url) and ok
    ok = _search(console, settings, url) and ok
    _report(console, settings)
    return _qa(console, settings, codes) and ok


def _a_match(settings: Settings, requester: str, provider: str) -> Transaction | None:
    with session_for(settings.database_for(requester)) as s:
        return s.exec(
            select(Transaction).where(
                Transaction.role == "requester",
                Transaction.providing == provider,
                Transaction.status == "match",
            )
        ).first()


def _deletion(console: Console, settings: Settings, url: str) -> bool:
    tx = _a_match(settings, "us", "mx")
    if tx is None:
        console.print("[red]no us query matched by mx to show a deletion notice on[/]")
        return False
    console.print(
        f"[bold]$ biox notice send -p mx --to us --type deletion --query {tx.query_id}[/]"
    )
    ask = NoticeSend(
        type=NoticeType.deletion,
        to="us",
        actor=OFFICER,
        about=About(query_ids=[tx.query_id]),
        text="record entered in error (§22)",
    )
    out = codec.from_person(ask, participant="mx", actor=OFFICER)
    publish_once(url, [out], name="biox-demo-notice")
    nid = codec.derived_id(out.envelope.message_id, "notice")
    deadline = time.monotonic() + 60
    sent = None
    while time.monotonic() < deadline:
        with session_for(settings.database_for("mx")) as s:
            sent = s.get(NoticeRow, nid)
        if sent is not None and sent.status == "acknowledged":
            break
        time.sleep(0.3)
    with session_for(settings.database_for("us")) as s:
        after = s.get(Transaction, (tx.query_id, "requester"))
        encounter = s.get(EncounterRow, tx.encounter_id)
    done = sent is not None and sent.status == "acknowledged"
    table = Table(title="Deletion notice (§22): mx's ledger, and what us now holds")
    for column in ("notice", "status", "us did", "us's answer", "encounter result"):
        table.add_column(column)
    table.add_row(
        nid[:8],
        sent.status if sent else "not sent",
        str(sent.done) if sent and sent.done else "-",
        after.status if after else "-",
        f"revision {encounter.revision}, sent again" if encounter else "-",
    )
    console.print(table)
    return done and after is not None and after.status == "withdrawn"


def _copy_of_answer(settings: Settings, tx: Transaction) -> Outgoing:
    """mx's answer to ``tx`` as it travelled: the same message id, sealed and signed by
    mx, parked in us's dead-letter queue as a failed delivery leaves it."""
    with session_for(settings.database_for("mx")) as s:
        sent = s.get(Transaction, (tx.query_id, "provider"))
    assert sent is not None and sent.answer is not None
    response = Response.model_validate({**sent.answer, "requesting": "us"})
    out = codec.to_partner(
        response,
        sender="mx",
        recipient="us",
        message_id=tx.source_message_id or "",
        correlation_id=tx.query_id,
    )
    return load_ring(settings.keys(), "mx").seal(out)


def _park(url: str, out: Outgoing) -> None:
    props = properties_for(out.envelope, None)
    props.headers = {**(props.headers or {}), "biox-reason": "unknown_query"}
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "us.response.dlq", out.body, props, mandatory=True)
    finally:
        conn.close()


def _stays_deleted(console: Console, settings: Settings, url: str) -> bool:
    """The deleted answer comes back three ways, and none brings it back (§22): a copy
    exported from the dead-letter queue before the deletion and imported after it; the
    same copy replayed by a tool that does not check (straight to us's response worker);
    and the copy in the queue itself, which the notice worker swept."""
    with session_for(settings.database_for("us")) as s:
        tx = s.exec(
            select(Transaction).where(
                Transaction.role == "requester",
                Transaction.providing == "mx",
                Transaction.status == "withdrawn",
            )
        ).first()
    if tx is None or tx.source_message_id is None:
        console.print("[red]no withdrawn answer to bring back[/]")
        return False
    with session_for(settings.database_for("us")) as s:
        revision = s.get(EncounterRow, tx.encounter_id).revision  # type: ignore[union-attr]
    copy = _copy_of_answer(settings, tx)
    mid = copy.envelope.message_id
    export = Path(settings.data_dir) / "deleted-answer.jsonl"
    dlqs = DeadLetterQueues(url)
    try:
        _park(url, copy)
        queues = ["us.response.dlq"]
        with export.open("w") as out:  # as an export made before the deletion holds it
            dlqs.export(queues, Filters(ids=(mid,)), out, settings.dead_letter_retention_days)
        # taken out again (a listing's channel hands the copy back a moment after it closes)
        deadline = time.monotonic() + 10
        while not dlqs.purge(queues, Filters(ids=(mid,))) and time.monotonic() < deadline:
            time.sleep(0.2)
        console.print(f"[bold]$ biox dlq import {export.name}[/]  (exported before the deletion)")
        with session_for(settings.database_for("us")) as s:
            imported, left_out = dlqs.import_(
                export.read_text().splitlines(),
                queues,
                lambda d: "deleted by its source (§22)" if erased_letters(s, [d]) else None,
            )
        _park(url, copy)
        console.print("[bold]a replay that does not check: the copy straight to us.response[/]")
        replayed = dlqs.replay(queues, Filters(ids=(mid,)))
        time.sleep(2)  # the response worker takes it: a duplicate, republishing nothing
        with session_for(settings.database_for("us")) as s:  # as if its 7 days had passed
            s.exec(delete(ProcessedMessage).where(col(ProcessedMessage.message_id).contains(mid)))
            s.commit()
        _park(url, copy)
        console.print("[bold]and again, once us no longer knows it as a duplicate[/]")
        replayed += dlqs.replay(queues, Filters(ids=(mid,)))
    finally:
        dlqs.close()
    time.sleep(3)  # the response worker takes it
    with session_for(settings.database_for("us")) as s:
        after = s.get(Transaction, (tx.query_id, "requester"))
        now = s.get(EncounterRow, tx.encounter_id)
    kept = after is not None and after.status == "withdrawn" and after.answer is None
    same = now is not None and now.revision == revision
    table = Table(title="The deleted answer comes back, and stays deleted (§22)")
    for column in ("path", "what happened"):
        table.add_column(column)
    table.add_row("dlq import", "; ".join(left_out.values()) or f"imported {imported}")
    table.add_row(
        "replay to the worker",
        "a duplicate: the deletion had emptied what a duplicate republishes",
    )
    table.add_row(
        "replay after the marker's retention", "the response worker: answer_erased, not kept"
    )
    table.add_row("us's answer", f"{after.status if after else '-'}, nothing kept")
    table.add_row("encounter result", f"revision {now.revision if now else '-'}: nothing sent")
    console.print(table)
    return not imported and bool(left_out) and replayed == 2 and kept and same


def _search(console: Console, settings: Settings, url: str) -> bool:
    """A subject search for someone a partner released a name for."""
    name, dob = None, None
    with session_for(settings.database_for("us")) as s:
        matched = select(Transaction).where(
            Transaction.role == "requester", Transaction.status == "match"
        )
        for tx in s.exec(matched):
            for c in (tx.answer or {}).get("candidates", []):
                bio = (c.get("record") or {}).get("biographic") or {}
                name, dob = bio.get("family_name"), bio.get("date_of_birth")
                if name and dob:
                    break
            if name and dob:
                break
    if not (name and dob):
        console.print("[red]no released name and birth date to search for[/]")
        return False
    console.print(f"[bold]$ biox subject search -p us --name {name} --dob {dob}[/]")
    terms = subjects.Terms(name=name, date_of_birth=dob)
    with session_for(settings.database_for("us")) as s:
        found = subjects.search(s, terms)
    read = subjects.read_event("us", "subject search", terms.__dict__, len(found), OFFICER)
    publish_once(url, [read], name="biox-demo-read")
    table = Table(title=f"Subject search (§25): what us keeps on {name}, and from whom")
    for column in ("table", "key", "from", "retain until", "blocked"):
        table.add_column(column)
    for f in found:
        table.add_row(
            f.table,
            f.key[:40],
            f.source or "us",
            f"{f.retain_until or ''}"[:10],
            "yes" if f.blocked else "",
        )
    console.print(table)
    return bool(found)


def _report(console: Console, settings: Settings) -> None:
    now = datetime.now(UTC)
    with session_for(settings.database_for("us")) as s:
        rep = report.build(s, "us", now - timedelta(days=1), now + timedelta(days=1))
    page = Path(settings.data_dir) / "report-us.html"
    page.write_text(render(rep))
    console.print(
        annual_table(rep, "Annual review (§27), us: $ biox report -p us --html report-us.html")
    )
    console.print(f"The page with its charts: {page}")


def _qa(console: Console, settings: Settings, codes: list[str]) -> bool:
    clean = True
    for code in codes:
        with session_for(settings.database_for(code)) as s:
            checks = Measures.load(settings.agreement).checks
            found = quality.run(
                s, code, datetime.now(UTC), checks.review_overdue_hours * 3600, checks.enabled
            )
        clean = clean and not found
        said = "no findings" if not found else "; ".join(f"{f.check}: {f.detail}" for f in found)
        console.print(escape(f"$ biox qa -p {code}: {said}"))
    return clean
