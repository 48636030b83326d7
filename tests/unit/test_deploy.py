"""What `deploy/` hands an operator runs what the code offers: the compose file's and the
systemd unit's commands are real `biox` commands, and every dashboard query names a
metric a worker, `biox serve` or the broker's plugin exports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from biox.cli import app
from biox.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
runner = CliRunner()


def runs(argv: list[str]) -> None:
    """The command exists and takes these options (its --help answers with them)."""
    words = [w for w in argv if not w.startswith("-")]
    path = [w for w in words if not re.fullmatch(r"[a-z]{2}|%i|\$.*", w)]
    done = runner.invoke(app, [*path[:2], "--help"])
    assert done.exit_code == 0, f"biox {' '.join(path[:2])}: {done.output}"
    for option in (w.split("=")[0] for w in argv if w.startswith("-")):
        assert option in done.output, f"biox {' '.join(path[:2])} has no {option}"


def test_the_compose_file_runs_real_commands_with_a_health_check_and_a_grace_period():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert services["us"]["command"] == ["serve", "-p", "us"]
    runs(services["us"]["command"])
    assert services["us"]["stop_grace_period"] == "45s"  # longer than serve's 30 s per worker
    env = services["us"]["environment"]
    assert env["BIOX_AMQP_URL"].startswith("amqps://")  # the TLS broker, by certificate
    assert "BIOX_DATABASE_URL" not in env and env["BIOX_SECRETS_DIR"] == "/run/secrets"
    assert services["us"]["secrets"] == ["biox_database_url"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"


def test_the_compose_file_has_no_development_flag_no_password_and_no_open_port():
    text = (DEPLOY / "compose" / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert "BIOX_DEV_SHARED_BROKER" not in text and "change-me" not in text
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    conf = (DEPLOY / "compose" / "rabbitmq.conf").read_text()
    assert "listeners.tcp = none" in conf and "auth_mechanisms.1 = EXTERNAL" in conf
    advanced = (DEPLOY / "compose" / "advanced.config").read_text()
    assert "{crl_check, peer}" in advanced and "pki/us/ca.pem" in advanced
    init = runner.invoke(app, ["broker", "pki", "init", "--help"])
    assert init.exit_code == 0 and "--dir" in init.output
    runs(["broker", "definitions", "-p", "us", "--partner", "mx=h:1", "--tls-dir", "x"])
    dockerfile = (DEPLOY / "compose" / "Dockerfile").read_text()
    assert 'biox health -p "${BIOX_PARTICIPANT:-us}"' in dockerfile
    runs(["health", "-p", "us"])


def test_the_systemd_unit_runs_serve_and_waits_longer_than_serve_does():
    unit = (DEPLOY / "systemd" / "biox-serve@.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start is not None
    argv = shlex.split(start.group(1))
    assert argv[0].endswith("/biox") and argv[1:] == ["serve", "-p", "%i"]
    runs(argv[1:])
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=45" in unit
    example = (DEPLOY / "systemd" / "biox.env.example").read_text()
    names = re.findall(r"^(BIOX_[A-Z_]+)=", example, re.M)
    from biox.settings import Settings

    fields = {f"BIOX_{n.upper()}" for n in Settings.model_fields}
    assert set(names) <= fields, set(names) - fields


def exported() -> set[str]:
    names = set()
    for family in Metrics("us", "us.query").registry.collect():
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            names.add(family.name + suffix)
    names |= {
        "biox_review_backlog_cases",
        "biox_review_backlog_oldest_seconds",
        "biox_worker_up",
        "biox_worker_restarts_total",
    }
    return names


def test_every_dashboard_query_names_a_metric_that_is_exported():
    dashboard = json.loads((DEPLOY / "grafana" / "biox.json").read_text())
    known = exported()
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b((?:biox|rabbitmq)_[a-z_]+)\b", target["expr"]))
    assert queried
    biox = {m for m in queried if m.startswith("biox_")}
    assert biox <= known, biox - known
    # RabbitMQ's own (rabbitmq_prometheus): test_serve.py reads both from a live broker
    assert queried - biox == {"rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked"}
