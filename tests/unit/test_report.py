"""The annual review (§27) counts what happened, and the §28 checks find each planted
violation and nothing on a clean exchange."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from biox.agreement import corrections, quality, report
from biox.agreement.ledgers import IncidentRow, NoticeRow
from biox.agreement.measures import Measures
from biox.agreement.report_page import render
from biox.database import session_for
from biox.registry import Purpose
from biox.store import AuditEntry, Record, RetrievalRow, ReviewCaseRow, Transaction
from biox.wire.messages import utcnow
from biox.wire.notices import About
from tests.unit.test_workflows import Hub, encounter, make_hub, person_known_to

YEAR = (datetime.now(UTC) - timedelta(days=365), datetime.now(UTC) + timedelta(days=1))


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Hub:
    """us's encounters: three of people mx knows, two of strangers."""
    hub = make_hub(tmp_path_factory.mktemp("report"))
    outs = [encounter("us", person_known_to("mx", derogatory=False)) for _ in range(3)]
    outs += [encounter("us", 10_000 + i) for i in range(2)]  # strangers: no_match
    hub.run(outs)
    return hub


def test_the_report_counts_every_query_sent_and_answered_with_its_outcome(ran):
    hub = ran
    with hub.session("us") as s:
        txs = s.exec(select(Transaction).where(Transaction.role == "requester")).all()
        rep = report.build(s, "us", *YEAR)
    sent = {(f.partner, f.purpose): f for f in rep.flows if f.direction == "sent"}
    expected = Counter((tx.providing, tx.purpose) for tx in txs)
    assert {k: f.queries for k, f in sent.items()} == dict(expected)
    assert sum(f.queries for f in sent.values()) == len(txs) == 10  # 5 encounters x mx, sv
    mx = sent[("mx", "enforce")]
    assert mx.outcomes["match"] == 3 and mx.outcomes["no_match"] == 2
    assert set(mx.latency_s) == {"p50", "p95", "p99"} and mx.decided_by["automatic"] == 5
    assert sum(rep.per_month[m]["sent"] for m in rep.per_month) == 10
    with hub.session("mx") as s:
        theirs = report.build(s, "mx", *YEAR)
    [answered] = [f for f in theirs.flows if f.direction == "answered"]
    assert (answered.partner, answered.queries) == ("us", 5)
    assert answered.outcomes == mx.outcomes  # what mx answered is what us received


def test_the_report_page_holds_the_three_charts_and_the_numbers(ran):
    hub = ran
    with hub.session("us") as s:
        page = render(report.build(s, "us", *YEAR))
    assert page.count("<svg") == 3
    for label in ("queries per month", "outcomes", "latency distribution"):
        assert f'aria-label="{label}"' in page
    assert "Queries sent: 10" in page and "<script" not in page and "http" not in page


def test_percentiles_are_nearest_rank():
    assert report.percentiles([]) == {}
    values = [float(v) for v in range(1, 101)]
    assert report.percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert report.percentiles([3.0]) == {"p50": 3.0, "p95": 3.0, "p99": 3.0}


def plant(url: str, violation: str) -> None:
    now = utcnow()
    with session_for(url) as s:
        if violation == "expired":
            s.add(
                Record(
                    id=91,
                    identity_ref="X-91",
                    source="mx",
                    source_query_id="q",
                    retain_until=now - timedelta(days=1),
                )
            )
        elif violation == "provenance":
            s.add(Record(id=92, identity_ref="X-92", source="mx"))
        elif violation == "provenance of an answer":  # kept, but not from whom (§20)
            s.add(
                Transaction(
                    query_id="q-94",
                    role="requester",
                    encounter_id="E",
                    requesting="us",
                    providing="mx",
                    purpose="enforce",
                    status="match",
                    answer={"status": "match", "candidates": []},
                    source="mx",
                )
            )
        elif violation == "provenance of a retrieval":
            s.add(
                RetrievalRow(
                    retrieval_id="r-95",
                    role="asker",
                    query_id="q-95",
                    asker="us",
                    holder="mx",
                    identity_ref="X",
                    status="released",
                    data={"identity_ref": "E-95"},
                    source_message_id="m-95",
                )
            )
        elif violation == "onward_disclosure":
            s.add(Record(id=93, identity_ref="SV-93", source="sv", source_query_id="q"))
            s.add(
                Transaction(
                    query_id="q-93",
                    role="provider",
                    encounter_id="E",
                    requesting="mx",
                    providing="us",
                    purpose="enforce",
                    status="match",
                    answer={
                        "candidates": [{"identity_ref": "SV-93", "record": {"biographic": {}}}]
                    },
                )
            )
        elif violation == "notice_overdue":
            due = now - timedelta(days=1)
            s.add(
                NoticeRow(
                    notice_id="n-9",
                    direction="in",
                    type="deletion",
                    partner="mx",
                    sent_at=now,
                    status="received",
                    respond_by=due,
                )
            )
        elif violation == "incident_overdue":
            s.add(
                IncidentRow(
                    incident_id="i-9",
                    aware_at=now - timedelta(hours=49),
                    summary="x",
                    partners=["mx"],
                    opened_by="o",
                )
            )
        elif violation == "review_overdue":
            s.add(
                ReviewCaseRow(
                    case_id="c-9",
                    query_id="c-9",
                    requesting="mx",
                    purpose="enforce",
                    opened_at=now - timedelta(days=30),
                    source="mx",
                )
            )
        elif violation == "audit_chain":
            entry = s.exec(select(AuditEntry).order_by(AuditEntry.seq)).first()
            assert entry is not None
            entry.kind = "response" if entry.kind != "response" else "query"
            s.add(entry)
        s.commit()


@pytest.mark.parametrize(
    "violation",
    [
        "expired",
        "provenance",
        "provenance of an answer",
        "provenance of a retrieval",
        "onward_disclosure",
        "notice_overdue",
        "incident_overdue",
        "review_overdue",
        "audit_chain",
    ],
)
def test_qa_finds_each_planted_violation(tmp_path, violation):
    hub = make_hub(tmp_path)
    hub.run([encounter("mx", person_known_to("us", derogatory=False))])
    url = hub.exchange.settings.database_for("us")
    with session_for(url) as s:
        assert quality.run(s, "us", utcnow(), review_overdue_s=86_400) == []  # clean before
    plant(url, violation)
    with session_for(url) as s:
        found = quality.run(s, "us", utcnow(), review_overdue_s=86_400)
    assert [f.check for f in found] == [violation.split(" of ")[0]], found


def test_rows_that_hold_no_partner_data_need_no_provenance(tmp_path):
    """A query still waiting and a retrieval we answered (JSON null where data would be)."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(
            Transaction(
                query_id="q-1",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="pending",
            )
        )
        s.add(
            RetrievalRow(
                retrieval_id="r-1",
                role="holder",
                query_id="q-1",
                asker="mx",
                holder="us",
                identity_ref="X",
            )
        )
        s.commit()
        assert quality.run(s, "us", utcnow(), review_overdue_s=86_400) == []


# --- the agreement's measures, a signed review and a reconciliation (issue 20) -------------


def _measures(tmp_path, text: str = "") -> Measures:
    path = tmp_path / "agreement.toml"
    path.write_text(text or Path("deploy/agreement.toml").read_text())
    return Measures.load(path)


def _reviews(hub: Hub, start, end, measures: Measures) -> tuple[dict, dict]:
    """us's review as JSON and mx's, signed by mx."""
    ps = tuple(measures.review.latency_percentiles)
    with session_for(hub.exchange.settings.database_for("us")) as s:
        ours = report.build(s, "us", start, end, ps).as_json()
    with session_for(hub.exchange.settings.database_for("mx")) as s:
        theirs = report.build(s, "mx", start, end, ps)
    return ours, report.signed(theirs, hub.exchange.keys["mx"], measures)


def test_two_participants_reviews_reconcile_and_each_difference_is_named(tmp_path):
    """us and mx exchange queries both ways, one of them answered by a decline mx
    conceals (a sealed record): both reviews agree, counted as the requester was told.
    Then mx has us delete one answer (§22), which both still count as answered, and mx
    loses every row of one purpose: the reconciliation names each direction, purpose and
    outcome that differ, with counts, and nothing for the deleted answer."""
    hub = make_hub(tmp_path)
    hub.run([encounter("us", person_known_to("mx", derogatory=False)) for _ in range(3)])
    hub.run([encounter("us", person_known_to("mx", derogatory=False), Purpose.adjudicate)])
    hub.run([encounter("us", person_known_to("mx", sealed=True))])
    hub.run([encounter("mx", person_known_to("us", derogatory=False))])
    measures = _measures(tmp_path)
    start, end = utcnow() - timedelta(days=1), utcnow() + timedelta(days=1)
    ours, theirs = _reviews(hub, start, end, measures)
    trust = hub.exchange.keys["us"].trust
    assert report.reconcile(ours, theirs, trust, measures) == []

    us_db, mx_db = (hub.exchange.settings.database_for(c) for c in ("us", "mx"))
    with session_for(us_db) as s:
        mine = s.exec(
            select(Transaction).where(
                Transaction.role == "requester",
                Transaction.providing == "mx",
                Transaction.status == "match",
            )
        ).all()
        withdrawn = next(tx for tx in mine if tx.purpose == "enforce")
        about = About(query_ids=[withdrawn.query_id])
        assert corrections.delete_from(s, "mx", about, "notice:n-1").held
        s.commit()
    with session_for(mx_db) as s:
        rows = s.exec(select(Transaction).where(Transaction.role == "provider")).all()
        lost = {tx.purpose for tx in rows if tx.requesting == "us"} - {withdrawn.purpose}
        lost_purpose = sorted(lost)[0] if lost else None
        for tx in rows:
            if tx.purpose == lost_purpose and tx.requesting == "us":
                s.delete(tx)
        s.commit()
    ours, theirs = _reviews(hub, start, end, measures)
    sent = {
        f["purpose"]: f for f in ours["flows"] if f["direction"] == "sent" and f["partner"] == "mx"
    }
    expected = []
    for purpose in sorted(sent):
        flow = sent[purpose]
        if purpose == lost_purpose:
            expected.append(f"us→mx {purpose}: us sent {flow['queries']}, mx answered 0")
            expected += [
                f"us→mx {purpose} {o}: us holds {flow['answered_as'].get(o, 0)}, mx answered 0"
                for o in report.FINAL
                if flow["answered_as"].get(o, 0)
            ]
        if purpose == withdrawn.purpose:
            # deleted since (§22), but answered: counted as answered, shown as withdrawn
            assert flow["outcomes"]["withdrawn"] == 1 and flow["answered_as"]["match"] >= 1
    assert lost_purpose is not None and len(expected) >= 2
    assert report.reconcile(ours, theirs, trust, measures) == expected


def test_a_review_that_is_not_the_partners_or_not_comparable_is_refused(tmp_path):
    hub = make_hub(tmp_path)
    hub.run([encounter("us", person_known_to("mx", derogatory=False))])
    measures = _measures(tmp_path)
    start, end = utcnow() - timedelta(days=1), utcnow() + timedelta(days=1)
    ours, theirs = _reviews(hub, start, end, measures)
    trust = hub.exchange.keys["us"].trust
    forged = {**theirs, "flows": []}  # edited after it was signed
    with pytest.raises(report.NotComparable, match="the review of 'mx' is not signed by it"):
        report.reconcile(ours, forged, trust, measures)
    posing = {**theirs, "participant": "sv"}  # mx's signature on a review naming sv
    with pytest.raises(report.NotComparable, match="not signed"):
        report.reconcile(ours, posing, trust, measures)
    other = report.signed(
        report.Report("mx", start, end + timedelta(days=1), [], {}, {}, {}, {}, {}),
        hub.exchange.keys["mx"],
        measures,
    )
    with pytest.raises(report.NotComparable, match="periods differ"):
        report.reconcile(ours, other, trust, measures)
    elsewhere = _measures(tmp_path, "[review]\nlatency_percentiles = [90]\n")
    with pytest.raises(report.NotComparable, match=r"^the reviews were made under different"):
        report.reconcile(ours, theirs, trust, elsewhere)


def test_qa_runs_the_checks_the_agreement_enables(tmp_path):
    hub = make_hub(tmp_path)
    hub.run([encounter("mx", person_known_to("us", derogatory=False))])
    url = hub.exchange.settings.database_for("us")
    plant(url, "provenance")
    measures = _measures(tmp_path, '[checks]\nenabled = ["expired"]\n')
    with session_for(url) as s:
        assert [f.check for f in quality.run(s, "us", utcnow(), 86_400)] == ["provenance"]
        assert quality.run(s, "us", utcnow(), 86_400, measures.checks.enabled) == []
    with pytest.raises(ValueError):
        _measures(tmp_path, '[checks]\nenabled = ["whatever"]\n')


def test_the_review_counts_each_field_of_flows_cases_and_notices_exactly(tmp_path):
    """The annual review's every figure, from rows planted for it (the mutation run)."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    with session_for(url) as s:
        for n, status, told in ((1, "declined", "no_match"), (2, "match", "match")):
            s.add(
                Transaction(
                    query_id=f"p-{n}",
                    role="provider",
                    encounter_id="E",
                    requesting="mx",
                    providing="us",
                    purpose="enforce",
                    status=status,
                    reason_code="record_not_releasable" if status == "declined" else None,
                    received_at=t0,
                    answered_at=t0 + timedelta(seconds=2 * n),
                    answer={"status": told, "decided_by": "automatic"},
                )
            )
        s.add(
            Transaction(
                query_id="r-1",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="adjudicate",
                status="pending",
                sent_at=t0,
            )
        )
        s.add(
            Transaction(
                query_id="r-0",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                sent_at=start - timedelta(days=1),
            )
        )
        s.add(
            ReviewCaseRow(
                case_id="c-1",
                query_id="c-1",
                requesting="mx",
                purpose="enforce",
                opened_at=t0,
                source="mx",
                status="decided",
                examiner="ana",
                decided_at=t0 + timedelta(hours=3),
            )
        )
        s.add(
            ReviewCaseRow(
                case_id="c-2",
                query_id="c-2",
                requesting="mx",
                purpose="enforce",
                opened_at=t0,
                source="mx",
            )
        )
        s.add(
            NoticeRow(
                notice_id="n-1",
                direction="out",
                type="deletion",
                partner="mx",
                sent_at=t0,
                status="sent",
                respond_by=t0 + timedelta(days=30),
            )
        )
        s.add(
            NoticeRow(
                notice_id="n-2",
                direction="in",
                type="block",
                partner="mx",
                sent_at=t0,
                status="applied",
            )
        )
        s.commit()
        rep = report.build(s, "us", start, end, (50, 100))
    out = rep.as_json()
    assert (out["participant"], out["start"], out["end"]) == (
        "us",
        start.isoformat(),
        end.isoformat(),
    )
    [answered, sent] = out["flows"]
    assert (answered["partner"], answered["purpose"], answered["direction"]) == (
        "mx",
        "enforce",
        "answered",
    )
    assert answered["queries"] == 2
    assert answered["outcomes"] == {"declined": 1, "match": 1}
    assert answered["answered_as"] == {"no_match": 1, "match": 1}
    assert answered["reasons"] == {"record_not_releasable": 1}
    assert answered["decided_by"] == {"automatic": 2}
    assert answered["latency_s"] == {"p50": 2.0, "p100": 4.0}
    assert "_latencies" not in answered
    assert (sent["direction"], sent["purpose"], sent["queries"], sent["outcomes"]) == (
        "sent",
        "adjudicate",
        1,
        {"pending": 1},
    )
    assert sent["latency_s"] == {}  # nothing answered yet
    assert out["per_month"] == {"2026-03": {"sent": 1, "answered": 2}}
    review = out["review"]
    assert (review["cases"], review["by_status"], review["by_examiner"]) == (
        2,
        {"decided": 1, "pending": 1},
        {"ana": 1},
    )
    assert review["hours_to_decide"] == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
    assert set(review["open_hours"]) == {"p50", "p95", "p99"}
    notices = out["notices"]
    assert (notices["count"], notices["by_type"], notices["by_status"]) == (
        2,
        {"out:deletion": 1, "in:block": 1},
        {"sent": 1, "applied": 1},
    )
    assert notices["overdue"] == ["n-1"]
    json.dumps(out)  # JSON as it stands


def test_the_retention_ages_come_from_the_settings_and_the_policy():
    from biox.agreement.retention import Ages
    from biox.policy.release import ParticipantPolicy
    from biox.settings import Settings

    settings = Settings(
        marker_retention_days=8,
        refusal_retention_days=401,
        ledger_retention_days=1200,
        dead_letter_retention_days=31,
    )
    policy = ParticipantPolicy(
        enrolled_retention_days=10, received_retention_days=500, encounter_retention_days=20
    )
    assert Ages.of(settings, policy, 7) == Ages(
        markers_days=8,
        refusals_days=401,
        ledger_days=1200,
        dead_letter_days=31,
        erasure_days=531,
        snapshot_tombstone_seq=7,
    )
