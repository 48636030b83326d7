"""How the simulated encounter system offers a load (``sim/encounters.py``): the latency
figures of docs/performance.md are measured under it, so its pacing is checked here."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from biox.sim.encounters import EncounterSystem, poisson_arrivals


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, int]] = []

    def send(self, messages: list[object]) -> None:
        self.sent.append((time.monotonic(), len(messages)))


def _system() -> tuple[EncounterSystem, _Recorder]:
    system = object.__new__(EncounterSystem)  # no broker: only the pacing is under test
    recorder = _Recorder()
    system.publisher = recorder  # type: ignore[assignment]
    system.outcomes, system.requesters_of = {}, {}
    return system, recorder


def _planned(n: int) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(encounter_id=f"e{i}", person=i, requester="us", submitted_at=0.0)
        for i in range(n)
    ]


def test_arrivals_come_at_the_rate_asked_independently_and_from_zero():
    times = poisson_arrivals(20_000, 125.0, seed=7)
    gaps = np.diff(times)
    assert times[0] == 0.0 and (gaps >= 0).all()
    assert abs(gaps.mean() - 1 / 125) < 0.03 / 125  # the offered rate
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: not evenly spaced
    assert np.array_equal(times, poisson_arrivals(20_000, 125.0, seed=7))
    assert not np.array_equal(times, poisson_arrivals(20_000, 125.0, seed=8))


def test_what_is_due_goes_together_what_is_not_waits_for_its_time():
    system, recorder = _system()
    planned = _planned(6)
    schedule = [0.0, 0.0, 0.0, 0.4, 0.4, 0.8]
    started = time.monotonic()
    system.submit(planned, batch=2, encoded=list(range(6)), arrivals=schedule)  # type: ignore[arg-type]
    assert [n for _, n in recorder.sent] == [2, 1, 2, 1]  # never more than a batch at once
    offsets = [at - started for at, _ in recorder.sent]
    assert offsets[2] >= 0.4 and offsets[3] >= 0.8  # nothing sent before its arrival
    assert offsets[1] < 0.3  # the third was due at once: not held back to a later send
    # latency counts from each person's arrival, not from when the sender got to them
    for p, at in zip(planned, schedule, strict=True):
        assert abs(p.submitted_at - (started + at)) < 0.05
    assert set(system.outcomes) == {p.encounter_id for p in planned}


def test_without_a_schedule_encounters_go_in_paced_batches():
    system, recorder = _system()
    started = time.monotonic()
    system.submit(_planned(5), batch=2, rate=20.0, encoded=list(range(5)))  # type: ignore[arg-type]
    assert [n for _, n in recorder.sent] == [2, 2, 1]
    offsets = [at - started for at, _ in recorder.sent]
    assert offsets[1] >= 2 / 20 and offsets[2] >= 4 / 20


def test_a_window_holds_back_what_would_leave_too_many_unanswered():
    system, recorder = _system()
    system.completed = 0
    answered = threading.Timer(0.5, lambda: setattr(system, "completed", 3))
    started = time.monotonic()  # before the timer starts: its answers come 0.5 s after
    answered.start()
    system.submit(_planned(5), batch=2, encoded=list(range(5)), window=3)  # type: ignore[arg-type]
    answered.join()
    sizes = [n for _, n in recorder.sent]
    offsets = [at - started for at, _ in recorder.sent]
    assert sizes == [2, 1, 2]  # the second batch shrinks to fit the window
    assert offsets[1] < 0.3 and offsets[2] >= 0.5  # the rest waited for answers
