"""shard.search → one shard's gallery search → shard.hits to the query worker
(docs/architecture.md, "Shards").

A shard worker holds the records with ``record_id % BIOX_SHARDS == BIOX_SHARD``: its own
snapshot, the enrolments since (of its records) from the database, every deletion. It
decides nothing and answers nobody outside: the query worker checked the query before
scattering it and answers once every shard's candidates are in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from sqlmodel import Session

from biox.gallery import snapshot
from biox.gallery.calibration import Calibrated
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.gather import hits_of
from biox.gallery.shards import Shard
from biox.handlers.base import Context, Effects, Handler, Result
from biox.handlers.matcher import load
from biox.metrics import Metrics
from biox.settings import Settings
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.shards import ShardHits, ShardSearch

log = structlog.get_logger("biox.shard")


class ShardHandler(Handler):
    @classmethod
    def build(cls, ctx: Context) -> ShardHandler:
        shard = Shard(ctx.settings.shard, ctx.settings.shards)
        gallery, mark = load(ctx.participant, ctx.settings, shard)
        return cls(ctx.participant, gallery, ctx.settings, shard, mark)

    def __init__(
        self,
        participant: str,
        gallery: Gallery,
        settings: Settings,
        shard: Shard,
        mark: snapshot.Mark = snapshot.Mark(),
    ) -> None:
        self.me = participant
        self.gallery = gallery
        self.settings = settings
        self.shard = shard
        self.follower = snapshot.Follower(gallery, mark, settings.gallery_sync_s, shard)
        self.calibration = Calibrated(
            settings.calibration_file(participant),
            (settings.threshold_high, settings.threshold_low),
        )
        self.metrics: Metrics | None = None

    def observe(self, metrics: Metrics, database_url: str) -> None:
        self.metrics = metrics

    def search(self, batch: Sequence[Inbound[ShardSearch]], session: Session) -> list[Result]:
        """Every query of the batch in one gallery call; each shard's best go back."""
        self.follower.catch_up(session)
        self.calibration.apply(self.gallery)  # the scorer: fused as the whole gallery's
        results: list[Result | None] = [None] * len(batch)
        probes: list[Probe] = []
        searchable: list[int] = []
        for i, inb in enumerate(batch):
            if inb.message.shards != self.shard.count:  # the split changed since it left
                results[i] = PermanentError(
                    Reason.misaddressed,
                    f"scattered to {inb.message.shards} shards, this is {self.shard.index} "
                    f"of {self.shard.count}",
                )
                continue
            try:  # checked by the query worker already; a bad one fails here alone
                probes.append(Probe.from_biometrics(inb.message.query.biometrics))
                searchable.append(i)
            except PermanentError as exc:
                results[i] = exc
        started = time.perf_counter()
        top = self.settings.max_candidates_released
        found = self.gallery.search(probes, k=self.settings.candidates, top=top) if probes else []
        took = time.perf_counter() - started
        if self.metrics is not None and probes:
            self.metrics.searched(took, self.gallery.size)
        search_ms = took * 1000 / max(len(probes), 1)
        for i, hits in zip(searchable, found, strict=True):
            search = batch[i].message
            reply = ShardHits(
                search=search,
                shard=self.shard.index,
                gallery_size=self.gallery.size,
                search_ms=round(search_ms, 3),
                hits=hits_of(hits),
            )
            out = codec.to_own_inbox(
                reply,
                participant=self.me,
                message_id=codec.derived_id(search.query_message_id, f"shard.{self.shard.index}"),
                correlation_id=search.query.query_id,
            )
            results[i] = Effects(outgoing=[out], outcome="searched")
        return [r for r in results if r is not None]
