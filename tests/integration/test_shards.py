"""Providers whose galleries are split in two shards, on a real broker, with real worker
processes (docs/architecture.md, "Shards"): one publish reaches each shard's queue, the
query worker gathers, and a shard SIGKILLed mid-stream delays its answers without losing
or changing one."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.orm.exc import StaleDataError

from biox.database import session_for
from biox.dev.broker import LocalBroker
from biox.gallery import gather
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import encounters, plans
from biox.sim.processes import dev_env, start_requester_with_providers, start_workers
from biox.wire import addresses
from tests.integration.conftest import SEED
from tests.integration.ledger import Tap, check_each_query_answered_once, check_results_once

PROVIDERS = ("mx", "sv")
SHARDS = ("shard.0", "shard.1")


@pytest.mark.fault
def test_sharded_providers_answer_each_query_once_through_a_shard_killed_and_back(
    tmp_path: Path,
):
    """On a broker of its own: the session's broker has the shared exchange's workers
    consuming ``mx.query``, which would take some of this test's queries."""
    broker = LocalBroker().start()
    try:
        run_with_a_shard_killed(broker.url, tmp_path)
    finally:
        broker.stop()


def run_with_a_shard_killed(broker_url: str, tmp_path: Path) -> None:
    settings = Settings(amqp_url=broker_url, data_dir=tmp_path, retry_delays="1,2", shards=2)
    registry = Registry.load(settings.registry)
    sizes = {"us": 10, "mx": 3000, "sv": 3000}
    workers = start_requester_with_providers(
        broker_url,
        settings,
        sizes,
        SEED,
        extra_env={"BIOX_SHARDS": "2"},
        provider_roles=("query", *SHARDS),
    )
    taps: list[Tap] = []
    try:
        for code in PROVIDERS:  # the snapshots the shard workers started from
            for i in range(2):
                assert (settings.gallery_dir(code) / f"shard-{i}-of-2" / "manifest.json").exists()
        planned = plans.plan(registry, sizes, 160, SEED, requesters=["us"], draw=3)
        expected = {p.encounter_id: sorted(p.expected_partners) for p in planned}
        keys = settings.keys()
        queries = {
            p: Tap(broker_url, [(addresses.outbox("us"), f"{p}.query")], keys) for p in PROVIDERS
        }
        answers = {
            p: Tap(broker_url, [(addresses.outbox(p), "us.response")], keys) for p in PROVIDERS
        }
        scattered = Tap(broker_url, [(addresses.inbox("mx"), "mx.shard.search")])
        taps = [*queries.values(), *answers.values(), scattered]
        with encounters.EncounterSystem(broker_url, sizes) as system:
            submitter = threading.Thread(
                target=system.submit, args=(planned,), kwargs={"batch": 10, "rate": 40}
            )
            submitter.start()
            time.sleep(1.5)
            victim = dict(workers.processes)["mx-shard.1"]
            victim.send_signal(signal.SIGKILL)  # mid-stream: its deliveries go back
            victim.wait(timeout=10)
            time.sleep(3)  # queries keep coming meanwhile, and wait for it
            env = dev_env(broker_url, settings, registry.codes, BIOX_SHARDS="2")
            workers.processes += start_workers(
                ["mx"], env, tmp_path / "logs", ("shard.1",)
            ).processes
            submitter.join(timeout=120)
            system.collect(timeout=240, idle_timeout=90, expect=len(planned))
        for p in planned:
            o = system.outcomes[p.encounter_id]
            if expected[p.encounter_id]:
                assert o.refused is None, (p.encounter_id, p.scenario, o.refused)
                assert sorted(o.answers) == expected[p.encounter_id], p.encounter_id
                assert o.final, p.encounter_id
        assert system.duplicates == 0
        # every answer the one the plan expects: a shard down never made a "no match"
        assert all(a.correct for o in system.outcomes.values() for a in o.answers.values())
        sent = {p: queries[p].drain() for p in PROVIDERS}
        for provider in PROVIDERS:
            check_each_query_answered_once(
                sent[provider],
                answers[provider].drain(),
                provider=provider,
                requester="us",
                requester_db=settings.database_for("us"),
                provider_db=settings.database_for(provider),
            )
        check_results_once(system)
        searched = {s.correlation_id for s in scattered.drain()}  # scattered once per query
        assert searched and searched <= {q.correlation_id for q in sent["mx"]}
    finally:
        for tap in taps:
            tap.close()
        workers.stop()


def test_two_workers_gathering_at_once_on_this_database(tmp_path: Path):
    """The optimistic lock of the gather on the database the run uses (PostgreSQL with
    ``--postgres``): the second of two concurrent last shards loses, then completes it."""
    from tests.unit.test_shards import hits_from, scattered

    db = Settings(data_dir=tmp_path).database_for("mx")
    search = scattered(db, shards=2, message_id=f"m-{time.time_ns()}")
    with session_for(db) as a, session_for(db) as b:
        assert gather.gather(a, [hits_from(search, 0, [(1, 0.3)])], 3, "mx") == ["waiting"]
        assert gather.gather(b, [hits_from(search, 1, [(2, 0.4)])], 3, "mx") == ["waiting"]
        a.commit()
        with pytest.raises(StaleDataError):
            b.commit()
    with session_for(db) as s:
        [done] = gather.gather(s, [hits_from(search, 1, [(2, 0.4)])], 3, "mx")
        s.commit()
    assert isinstance(done, gather.Gathered) and [h.record_id for h in done.hits] == [2, 1]
