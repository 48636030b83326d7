"""Builds a worker of a given kind for a participant and runs it under the consume loop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import structlog

from biox import addresses, logs, synth
from biox.broker.consumer import ConsumeLoop
from biox.gallery.gallery import Gallery
from biox.handlers.audit import AuditHandler
from biox.handlers.base import Handler
from biox.handlers.intake import IntakeHandler
from biox.handlers.matcher import MatcherHandler
from biox.handlers.response import ResponseHandler
from biox.handlers.retrieval import RetrievalHandler
from biox.handlers.review import ReviewHandler
from biox.policy.release import Policies
from biox.registry import Registry
from biox.settings import Settings
from biox.store import session_for, sync_participants

log = structlog.get_logger("biox.runtime")


class WorkerKind(StrEnum):
    intake = "intake"
    matcher = "matcher"
    response = "response"
    review = "review"
    retrieval = "retrieval"
    audit = "audit"


QUEUE_ROLE = {
    WorkerKind.intake: "intake",
    WorkerKind.matcher: "query",
    WorkerKind.response: "response",
    WorkerKind.review: "review",
    WorkerKind.retrieval: "retrieval",
    WorkerKind.audit: "audit",
}


def gallery_dir(settings: Settings, participant: str) -> Path:
    return settings.participant_dir(participant) / "gallery"


def load_gallery(settings: Settings, participant: str) -> Gallery:
    directory = gallery_dir(settings, participant)
    if Gallery.exists(directory):
        return Gallery.load(directory, settings.ivf_nprobe)
    log.warning("empty_gallery", participant=participant, directory=str(directory))
    return Gallery()


def build_synthetic_gallery(
    settings: Settings,
    participant: str,
    size: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Gallery:
    """A synthetic gallery where this participant's workers will look for it."""
    return synth.populate(
        participant,
        size,
        seed,
        settings.database_for(participant),
        gallery_dir(settings, participant),
        index=settings.index,
        exact_max=settings.exact_max,
        nprobe=settings.ivf_nprobe,
        progress=progress,
    )


def build_handler(kind: WorkerKind, participant: str, settings: Settings) -> Handler:
    registry = Registry.load(settings.registry)
    if registry.get(participant) is None:
        raise SystemExit(f"participant {participant!r} is not in {settings.registry}")
    policy = Policies.load(settings.policy).of(participant)
    if kind is WorkerKind.intake:
        return IntakeHandler(participant, registry, policy)
    if kind is WorkerKind.matcher:
        if settings.search_threads:
            import faiss

            faiss.omp_set_num_threads(settings.search_threads)
        gallery = load_gallery(settings, participant)
        return MatcherHandler(participant, registry, gallery, settings, policy)
    if kind is WorkerKind.review:
        return ReviewHandler(participant, policy)
    if kind is WorkerKind.retrieval:
        return RetrievalHandler(participant, registry, policy)
    if kind is WorkerKind.audit:
        return AuditHandler(participant)
    return ResponseHandler(participant, policy)


def run_worker(kind: WorkerKind, participant: str, settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logs.configure(
        settings.log_level, settings.log_json, participant=participant, worker=kind.value
    )
    if not settings.amqp_url:
        raise SystemExit("BIOX_AMQP_URL is not set: start a broker with `biox broker start`")
    handler = build_handler(kind, participant, settings)
    with session_for(settings.database_for(participant)) as session:
        sync_participants(session, Registry.load(settings.registry))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop = ConsumeLoop(
        url=settings.amqp_url,
        queue=addresses.queue(participant, QUEUE_ROLE[kind]),
        handler=handler,
        database_url=settings.database_for(participant),
        settings=settings,
        # the audit consumer's own failures must not feed its queue: default exchange
        participant=None if kind is WorkerKind.audit else participant,
        role=QUEUE_ROLE[kind],
    )
    loop.run(stop)
