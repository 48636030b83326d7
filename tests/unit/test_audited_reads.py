"""Reading personal or biometric data from the CLI is itself recorded (§16, §27; issue
20 (6)): the read event reaches the audit trail before anything is shown, and a read that
cannot be recorded is not shown at all."""

from __future__ import annotations

import msgpack
import pytest
from typer.testing import CliRunner

from biox.cli import app
from biox.settings import Settings
from biox.sim.galleries import build_gallery

runner = CliRunner()


@pytest.fixture
def published(tmp_path, monkeypatch) -> list:
    """What the CLI publishes, captured where it would reach the broker."""
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("BIOX_OPERATOR", "pat")  # us's privacy officer (deploy/staff.toml)
    sent: list = []
    monkeypatch.setattr(
        "biox.cli.common.publish_once", lambda url, messages, **kw: sent.extend(messages)
    )
    return sent


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["subject", "search", "-p", "us", "--name", "cruz"], "subject search"),
        (["notice", "list", "-p", "us", "--json"], "notice list"),
        (["disclosure", "list", "-p", "us"], "disclosure list"),
        (["records", "show", "US-1", "-p", "us"], "records show"),
    ],
)
def test_each_read_of_personal_data_is_an_audit_event_with_who_read_it(published, args, command):
    out = runner.invoke(app, [*args, "--operator", "pat"])
    assert out.exit_code in (0, 1), out.output  # 1: records show found nothing
    [event] = published
    assert event.envelope.kind == "ops.read"
    assert event.envelope.headers["biox-actor"] == "pat"
    body = msgpack.unpackb(event.body, raw=False)
    assert body["command"] == command
    assert "cruz" not in event.body.decode("latin-1")  # the terms as a digest, never as typed


def test_a_gallery_export_is_recorded_before_a_template_leaves(published, tmp_path):
    build_gallery(Settings(data_dir=tmp_path), "us", 20, 3)
    target = str(tmp_path / "g.parquet")
    out = runner.invoke(app, ["gallery", "export", target, "-p", "us", "--operator", "ada"])
    assert out.exit_code == 0, out.output
    [event] = published
    assert event.envelope.kind == "ops.read"
    assert msgpack.unpackb(event.body, raw=False)["command"] == "gallery export"


def test_a_read_that_cannot_be_recorded_shows_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BIOX_AMQP_URL", raising=False)
    monkeypatch.setenv("BIOX_OPERATOR", "pat")
    out = runner.invoke(app, ["notice", "list", "-p", "us", "--json"])
    assert out.exit_code == 2
    assert "must be audited" in out.output


def test_a_receiver_blocks_partner_data_it_believes_wrong_and_asks_for_a_correction(
    published, tmp_path, monkeypatch
):
    """§24 (issue 20 (8)): without waiting for the sender's notice, us blocks what mx sent
    (a record and an answer naming it), notes why, and asks mx to correct it."""
    from sqlmodel import select

    from biox.agreement.ledgers import NotationRow
    from biox.database import session_for
    from biox.store import Record, Transaction

    sent: list = []
    monkeypatch.setattr("biox.cli.records.send_notice", lambda me, ask: sent.append(ask) or "n-1")
    url = Settings(data_dir=tmp_path).database_for("us")
    with session_for(url) as s:
        s.add(Record(id=5, identity_ref="MX-5", source="mx", source_query_id="q"))
        s.add(Record(id=6, identity_ref="US-6", source="us"))
        s.add(
            Transaction(
                query_id="a-1",
                role="requester",
                encounter_id="E",
                requesting="us",
                providing="mx",
                purpose="enforce",
                status="match",
                source="mx",
                answer={"status": "match", "candidates": [{"identity_ref": "MX-5"}]},
            )
        )
        s.commit()
    out = runner.invoke(app, ["records", "block", "MX-5", "-p", "us", "--text", "wrong DOB"])
    assert out.exit_code == 0, out.output
    with session_for(url) as s:
        assert s.get(Record, 5).blocked_at is not None
        assert s.get(Transaction, ("a-1", "requester")).blocked_at is not None
        notes = {(n.table, n.key) for n in s.exec(select(NotationRow))}
        assert notes == {("records", "MX-5"), ("answers", "MX-5")}
    [ask] = sent
    assert (ask.type.value, ask.to, ask.about.identity_refs) == (
        "correction_request",
        "mx",
        ["MX-5"],
    )
    assert "wrong DOB" in ask.text
    own = runner.invoke(app, ["records", "block", "US-6", "-p", "us", "--text", "x"])
    assert own.exit_code == 2 and "our own data" in own.output
    lifted = runner.invoke(
        app, ["records", "block", "MX-5", "-p", "us", "--text", "ok", "--unblock"]
    )
    assert lifted.exit_code == 0 and len(sent) == 1
    with session_for(url) as s:
        assert s.get(Record, 5).blocked_at is None
