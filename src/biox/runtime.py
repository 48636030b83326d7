"""Runs the worker of one queue for a participant: the queue's handler, built from the
participant's registry, policy and settings, under the consume loop."""

from __future__ import annotations

import gc
import os
import signal
import threading
from enum import StrEnum

import structlog

from biox import logs
from biox.agreement import participants
from biox.broker.connection import nodes
from biox.broker.consumer import ConsumeLoop
from biox.database import session_for
from biox.handlers.base import Context, Handler
from biox.policy.release import Policies
from biox.registry import Registry
from biox.routes import ROUTES, routes_for
from biox.settings import Settings
from biox.supervisor import parse_nice
from biox.trust.sealing import load_ring

log = structlog.get_logger("biox.runtime")

#: a worker is named after the queue it consumes: ``biox worker query -p mx``; a shard
#: worker after its family, its shard in ``BIOX_SHARD`` (``biox worker shard --shard 1``)
# the functional Enum API with computed members: mypy cannot follow computed members
WorkerKind = StrEnum("WorkerKind", {role: role for role in ROUTES.specs})  # type: ignore[misc]


def context(participant: str, settings: Settings) -> Context:
    registry = Registry.load(settings.registry)
    if registry.get(participant) is None:
        raise SystemExit(f"participant {participant!r} is not in {settings.registry}")
    policy = Policies.load(settings.policy).of(participant)
    return Context(participant, registry, policy, settings)


def build_handler(role: str, ctx: Context) -> Handler:
    return ROUTES.specs[role].handler.build(ctx)


def run_worker(role: str, participant: str, settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_json, participant=participant, worker=role)
    if not settings.amqp_url:
        raise SystemExit("BIOX_AMQP_URL is not set: start a broker with `biox broker start`")
    try:
        nodes(settings.amqp_url)  # a list of nodes that mix schemes or users: said at start
    except ValueError as exc:
        raise SystemExit(f"BIOX_AMQP_URL: {exc}") from exc
    if settings.amqp_url.startswith("amqp:") and not settings.dev_shared_broker:
        raise SystemExit(
            "plain AMQP (amqp://) is for the development broker only: use amqps://, or set "
            "BIOX_DEV_SHARED_BROKER=1 on a development machine (docs/security.md)"
        )
    routes = routes_for(settings.shards)
    try:
        queue = routes.queue_for(role, settings.shard)
    except ValueError as exc:
        raise SystemExit(f"biox worker {role}: {exc}") from exc
    prioritise(role, settings)  # its settings read, and no thread started yet
    ctx = context(participant, settings)
    handler = build_handler(role, ctx)
    with session_for(settings.database_for(participant)) as session:
        participants.sync(session, ctx.registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    linked = ctx.registry.linked(participant)  # read once, not at every partner message
    loop = ConsumeLoop(
        url=settings.amqp_url,
        participant=participant,
        queue=queue,
        routes=routes,
        handler=handler,
        database_url=settings.database_for(participant),
        settings=settings,
        keys=load_ring(settings.keys(), participant),
        # a partner we have no agreement with has no link, and nothing to say to us
        known=frozenset(linked).__contains__,
        partners=linked,
    )
    if settings.metrics_port:
        handler.observe(loop.metrics, settings.database_for(participant))
        try:
            loop.metrics.serve(settings.metrics_port, settings.metrics_host)
            log.info("metrics_served", port=settings.metrics_port)
        except OSError as exc:  # a taken port must not stop the messages, only the metrics
            log.error("metrics_not_served", port=settings.metrics_port, error=str(exc))
    log.info("start_up_frozen", objects=freeze_start_up())
    loop.run(stop)


def prioritise(role: str, settings: Settings) -> None:
    """The worker's CPU priority from ``BIOX_WORKER_NICE``, set before it starts a thread:
    Linux keeps a nice value per thread, and a thread inherits its creator's. On cores
    the workers share, every query waits for the matcher's search, and a search that
    waits for a core makes all of them wait (docs/performance.md, "The matcher first").
    Raising a priority needs CAP_SYS_NICE or an RLIMIT_NICE that allows it; without, the
    worker says so and runs at the priority it was started with."""
    try:
        nice = parse_nice(settings.worker_nice).get(role)
    except ValueError as exc:
        raise SystemExit(f"BIOX_WORKER_NICE: {exc}") from exc
    if nice is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("priority_not_set", nice=nice, error=str(exc))
        return
    log.info("priority_set", nice=nice)


def freeze_start_up() -> int:
    """What start-up built (the gallery's maps, the registry, SQLAlchemy's mappers,
    pydantic's validators: some 130 000 objects) lives as long as the worker, yet Python's
    cyclic collector walks all of it in every full collection: 48 ms alone, 55-250 ms
    under load, in the middle of a batch that the queries behind it wait for
    (docs/performance.md, "The collector's pauses"). In the permanent generation it is
    never walked again; the garbage start-up left is collected first. Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
