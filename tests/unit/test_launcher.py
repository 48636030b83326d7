"""The local launcher's calls to RabbitMQ's CLI tools (``biox.dev.broker``): tried again
when the tool could not reach its node, never when the node said no; the users' limits
set in one call. The CLI itself is replaced: what is checked is what the launcher does
with its answers (the sovereign integration tests run the real one)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

import biox.dev.broker as launcher
import biox.dev.host as host
from biox.dev.broker import BrokerError, BrokerState, LocalBroker

UNREACHED = (
    "Error: unable to perform an operation on node 'biox1@localhost'. "
    "Please see diagnostics information and suggestions below."
)


class FakeCLI:
    """Answers each call with the next of ``answers``: (exit code, stdout, stderr), or
    ``None`` for a call that never returns."""

    def __init__(self, *answers: tuple[int, str, str] | None) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        answer = self.answers.pop(0)
        if answer is None:
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
        code, out, err = answer
        return subprocess.CompletedProcess(cmd, code, out, err)


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBroker:
    monkeypatch.setattr(launcher.time, "sleep", lambda _s: None)
    node = LocalBroker(tmp_path)
    node.state = BrokerState(1, str(tmp_path), 5671, 15672, 4369, "biox1@localhost", True)
    return node


def test_a_cli_call_that_could_not_reach_the_node_is_made_again(broker, monkeypatch):
    cli = FakeCLI((69, "", UNREACHED), (69, "", UNREACHED), (0, "[]\n", ""))
    monkeypatch.setattr(launcher.subprocess, "run", cli)
    assert broker.ctl("list_queues") == "[]\n"
    assert len(cli.calls) == 3
    assert all(call[-3:] == ["biox1@localhost", "-q", "list_queues"] for call in cli.calls)


def test_a_call_that_never_answers_is_made_again_then_reported(broker, monkeypatch):
    cli = FakeCLI(None, None, None)
    monkeypatch.setattr(launcher.subprocess, "run", cli)
    with pytest.raises(BrokerError, match=r"rabbitmqctl cluster_status: no answer in 7 s"):
        broker.ctl("cluster_status", timeout=7)
    assert len(cli.calls) == launcher.CLI_ATTEMPTS


def test_a_node_that_answered_no_is_not_asked_again(broker, monkeypatch):
    # the CLI exits 69 for a missing user too: only "could not reach" is worth a retry
    cli = FakeCLI((69, "", 'Error:\n{:no_such_user, "guest"}'), (0, "", ""))
    monkeypatch.setattr(launcher.subprocess, "run", cli)
    with pytest.raises(BrokerError, match="no_such_user"):
        broker.ctl("list_user_limits")
    assert len(cli.calls) == 1


def test_every_users_limits_are_set_in_one_call_with_names_quoted_for_erlang(broker, monkeypatch):
    cli = FakeCLI((0, "ok\n", ""))
    monkeypatch.setattr(launcher.subprocess, "run", cli)
    limits = {"max-connections": 16, "max-channels": 64}
    users = [
        {"name": "us.workers", "limits": limits},
        {"name": 'odd"name\\', "limits": limits},
        {"name": "us.nolimits"},
    ]
    broker._limit_users({"users": users})
    (call,) = cli.calls
    assert call[-2] == "eval"
    expression = call[-1]
    quoted = json.dumps(limits).replace('"', '\\"')
    assert expression == (
        "ok = rabbit_auth_backend_internal:set_user_limits("
        f'<<"us.workers">>, <<"{quoted}">>, <<"biox-launcher">>), '
        "ok = rabbit_auth_backend_internal:set_user_limits("
        f'<<"odd\\"name\\\\">>, <<"{quoted}">>, <<"biox-launcher">>).'
    )


def test_no_user_with_limits_means_no_call(broker, monkeypatch):
    cli = FakeCLI()
    monkeypatch.setattr(launcher.subprocess, "run", cli)
    broker._limit_users({"users": [{"name": "us.workers"}]})
    assert cli.calls == []


def test_a_free_port_is_below_where_outgoing_connections_take_theirs_and_never_given_twice():
    """A broker binds its ports seconds after they are chosen. Ports from the kernel's
    ephemeral range were also taken in between by outgoing connections (a readiness
    probe's own end), and the broker did not start (``dist_port_already_used``)."""
    low, _ = host.ephemeral_range()
    given = [host.free_port() for _ in range(200)]
    assert len(set(given)) == 200
    assert all(10_000 <= p < low for p in given)
    for port in given[:5]:  # and each bindable when handed out
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_seeded_random_module_does_not_decide_the_ports(monkeypatch):
    """Tests and simulations seed ``random``; every process they start would then try the
    same ports in the same order."""

    def seeded(*args: object) -> int:
        raise AssertionError("free_port used the random module's own generator")

    monkeypatch.setattr(random, "randrange", seeded)
    monkeypatch.setattr(random, "randint", seeded)
    assert 10_000 <= host.free_port() < host.ephemeral_range()[0]


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        tries = iter([busy, busy, 23_456])
        monkeypatch.setattr(host._RNG, "randrange", lambda a, b: next(tries))
        monkeypatch.setattr(host, "_GIVEN", set())
        monkeypatch.setattr(host, "ephemeral_range", lambda: (32768, 60999))
        assert host.free_port() == 23_456


def test_a_host_whose_ephemeral_range_starts_low_gets_the_kernels_choice(monkeypatch):
    monkeypatch.setattr(host, "ephemeral_range", lambda: (1024, 65000))
    port = host.free_port()
    assert port in host._GIVEN


def test_the_ephemeral_range_is_read_from_the_kernel_or_linuxs_default(monkeypatch, tmp_path):
    low, high = host.ephemeral_range()
    assert 0 < low < high <= 65535
    monkeypatch.setattr(host, "Path", lambda _: tmp_path / "missing")
    assert host.ephemeral_range() == (32768, 60999)
