"""The bench's own accounting. Where an encounter's time goes (``bench/hops.py``): its hops
must follow the exchange's own records in order, and add up to the latency measured. And
which of a saturated run's rounds is its figure (``bench.run.Saturated``)."""

from __future__ import annotations

import time
import uuid

import pytest
from bench import hops
from bench.batches import REPLIES, encounters
from bench.run import REGISTRY, SEED, provider_gallery

from biox.broker.memory import InMemoryExchange
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import plans


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """Eight encounters through every worker, one at a time, each timed from before its
    submission to after its result, as the bench's encounter system times them."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("hops"), registry=REGISTRY)
    provider_gallery(300, settings)
    registry = Registry.load(REGISTRY)
    planned = [
        p
        for p in plans.plan(registry, {"mx": 300, "us": 1}, 40, SEED, ["us"])
        if p.expected_partners
    ][:8]
    exchange = InMemoryExchange(settings)
    exchange.declare_queue(REPLIES)
    timed = {}
    for message in encounters(planned, uuid.uuid4().hex[:6]):
        arrived = time.time()
        exchange.publish(message)
        exchange.run()
        timed[message.envelope.correlation_id] = hops.Timed(arrived, time.time() - arrived)
    return settings.database_for("us"), timed


def test_each_hop_ends_where_the_next_begins_in_the_order_the_workers_ran(timed_run):
    url, timed = timed_run
    rows = hops.spans(url, timed)
    assert len(rows) == len(timed)  # every encounter was answered, each gives a row
    for latency, *spent in rows:
        assert len(spent) == len(hops.HOPS)
        # intake ran before the matcher, which answered before the response worker ran,
        # all between the submission and the result: no hop is negative
        assert all(ms >= 0 for ms in spent), spent
        assert sum(spent) == pytest.approx(latency, abs=1e-6)
        assert spent[2] < latency  # the search is a part, not the whole


def test_encounters_the_exchange_has_no_answer_for_are_left_out(timed_run):
    url, timed = timed_run
    stranger = {"US-ENC-never-sent": hops.Timed(time.time(), 0.05)}
    assert hops.spans(url, {**timed, **stranger}) == hops.spans(url, timed)
    assert hops.spans(url, stranger) == []
    assert hops.of_run(url, stranger) == {}


def test_the_tail_is_the_slowest_hundredth_and_the_typical_is_the_median():
    # 198 encounters spend 10 ms in each hop; two spend 500 ms in the matcher's batch
    quick = [[50.0, 10.0, 10.0, 10.0, 10.0, 10.0]] * 198
    slow = [[540.0, 10.0, 10.0, 500.0, 10.0, 10.0], [560.0, 10.0, 30.0, 500.0, 10.0, 10.0]]
    spent = hops.summary(quick + slow)
    assert spent["encounters"] == 200 and spent["slowest"] == 2
    assert spent["p50_ms"] == dict.fromkeys(hops.HOPS, 10.0)
    assert spent["slowest_mean_ms"] == {
        "to intake": 10.0,
        "intake to matcher": 20.0,
        "matcher's batch": 500.0,
        "matcher to response": 10.0,
        "response to result": 10.0,
    }


def test_a_saturated_run_is_its_median_round_and_counts_every_rounds_errors():
    """Three rounds: the figure is the middle one's, with its own CPU and drain, and every
    round's throughput beside it; a wrong or missing answer in a round left out of the
    median is still counted (``bench.run.Saturated.median_of``)."""
    from bench.run import Run, Saturated

    def round_of(throughput: float, missing: int, wrong: int) -> Saturated:
        run = Run(3000, 3000 / throughput, [0.1], missing, wrong, {})
        return Saturated(run, throughput, {"us-intake": throughput / 1000}, 0, throughput / 100)

    rounds = [round_of(380.0, 0, 0), round_of(301.25, 2, 0), round_of(412.5, 0, 1)]
    median = Saturated.median_of(rounds)
    assert median.throughput == 380.0
    assert median.cpu_ms == {"us-intake": 0.38}
    assert median.audit_drain_s == 3.8
    assert median.run is rounds[0].run
    assert median.rounds == [380.0, 301.2, 412.5]  # in the order they ran, one decimal
    assert (median.missing, median.wrong) == (2, 1)
    two = Saturated.median_of(rounds[1:])
    assert two.throughput == 412.5  # the upper of the middle two
    assert Saturated.median_of([rounds[1]]).rounds == [301.2]
