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
    out = runner.invoke(app, [*args, "--operator", "pat.privacy"])
    assert out.exit_code in (0, 1), out.output  # 1: records show found nothing
    [event] = published
    assert event.envelope.kind == "ops.read"
    assert event.envelope.headers["biox-actor"] == "pat.privacy"
    body = msgpack.unpackb(event.body, raw=False)
    assert body["command"] == command
    assert "cruz" not in event.body.decode("latin-1")  # the terms as a digest, never as typed


def test_a_gallery_export_is_recorded_before_a_template_leaves(published, tmp_path):
    build_gallery(Settings(data_dir=tmp_path), "us", 20, 3)
    out = runner.invoke(app, ["gallery", "export", str(tmp_path / "g.parquet"), "-p", "us"])
    assert out.exit_code == 0, out.output
    [event] = published
    assert event.envelope.kind == "ops.read"
    assert msgpack.unpackb(event.body, raw=False)["command"] == "gallery export"


def test_a_read_that_cannot_be_recorded_shows_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BIOX_AMQP_URL", raising=False)
    out = runner.invoke(app, ["notice", "list", "-p", "us", "--json"])
    assert out.exit_code == 2
    assert "must be audited" in out.output
