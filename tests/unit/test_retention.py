"""Retention that runs (§21) and the 48-hour incident deadline (§17), without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import select
from structlog.testing import capture_logs
from typer.testing import CliRunner

from biox.agreement import incidents, retention
from biox.agreement.ledgers import IncidentRow, NoticeRow, Tombstone
from biox.agreement.quality import late_notices
from biox.cli import app
from biox.database import session_for
from biox.handlers.notice import NoticeHandler
from biox.policy.release import ParticipantPolicy
from biox.routes import ROUTES
from biox.settings import Settings
from biox.store import (
    EncounterRow,
    EnrolledTemplates,
    ProcessedMessage,
    Record,
    RetrievalRow,
    ReviewCaseRow,
    Transaction,
)
from biox.trust.sealing import memory_rings
from biox.wire.operations import RetentionPurged

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PAST, FUTURE = NOW - timedelta(days=1), NOW + timedelta(days=1)


def fill(url: str) -> None:
    """One expired and one current row in every table that keeps partner or subject data."""
    with session_for(url) as s:
        for rid, until in ((1, PAST), (2, FUTURE)):
            s.add(Record(id=rid, identity_ref=f"R-{rid}", source="mx", retain_until=until))
            s.add(EnrolledTemplates(record_id=rid, biometrics=b"x"))
            s.add(
                Transaction(
                    query_id=f"q-{rid}",
                    role="requester",
                    encounter_id=f"E-{rid}",
                    requesting="us",
                    providing="mx",
                    purpose="enforce",
                    retain_until=until,
                )
            )
            s.add(EncounterRow(encounter_id=f"E-{rid}", purpose="enforce", retain_until=until))
            s.add(
                ReviewCaseRow(
                    case_id=f"c-{rid}",
                    query_id=f"q-{rid}",
                    requesting="mx",
                    purpose="enforce",
                    opened_at=NOW,
                    source="mx",
                    retain_until=until,
                )
            )
            s.add(
                RetrievalRow(
                    retrieval_id=f"r-{rid}",
                    role="asker",
                    query_id=f"q-{rid}",
                    asker="us",
                    holder="mx",
                    identity_ref="X",
                    retain_until=until,
                )
            )
        s.add(Record(id=3, identity_ref="R-3", source="us"))  # no date: kept (own gallery)
        s.add(
            ProcessedMessage(
                consumer="us.query",
                message_id="old",
                published=True,
                processed_at=NOW - timedelta(days=8),
            )
        )
        s.add(
            ProcessedMessage(
                consumer="us.query",
                message_id="unsent",
                published=False,
                processed_at=NOW - timedelta(days=8),
            )
        )
        s.add(
            ProcessedMessage(
                consumer="us.query", message_id="new", published=True, processed_at=NOW
            )
        )
        s.commit()


def test_an_expired_row_is_gone_from_every_table_and_a_current_one_stays(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    fill(url)
    expected = {
        "records": 1,
        "transactions": 1,
        "encounters": 1,
        "review_cases": 1,
        "retrievals": 1,
        "processed_messages": 1,
    }
    with session_for(url) as s:
        assert (
            retention.purge(s, NOW, dry_run=True, ages=retention.Ages(markers_days=7)) == expected
        )
        s.commit()
        assert len(s.exec(select(Record)).all()) == 3  # a dry run removes nothing
        assert retention.purge(s, NOW, ages=retention.Ages(markers_days=7)) == expected
        s.commit()
        assert [r.id for r in s.exec(select(Record))] == [2, 3]
        assert [t.record_id for t in s.exec(select(EnrolledTemplates))] == [2]
        assert [(t.record_id, t.cause) for t in s.exec(select(Tombstone))] == [(1, "retention")]
        for table, key in (
            (Transaction, "query_id"),
            (RetrievalRow, "retrieval_id"),
            (ReviewCaseRow, "case_id"),
            (EncounterRow, "encounter_id"),
        ):
            assert [getattr(r, key)[-1] for r in s.exec(select(table))] == ["2"], table
        # a marker whose outputs were never confirmed stays: a redelivery still needs them
        assert sorted(m.message_id for m in s.exec(select(ProcessedMessage))) == ["new", "unsent"]
        assert (
            retention.purge(s, NOW, ages=retention.Ages(markers_days=7)) == {}
        )  # nothing left to do


def test_the_notice_worker_purges_on_its_schedule_and_tells_the_audit_trail(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    fill(url)
    settings = Settings(data_dir=tmp_path, retention_purge_s=60)
    handler = NoticeHandler("us", memory_rings(["us"])["us"].trust, None, None, settings)
    assert handler.maintain_every_s == 60
    with capture_logs() as logs, session_for(url) as s:
        [event] = handler.maintain(s, NOW)
        s.commit()
        assert handler.maintain(s, NOW) == []  # nothing more expired: nothing to say
    [line] = logs  # one line, for the purge that did something
    assert line["event"] == "retention_purged"
    assert (event.exchange, event.routing_key) == ("biox.us", "us.ops.retention.purge")
    assert event.envelope.headers["biox-actor"] == "schedule"
    purged = ROUTES.decode(event.envelope.kind, event.envelope.schema, event.body)
    assert isinstance(purged, RetentionPurged) and purged.counts["records"] == 1
    assert line["counts"] == purged.counts  # the log says what the audit trail says
    assert b"R-1" not in event.body  # counts, never content


def test_a_discontinued_partners_data_is_kept_no_longer_than_the_policy_says(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    policy = ParticipantPolicy(discontinued_retention_days=30)
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="R-1", source="mx", retain_until=NOW + timedelta(days=900)))
        s.add(Record(id=2, identity_ref="R-2", source="mx", retain_until=NOW + timedelta(days=5)))
        s.add(Record(id=3, identity_ref="R-3", source="sv", retain_until=NOW + timedelta(days=900)))
        s.commit()
        assert retention.cap_for_discontinued(s, "mx", policy, NOW) == {"records": 1}
        s.commit()
        until = {r.id: r.retain_until.replace(tzinfo=UTC) for r in s.exec(select(Record))}
    assert until == {
        1: NOW + timedelta(days=30),
        2: NOW + timedelta(days=5),
        3: NOW + timedelta(days=900),
    }
    assert retention.cap_for_discontinued(s, "mx", ParticipantPolicy(), NOW) == {}


def test_an_incident_without_a_notice_is_overdue_after_48_hours(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        row = incidents.open_incident(s, "laptop lost", ["mx", "sv"], NOW, "officer")
        s.commit()
        assert incidents.deadline(row) == NOW + timedelta(hours=48)
        assert incidents.overdue(s, NOW + timedelta(hours=47, minutes=59)) == []
        late = incidents.overdue(s, NOW + timedelta(hours=49))
        assert [(item.partner, item.overdue_by) for item in late] == [
            ("mx", timedelta(hours=1)),
            ("sv", timedelta(hours=1)),
        ]
        incidents.notified(row, "mx", "n-1", NOW + timedelta(hours=2))
        s.add(row)
        s.commit()
        assert [item.partner for item in incidents.overdue(s, NOW + timedelta(hours=49))] == ["sv"]
        assert s.get(IncidentRow, row.incident_id).notified == {"mx": "n-1"}


def test_the_cli_says_which_incident_is_overdue_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_OPERATOR", "pat")  # us's privacy officer (deploy/staff.toml)
    runner = CliRunner()
    aware = (datetime.now(UTC) - timedelta(hours=50)).strftime("%Y-%m-%dT%H:%M:%S")
    opened = runner.invoke(
        app,
        [
            "incident",
            "open",
            "-p",
            "us",
            "--summary",
            "misdirected export",
            "--partner",
            "mx",
            "--aware-at",
            aware,
        ],
    )
    assert opened.exit_code == 0, opened.output
    late = runner.invoke(app, ["incident", "overdue", "-p", "us"])
    assert late.exit_code == 1 and "mx not notified" in late.output and "48-hour" in late.output
    listed = runner.invoke(app, ["incident", "list", "-p", "us"])
    assert listed.exit_code == 0 and "misdirected export" in listed.output
    assert runner.invoke(app, ["incident", "overdue", "-p", "mx"]).exit_code == 0


def test_the_cli_counts_what_a_purge_would_remove_without_removing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_OPERATOR", "ada")  # us's administrator (deploy/staff.toml)
    url = Settings(data_dir=tmp_path).database_for("us")
    with session_for(url) as s:
        gone = datetime.now(UTC) - timedelta(days=1)
        s.add(Record(id=1, identity_ref="R-1", source="mx", retain_until=gone))
        s.commit()
    out = CliRunner().invoke(app, ["retention", "purge", "-p", "us", "--dry-run"])
    assert out.exit_code == 0 and "would purge" in out.output and "records" in out.output
    with session_for(url) as s:
        assert s.get(Record, 1) is not None


def test_notices_past_their_date_without_an_answer_are_late():
    def row(nid: str, direction: str, status: str, due: datetime | None) -> NoticeRow:
        return NoticeRow(
            notice_id=nid,
            direction=direction,
            type="deletion",
            partner="mx",
            sent_at=NOW,
            status=status,
            respond_by=due,
        )

    rows = [
        row("ours-late", "out", "sent", PAST),
        row("ours-done", "out", "acknowledged", PAST),
        row("theirs-late", "in", "received", PAST),
        row("theirs-applied", "in", "applied", PAST),
        row("not-yet", "out", "sent", FUTURE),
        row("no-date", "out", "sent", None),
    ]
    assert [r.notice_id for r in late_notices(rows, NOW)] == ["ours-late", "theirs-late"]


def test_a_row_is_kept_through_the_instant_its_retention_ends(tmp_path):
    """``retain_until`` is the last moment it may be kept: expired strictly after it."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(Record(id=1, identity_ref="R-1", source="mx", retain_until=NOW))
        s.add(
            Transaction(
                query_id="q",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="enforce",
                retain_until=NOW,
            )
        )
        s.add(
            ProcessedMessage(
                consumer="c", message_id="m", published=True, processed_at=NOW - timedelta(days=7)
            )
        )
        s.commit()
        assert retention.purge(s, NOW, ages=retention.Ages(markers_days=7)) == {}
        s.commit()
        assert s.get(Record, 1) is not None and s.get(ProcessedMessage, ("c", "m")) is not None


def test_a_discontinued_partners_data_is_capped_in_every_table_that_holds_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    policy = ParticipantPolicy(discontinued_retention_days=10)
    cap = NOW + timedelta(days=10)
    with session_for(url) as s:
        s.add(
            Transaction(
                query_id="q",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="enforce",
                source="mx",
                retain_until=NOW + timedelta(days=99),
            )
        )
        s.add(
            ReviewCaseRow(
                case_id="c",
                query_id="c",
                requesting="mx",
                purpose="enforce",
                opened_at=NOW,
                source="mx",
            )
        )  # no date at all: capped too
        s.add(
            RetrievalRow(
                retrieval_id="r",
                role="asker",
                query_id="q",
                asker="us",
                holder="mx",
                identity_ref="X",
                source="mx",
                retain_until=cap,
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="r-later",
                role="asker",
                query_id="q",
                asker="us",
                holder="mx",
                identity_ref="X",
                source="mx",
                retain_until=NOW + timedelta(days=30),
            )
        )
        s.commit()
        counts = retention.cap_for_discontinued(s, "mx", policy, NOW)
        s.commit()
        # one retrieval already ends on the cap: unchanged, not counted; the later one is
        assert counts == {"transactions": 1, "review_cases": 1, "retrievals": 1}
        assert s.get(RetrievalRow, ("r-later", "asker")).retain_until.replace(tzinfo=UTC) == cap
        assert s.get(ReviewCaseRow, "c").retain_until.replace(tzinfo=UTC) == cap


def test_refusals_are_kept_for_the_annual_review_and_then_purged(tmp_path):
    """A flood of refused messages must not grow the database without end: a refusal is
    kept as long as the annual review (§27) counts it, then it goes."""
    from biox.agreement.ledgers import RefusalRow

    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        for days, mid in ((401, "old"), (30, "recent")):
            s.add(
                RefusalRow(
                    queue="us.query",
                    kind="query",
                    message_id=mid,
                    reason="forged_sender",
                    answered=False,
                    at=NOW - timedelta(days=days),
                )
            )
        s.commit()
        assert retention.purge(s, NOW, ages=retention.Ages(markers_days=7)) == {"refusals": 1}
        s.commit()
        assert [r.message_id for r in s.exec(select(RefusalRow))] == ["recent"]


def test_every_table_has_a_retention_rule():
    """Issue 20 (7): a new table without a rule fails here, whatever it holds."""
    from sqlmodel import SQLModel

    import biox.agreement.ledgers
    import biox.store  # noqa: F401  (every table is declared by these two)

    tables = set(SQLModel.metadata.tables)
    assert tables - set(retention.RULES) == set(), "tables without a retention rule"
    assert set(retention.RULES) - tables == set(), "rules for tables that do not exist"


def test_each_ledger_and_what_follows_a_row_expires_by_its_rule(tmp_path):
    """Issue 20 (7): notices, disclosures, incidents, erasures, unconfirmed markers,
    tombstones and orphaned notations go when their period runs out; current ones stay."""
    from biox.agreement.ledgers import DisclosureRow, ErasureRow, NotationRow

    url = f"sqlite:///{tmp_path / 'us.db'}"
    ages = retention.Ages(ledger_days=1095, dead_letter_days=30, erasure_days=400)
    with session_for(url) as s:
        for name, days in (("old", 1096), ("new", 10)):
            at = NOW - timedelta(days=days)
            s.add(
                NoticeRow(
                    notice_id=f"n-{name}",
                    direction="in",
                    type="correction",
                    partner="mx",
                    sent_at=at,
                    status="applied",
                    details={"corrections": {"family_name": "CRUZ"}},
                )
            )
            s.add(
                DisclosureRow(
                    at=at,
                    recipient="court",
                    identity_ref=f"R-{name}",
                    source="us",
                    basis="own_data",
                    by="x",
                )
            )
            s.add(IncidentRow(incident_id=f"i-{name}", aware_at=at, summary="s", opened_by="x"))
        s.add(
            ErasureRow(
                source="mx", kind="query", key="old", cause="n", at=NOW - timedelta(days=401)
            )
        )
        s.add(
            ErasureRow(
                source="mx", kind="query", key="new", cause="n", at=NOW - timedelta(days=399)
            )
        )
        s.add(
            ProcessedMessage(
                consumer="us.query",
                message_id="unsent-31d",
                published=False,
                processed_at=NOW - timedelta(days=31),
            )
        )
        s.add(Tombstone(record_id=9, cause="retention", at=NOW - timedelta(days=8)))
        s.add(Tombstone(record_id=10, cause="retention", at=NOW - timedelta(days=1)))
        s.add(Record(id=3, identity_ref="R-3", source="us"))
        s.add(NotationRow(table="records", key="R-3", text="access given", by="po"))
        s.add(NotationRow(table="records", key="R-gone", text="access given", by="po"))
        s.commit()
        counts = retention.purge(s, NOW, ages=ages)
        s.commit()
        assert counts == {
            "notices": 1,
            "disclosures": 1,
            "incidents": 1,
            "erasures": 1,
            "processed_messages": 1,
            "tombstones": 1,
            "notations": 1,
        }
        assert [n.notice_id for n in s.exec(select(NoticeRow))] == ["n-new"]
        assert [d.identity_ref for d in s.exec(select(DisclosureRow))] == ["R-new"]
        assert [i.incident_id for i in s.exec(select(IncidentRow))] == ["i-new"]
        assert [e.key for e in s.exec(select(ErasureRow))] == ["new"]
        assert [t.record_id for t in s.exec(select(Tombstone))] == [10]
        assert [n.key for n in s.exec(select(NotationRow))] == ["R-3"]
        assert s.exec(select(ProcessedMessage)).all() == []


def test_a_tombstone_stays_while_the_snapshot_on_disk_still_holds_its_record(tmp_path):
    """The snapshot was rewritten without tombstones up to seq 1: a later one must stay
    (a matcher starting from the snapshot needs it), however old."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(Tombstone(seq=1, record_id=9, cause="retention", at=NOW - timedelta(days=30)))
        s.add(Tombstone(seq=2, record_id=10, cause="retention", at=NOW - timedelta(days=30)))
        s.commit()
        counts = retention.purge(s, NOW, ages=retention.Ages(snapshot_tombstone_seq=1))
        s.commit()
        assert counts == {"tombstones": 1}
        assert [t.record_id for t in s.exec(select(Tombstone))] == [10]


def test_the_purge_rewrites_the_gallery_snapshot_without_deleted_records(tmp_path):
    """Issue 20 (7): deleted or expired records leave the files on disk, not only the
    running matchers; the manifest says up to which tombstone."""
    from biox.gallery.gallery import Gallery
    from biox.handlers.notice import purge_all
    from biox.sim.galleries import build_gallery

    settings = Settings(data_dir=tmp_path)
    build_gallery(settings, "us", 50, 7)
    directory = settings.gallery_dir("us")
    before = Gallery.load(directory).size
    url = settings.database_for("us")
    with session_for(url) as s:
        ids = list(s.exec(select(Record.id).where(Record.source == "us")))[:2]
        retention.corrections.forget_records(s, ids, "notice:n-1")
        s.commit()
        counts = purge_all(s, NOW, "us", settings, ParticipantPolicy())
        s.commit()
    assert counts["gallery_snapshot"] == 2
    after = Gallery.load(directory)
    assert after.size == before - 2
    assert Gallery.tombstone_seq(directory) == 2
    assert not (directory / ".staged").exists()
    with session_for(url) as s:  # nothing new since: the snapshot is left alone
        assert "gallery_snapshot" not in purge_all(s, NOW, "us", settings, ParticipantPolicy())


def test_a_purge_that_finds_the_snapshot_being_written_leaves_it_and_keeps_its_tombstones(
    tmp_path,
):
    """While an import holds the snapshot (``snapshot.only_writer``) the schedule's purge
    does not wait for it: it purges the rest, and keeps every tombstone the snapshot on
    disk still lacks, however old; the next purge takes the records out."""
    import numpy as np

    from biox.gallery import snapshot
    from biox.gallery.gallery import Gallery
    from biox.handlers.notice import purge_all
    from biox.sim.galleries import build_gallery

    settings = Settings(data_dir=tmp_path)
    build_gallery(settings, "us", 50, 7)
    directory = settings.gallery_dir("us")
    url = settings.database_for("us")
    with session_for(url) as s:
        ids = np.array(list(s.exec(select(Record.id).where(Record.source == "us")))[:2])
        old = NOW - timedelta(days=settings.marker_retention_days + 30)
        s.add_all(Tombstone(record_id=i, cause="deletion", at=old) for i in ids.tolist())
        s.commit()
        with snapshot.only_writer(directory):
            counts = purge_all(s, NOW, "us", settings, ParticipantPolicy())
            s.commit()
        assert "gallery_snapshot" not in counts and "tombstones" not in counts
        assert counts["gallery_snapshot_busy"] == 1  # said, and counted in the audit trail
        assert Gallery.load(directory).holds(ids).all()
        counts = purge_all(s, NOW, "us", settings, ParticipantPolicy())
        s.commit()
    assert counts["gallery_snapshot"] == 2 and counts["tombstones"] == 2
    assert "gallery_snapshot_busy" not in counts
    assert not Gallery.load(directory).holds(ids).any()


def test_the_retention_table_in_the_docs_names_every_rule():
    from pathlib import Path

    text = Path("docs/lifecycle.md").read_text()
    section = text.split("## Retention (§21)", 1)[1].split("\n## ", 1)[0]
    for table, rule in retention.RULES.items():
        assert f"| `{table}` | {rule} |" in section, table
