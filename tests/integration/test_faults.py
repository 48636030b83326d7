"""Faults with real processes: a message that kills its worker, a broker restart under load."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pika
import pytest

from biox.broker.connection import parameters
from biox.broker.deadletters import DeadLetterQueues, Filters
from biox.broker.link import Link
from biox.broker.publisher import publish_once
from biox.broker.topology import declare_work_queue
from biox.database import session_for
from biox.dev.broker import LocalBroker
from biox.dev.host import free_port
from biox.gallery.gallery import Gallery
from biox.queries import examiners
from biox.registry import Purpose, Registry
from biox.settings import Settings
from biox.sim import encounters, galleries, plans, synth
from biox.sim.examiners import biographic_examiner
from biox.sim.processes import start_requester_with_providers
from biox.wire import addresses
from tests.integration.conftest import SEED, Peer
from tests.integration.ledger import Tap, check_each_query_answered_once, check_results_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]
CRASH_WORKER = Path(__file__).with_name("crash_worker.py")
PROVIDERS = ("mx", "sv")


def test_delivery_limit_parks_a_message_that_kills_its_worker(broker_url: str, tmp_path: Path):
    queue = f"test.crash.{uuid.uuid4().hex[:6]}"
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    declare_work_queue(conn.channel(), queue, [1], delivery_limit=2)
    conn.close()
    peer = Peer(broker_url)
    poison = peer.publish("", queue, b"boom", kind="x", schema=None, sender=None, recipient=None)
    good = peer.publish("", queue, b"fine", kind="x", schema=None, sender=None, recipient=None)
    database = f"sqlite:///{tmp_path / 'crash.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    crashes = 0
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:  # a supervisor restarting the worker each time it dies
            worker = subprocess.Popen(
                [sys.executable, str(CRASH_WORKER), broker_url, queue, database], env=env
            )
            try:
                code = worker.wait(timeout=8)
            except subprocess.TimeoutExpired:  # alive: the poison is gone and the rest is served
                worker.terminate()
                worker.wait()
                break
            assert code == 13
            crashes += 1
        dlqs = DeadLetterQueues(broker_url)
        try:
            parked = dlqs.find([addresses.dead_letter_queue(queue)], Filters(ids=(poison,)))
            count = peer.ch.queue_declare(queue, passive=True).method.message_count
        finally:
            dlqs.close()
        assert 2 <= crashes <= 4
        assert parked and parked[0].reason.startswith("broker: delivery_limit")
        assert count == 0  # the good message was processed after the poison was parked
        assert good
    finally:
        peer.close()


def test_a_client_given_several_nodes_skips_one_that_is_down(broker_url: str):
    """``BIOX_AMQP_URL`` naming the nodes of a cluster, the first of them down: the link
    and a blocking connection both reach the one that answers, and a publish is
    confirmed there (docs/operations.md, "A participant on several broker nodes")."""
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    url = f"{down},{broker_url}"
    queue = f"test.nodes.{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(parameters(url))
    try:
        conn.channel().queue_declare(queue, arguments={"x-expires": 60_000})
    finally:
        conn.close()
    with Link(url, name="test-nodes") as link:
        props = pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2)
        link.publish("", queue, b"x", props).result(timeout=30)
    conn = pika.BlockingConnection(parameters(url))
    try:
        assert conn.channel().queue_declare(queue, passive=True).method.message_count == 1
    finally:
        conn.close()


def test_broker_restart_under_load_loses_nothing_and_answers_once(tmp_path: Path):
    """The broker stops and starts again while encounters are still being submitted and
    queries answered. Counted by message id on both sides: every query answered once,
    every refusal the one the plan expects, every result revision under one message."""
    broker = LocalBroker().start()
    workers = None
    taps: list[Tap] = []
    try:
        settings = Settings(amqp_url=broker.url, data_dir=tmp_path, retry_delays="1,2")
        registry = Registry.load(settings.registry)
        sizes = {"us": 10, "mx": 3000, "sv": 3000}
        workers = start_requester_with_providers(broker.url, settings, sizes, SEED)
        planned = plans.plan(registry, sizes, 240, SEED, requesters=["us"], draw=3)
        expected = {p.encounter_id: sorted(p.expected_partners) for p in planned}  # before any
        keys = settings.keys()
        queries = {
            p: Tap(broker.url, [(addresses.outbox("us"), f"{p}.query")], keys) for p in PROVIDERS
        }
        answers = {
            p: Tap(broker.url, [(addresses.outbox(p), "us.response")], keys) for p in PROVIDERS
        }
        taps = [*queries.values(), *answers.values()]
        with encounters.EncounterSystem(broker.url, sizes) as system:
            failures: list[BaseException] = []

            def submit() -> None:
                try:
                    system.submit(planned, batch=10, rate=60)
                except BaseException as exc:  # surfaced below: the publisher gave up
                    failures.append(exc)

            submitter = threading.Thread(target=submit)
            submitter.start()
            time.sleep(1.5)
            submitted = len(system.outcomes)
            broker.restart(down_for=1.0)  # mid-stream: publishers and consumers must ride it out
            assert 0 < submitted < len(planned), "the restart did not land mid-stream"
            submitter.join(timeout=120)
            assert failures == [], f"the encounter system's publisher gave up: {failures}"
            system.collect(timeout=240, idle_timeout=90, expect=len(planned))
        for p in planned:
            o = system.outcomes[p.encounter_id]
            if expected[p.encounter_id]:
                assert o.refused is None, (p.encounter_id, p.scenario, o.refused)
                assert sorted(o.answers) == expected[p.encounter_id], p.encounter_id
                assert o.final, p.encounter_id
            else:  # §4: excluded for every partner, refused at intake
                assert o.refused in ("excluded_citizen", "excluded_resident"), (p.scenario, o)
        assert system.duplicates == 0
        assert all(a.correct for o in system.outcomes.values() for a in o.answers.values())
        for provider in PROVIDERS:
            check_each_query_answered_once(
                queries[provider].drain(),
                answers[provider].drain(),
                provider=provider,
                requester="us",
                requester_db=settings.database_for("us"),
                provider_db=settings.database_for(provider),
            )
        check_results_once(system)
        assert all(p.poll() is None for _, p in workers.processes)
    finally:
        for tap in taps:
            tap.close()
        if workers is not None:
            workers.stop()
        broker.stop()


def test_a_review_case_survives_a_broker_restart(tmp_path: Path):
    """A gray-zone case opened before the broker restarts is decided after it, and the
    answer reaches the encounter system: cases are rows, decisions persistent messages."""
    broker = LocalBroker().start()
    workers = None
    try:
        settings = Settings(amqp_url=broker.url, data_dir=tmp_path, retry_delays="1,2")
        sizes = {"us": 10, "mx": 3000}
        workers = start_requester_with_providers(
            broker.url,
            settings,
            sizes,
            SEED,
            provider_roles=("query", "review"),
        )
        gallery = Gallery.load(settings.gallery_dir("mx"))
        n, bio = galleries.gray_zone_subject(
            gallery,
            "mx",
            sizes["mx"],
            SEED,
            settings.threshold_low,
            settings.threshold_high,
            np.random.default_rng(17),
        )
        registry = Registry.load(settings.registry)
        planned = plans.single(
            registry, "us", n, SEED, Purpose.adjudicate, bio, scenario="poor"
        )  # adjudicate: us asks mx alone
        with encounters.EncounterSystem(broker.url, sizes) as system:
            system.submit([planned])
            outcome = system.outcomes[planned.encounter_id]
            assert system.collect(timeout=60, until=lambda: "mx" in outcome.in_review)
            broker.restart(down_for=1.0)
            with session_for(settings.database_for("mx")) as db:
                case = examiners.take_next(db, "ex-1", settings.review_lease_s)
                assert case is not None
                verdict, ref = biographic_examiner(case, examiners.sides(db, case))
            decision = examiners.decision_message("mx", case, verdict, ref, "ex-1")
            publish_once(broker.url, [decision], name="examiner")
            assert system.collect(timeout=90, until=lambda: outcome.complete)
        [answer] = outcome.answers.values()
        assert (answer.status, answer.identity_ref) == ("match", synth.identity_ref("mx", n))
        assert answer.decided_by == "examiner" and answer.reviewed
        assert all(p.poll() is None for _, p in workers.processes)
    finally:
        if workers is not None:
            workers.stop()
        broker.stop()
