"""``biox serve``'s supervisor with real child processes (stand-ins for workers, so no
broker is needed): restart with back-off, graceful stop, a kill for one that will not
stop, the status file ``biox health`` reads, and the counts an operator sets."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from biox.routes import ROUTES
from biox.supervisor import Supervisor, parse_counts, parse_nice, read_status

SLEEPS = "import time; time.sleep(60)"
CRASHES = "import sys, time; time.sleep(0.1); sys.exit(3)"
IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def python(code: str):
    return lambda kind, participant: [sys.executable, "-c", code]


def test_counts_default_to_one_of_each_kind_and_refuse_what_is_not_a_kind():
    assert parse_counts([]) == dict.fromkeys(ROUTES.queues, 1)
    counts = parse_counts(["query=3,review=0", "", "audit=2"])
    assert (counts["query"], counts["review"], counts["audit"], counts["intake"]) == (3, 0, 2, 1)
    with pytest.raises(ValueError, match="'matcher=2': expected KIND=N with KIND one of intake"):
        parse_counts(["matcher=2"])
    with pytest.raises(ValueError, match="whole number"):
        parse_counts(["query=two"])
    with pytest.raises(ValueError, match="expected KIND=N"):
        parse_counts(["query"])


def test_priorities_name_worker_families_and_nice_values_and_refuse_anything_else():
    assert parse_nice("query=-5,shard=-5") == {"query": -5, "shard": -5}
    assert parse_nice("") == {}
    assert parse_nice(" audit=10 , ,intake=0") == {"audit": 10, "intake": 0}
    assert parse_nice("query=-20,audit=19") == {"query": -20, "audit": 19}
    with pytest.raises(ValueError, match="'matcher=-5': expected KIND=N with KIND one of intake"):
        parse_nice("matcher=-5")
    with pytest.raises(ValueError, match=", ".join(ROUTES.specs) + "$"):
        parse_nice("matcher=-5")  # every family, as an operator would write it
    with pytest.raises(ValueError, match=r"'shard\.1=-5': expected KIND=N"):
        parse_nice("shard.1=-5")  # a family, not one shard's queue: every shard searches
    with pytest.raises(ValueError, match="'query=first': the priority must be a whole number"):
        parse_nice("query=first")
    with pytest.raises(ValueError, match="'query=-5=1': the priority must be a whole number"):
        parse_nice("query=-5=1")  # the kind is what comes before the first '='
    with pytest.raises(ValueError, match="'query=-21': the priority must be from -20 to 19"):
        parse_nice("query=-21")
    with pytest.raises(ValueError, match="'audit=20': the priority must be from -20 to 19"):
        parse_nice("audit=20")
    with pytest.raises(ValueError, match="expected KIND=N"):
        parse_nice("query")


def test_a_worker_that_exits_is_restarted_with_a_doubling_back_off(tmp_path):
    """Real processes that crash, on a clock the test moves: restarted only once each
    back-off has passed, the back-off doubling to its cap."""
    now = [0.0]
    sup = Supervisor(
        "us",
        {"query": 1},
        status_path=tmp_path / "serve.json",
        command=python(CRASHES),
        first_backoff_s=2.0,
        max_backoff_s=8.0,
        clock=lambda: now[0],
    ).start()
    child = sup.children[0]
    waits = []
    try:
        for _ in range(4):
            assert child.process is not None
            child.process.wait(5)  # it crashed
            sup.poll()  # seen: its restart is scheduled, not done
            assert child.process is None and child.last_exit == 3
            wait = child.next_start - now[0]
            now[0] += wait - 0.01
            sup.poll()
            assert child.process is None  # not a moment before its back-off
            now[0] += 0.01
            sup.poll()
            assert child.running()
            waits.append(wait)
    finally:
        sup.stop()
    assert waits == [2.0, 4.0, 8.0, 8.0]  # doubling, capped
    assert child.restarts == 4


def test_the_back_off_starts_over_once_a_worker_stayed_up():
    sup = Supervisor("us", {"query": 1}, command=python(SLEEPS), stable_s=0.3).start()
    child = sup.children[0]
    child.backoff = 32.0  # after a run of failures
    try:
        time.sleep(0.4)
        sup.poll()
        assert child.backoff == 1.0
    finally:
        sup.stop()


def test_stop_is_graceful_and_kills_only_what_ignores_it(tmp_path):
    status = tmp_path / "serve.json"
    sup = Supervisor(
        "us",
        {"query": 2, "audit": 1},
        status_path=status,
        stop_timeout=1.0,
        command=lambda kind, _: [sys.executable, "-c", IGNORES_TERM if kind == "audit" else SLEEPS],
        log_dir=tmp_path / "logs",
    ).start()
    time.sleep(0.5)
    sup.poll()
    seen = read_status(status)
    assert seen is not None and seen["alive"] is True
    assert [(w["kind"], w["index"], w["state"]) for w in seen["workers"]] == [
        ("query", 1, "running"),
        ("query", 2, "running"),
        ("audit", 1, "running"),
    ]
    assert all(isinstance(w["pid"], int) for w in seen["workers"])
    assert (tmp_path / "logs" / "us-audit-1.log").read_text() == "ready\n"
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    codes = {c.name: c.last_exit for c in sup.children}
    assert codes == {
        "query-1": -signal.SIGTERM,
        "query-2": -signal.SIGTERM,
        "audit-1": -signal.SIGKILL,
    }
    assert 1.0 <= took < 3.0  # the SIGTERMed ones at once, the other after the timeout
    stopped = read_status(status)
    assert stopped is not None and stopped["alive"] is False and stopped["stopped"] is True


def test_a_status_file_left_by_a_dead_supervisor_reads_as_down(tmp_path):
    status = tmp_path / "serve.json"
    sup = Supervisor("us", {"notice": 1}, status_path=status, command=python(SLEEPS)).start()
    sup.children[0].process.kill()  # type: ignore[union-attr]
    sup.children[0].process.wait()  # type: ignore[union-attr]
    text = status.read_text().replace(
        f'"supervisor_pid": {sup.status()["supervisor_pid"]}', '"supervisor_pid": 999999999'
    )
    status.write_text(text)
    seen = read_status(status)
    assert seen is not None and seen["alive"] is False
    assert read_status(tmp_path / "never.json") is None


def test_an_unknown_kind_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="unknown worker kind"):
        Supervisor("us", {"matcher": 1})
