"""A worker's start-up is kept out of the cyclic collector's walks (docs/performance.md,
"The collector's pauses"): what it built lives as long as the worker, and a full
collection that walked it paused the batch in hand for 55-250 ms under load. And a
worker takes its kind's CPU priority before it starts a thread (docs/performance.md, "The
matcher first")."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from biox import runtime
from biox.settings import Settings


@pytest.fixture
def thawed() -> Iterator[None]:
    """The test process's objects back in the collector's care afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_is_frozen_and_its_garbage_collected_first(thawed: None) -> None:
    held = [[i] for i in range(5_000)]  # as a gallery's maps: kept, and tracked
    garbage = Cycle()  # only the cyclic collector frees it
    gone = weakref.ref(garbage)
    del garbage

    frozen = runtime.freeze_start_up()

    assert gone() is None  # collected, not frozen for the worker's life
    assert frozen == gc.get_freeze_count() >= len(held)
    walked = {id(o) for o in gc.get_objects()}  # what a full collection walks
    assert all(gc.is_tracked(h) for h in held)
    assert not any(id(h) in walked for h in held)
    assert gc.isenabled()  # the young generations are collected as before
    after = [-1]  # made after start-up: still the collector's
    assert id(after) in {id(o) for o in gc.get_objects()}


def test_a_worker_freezes_its_start_up_before_it_consumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thawed: None
) -> None:
    seen: dict[str, Any] = {}

    class Loop:
        """The consume loop, stood in for: it sees what the worker did before it ran."""

        def __init__(self, **kwargs: Any) -> None:
            self.metrics = None
            seen["prioritised before the loop"] = seen.get("prioritised")

        def run(self, stop: object) -> None:
            seen["frozen"] = gc.get_freeze_count()

    class Log:
        """The worker's log, read back (structlog's may hold a stream an earlier test closed)."""

        def info(self, event: str, **fields: Any) -> None:
            seen.setdefault("logged", []).append((event, fields))

        error = warning = info

    monkeypatch.setattr(runtime, "ConsumeLoop", Loop)
    monkeypatch.setattr(runtime, "log", Log())
    monkeypatch.setattr(runtime.logs, "configure", lambda *_, **__: None)
    monkeypatch.setattr(runtime, "load_ring", lambda *_: None)
    monkeypatch.setattr(runtime.signal, "signal", lambda *_: None)  # pytest keeps its own
    monkeypatch.setattr(runtime, "prioritise", lambda role, _: seen.setdefault("prioritised", role))
    settings = Settings(data_dir=tmp_path, amqp_url="amqps://127.0.0.1:5671/%2F")

    runtime.run_worker("audit", "us", settings)

    assert seen["frozen"] > 10_000  # the worker's modules, mappers and registry
    assert ("start_up_frozen", {"objects": seen["frozen"]}) in seen["logged"]
    assert seen["prioritised before the loop"] == "audit"  # before its link starts a thread


#: a worker's start, as far as its priority: then a thread, as the link's I/O thread
PRIORITISED = """
import json, os, sys, threading
from biox import runtime
from biox.settings import Settings
runtime.prioritise(sys.argv[1], Settings(worker_nice=sys.argv[2]))
seen = {"main": os.getpriority(os.PRIO_PROCESS, 0)}
def later(): seen["thread"] = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's own
t = threading.Thread(target=later); t.start(); t.join()
print(json.dumps(seen))
"""


def prioritised(role: str, nice: str) -> dict[str, int]:
    """In a process of its own: a priority, once lowered, is not this test runner's to
    raise again without privilege."""
    here = str(Path(runtime.__file__).parents[1])  # the biox this test imported, as it is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PRIORITISED, role, nice], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.splitlines()[-1]))


def test_a_worker_takes_its_kinds_priority_and_every_thread_it_starts_inherits_it() -> None:
    started = os.getpriority(os.PRIO_PROCESS, 0)  # what a child starts with
    assert prioritised("audit", f"query=-5,audit={min(started + 7, 19)}") == {
        "main": min(started + 7, 19),
        "thread": min(started + 7, 19),
    }
    # a kind the setting does not name keeps the priority it was started with
    assert prioritised("intake", "query=-5") == {"main": started, "thread": started}
    assert prioritised("query", "") == {"main": started, "thread": started}


def test_a_priority_the_worker_may_not_take_is_logged_and_the_worker_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

        info = warning

    asked: list[tuple[int, int, int]] = []

    def refused(which: int, who: int, nice: int) -> None:
        asked.append((which, who, nice))
        raise PermissionError(1, "Operation not permitted")  # no CAP_SYS_NICE, no RLIMIT_NICE

    monkeypatch.setattr(runtime, "log", Log())
    monkeypatch.setattr(runtime.os, "setpriority", refused)

    runtime.prioritise("query", Settings(worker_nice="query=-5"))

    assert asked == [(os.PRIO_PROCESS, 0, -5)]  # this thread, before it starts another
    assert logged == [
        ("priority_not_set", {"nice": -5, "error": "[Errno 1] Operation not permitted"})
    ]

    logged.clear()
    monkeypatch.setattr(runtime.os, "setpriority", lambda *args: asked.append(args))
    runtime.prioritise("shard", Settings())  # the default: the shard searchers too

    assert asked[-1] == (os.PRIO_PROCESS, 0, -5)
    assert logged == [("priority_set", {"nice": -5})]


def test_a_worker_refuses_a_priority_setting_it_cannot_read() -> None:
    with pytest.raises(SystemExit, match="BIOX_WORKER_NICE: 'matcher=-5': expected KIND=N"):
        runtime.prioritise("query", Settings(worker_nice="matcher=-5"))
