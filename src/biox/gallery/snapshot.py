"""The gallery snapshot a matcher starts from, kept current (docs/architecture.md,
"Gallery").

A matcher loads the snapshot (the full templates memory-mapped, so in seconds at any
size) and then adds the enrolled templates the snapshot does not hold yet, reading and
validating each (about 0.75 ms a row). Without a snapshot that follows the enrolments,
every imported identity would be read again by every matcher at every start: 12
minutes at 1 M. ``refresh`` folds the enrolled templates (imports and enrolled query
data) into the snapshot and takes the tombstoned records out of it; the manifest says
how far it got: the highest sequence number folded (``enrolled_seq``) and the lower ones
it did not see then (``enrolled_holes``: a transaction still open, or rolled back), so
a matcher reads exactly the rows the snapshot lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import structlog
from sqlalchemy import ColumnElement, or_
from sqlmodel import Session, col, select

from biox.agreement.ledgers import Tombstone
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.index import VectorIndex
from biox.settings import Settings
from biox.store import EnrolledTemplates
from biox.wire.messages import Biometrics

HOLES_KEPT = 10_000  # holes further below the mark than this are rolled back, not open

log = structlog.get_logger("biox.gallery")


@dataclass(frozen=True)
class Mark:
    """How far a snapshot folded the enrolled templates in."""

    seq: int = 0
    holes: tuple[int, ...] = ()

    def lacks(self) -> ColumnElement[bool]:
        """The enrolled rows the snapshot does not hold."""
        seq = col(EnrolledTemplates.seq)
        return or_(seq > self.seq, seq.in_(self.holes)) if self.holes else seq > self.seq

    def after(self, seen: Iterable[int]) -> Mark:
        """The mark once the rows ``seen`` (read past this one) are folded in."""
        seen = set(seen)
        if not seen:
            return self
        top = max(self.seq, *seen)
        missing = set(self.holes) | set(range(self.seq + 1, top))
        holes = sorted(s for s in missing - seen if s > top - HOLES_KEPT)
        return Mark(top, tuple(holes))


def mark_of(directory: Path) -> Mark:
    manifest = Gallery.manifest(directory)
    if manifest is None:
        return Mark()
    return Mark(int(manifest.get("enrolled_seq", 0)), tuple(manifest.get("enrolled_holes", ())))


def read_enrolled(rows: Iterable[EnrolledTemplates]) -> tuple[list[int], list[Probe]]:
    """Record ids and probes of enrolled rows; a row that cannot be read is logged by its
    number and left out (one bad row must not stop every search)."""
    ids: list[int] = []
    probes: list[Probe] = []
    for r in rows:
        try:
            bio = Biometrics.model_validate(msgpack.unpackb(r.biometrics))
            probes.append(Probe.from_biometrics(bio))
            ids.append(r.record_id)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"  # msgpack's own messages can be empty
            log.error("enrolment_unreadable", seq=r.seq, record_id=r.record_id, error=error)
    return ids, probes


def enroll_new(gallery: Gallery, ids: list[int], probes: list[Probe]) -> int:
    """Adds the identities ``gallery`` does not hold yet: a row read again (the snapshot
    already had it, or a second look over the last minute) is not a second template."""
    new = ~gallery.holds(np.asarray(ids, dtype=np.int64)) if ids else np.zeros(0, bool)
    keep = np.flatnonzero(new).tolist()
    if keep:
        gallery.enroll([ids[i] for i in keep], [probes[i] for i in keep])
    return len(keep)


@dataclass(frozen=True)
class Refreshed:
    tombstone_seq: int
    removed: int
    added: int
    mark: Mark


def chunks(
    session: Session, seqs: list[int], size: int = 5000
) -> Iterator[list[EnrolledTemplates]]:
    """The enrolled rows numbered ``seqs``, a few thousand at a time: a million imported
    identities are never all in memory."""
    for start in range(0, len(seqs), size):
        yield list(
            session.exec(
                select(EnrolledTemplates)
                .where(col(EnrolledTemplates.seq).in_(seqs[start : start + size]))
                .order_by(col(EnrolledTemplates.seq))
            )
        )


def refresh(
    session: Session, directory: Path, settings: Settings, create: bool = False
) -> Refreshed | None:
    """The snapshot in ``directory`` with the enrolled templates it lacks and without the
    records tombstoned since; written only when something changed. Without a snapshot,
    one is started only when ``create`` (an import asks; the purge schedule does not put
    templates on disk that were only in the database). None: no snapshot written."""
    mark = mark_of(directory)
    found = session.exec(select(EnrolledTemplates.seq).where(mark.lacks())).all()
    seqs = sorted(s for s in found if s is not None)
    if Gallery.exists(directory):
        gallery = Gallery.load(directory, settings.ivf_nprobe)
        done = Gallery.tombstone_seq(directory) or 0
    elif seqs and create:
        gallery = Gallery.for_size(
            len(seqs), settings.index, settings.exact_max, settings.ivf_nprobe
        )
        done = 0
    else:
        return None
    added = 0
    untrained = gallery.kind == "ivf" and not gallery.face.trained
    sample = min(len(seqs), 50 * VectorIndex.nlist_for(len(seqs)))  # as a bulk build trains
    held: tuple[list[int], list[Probe]] = ([], [])
    for rows in chunks(session, seqs):
        ids, probes = read_enrolled(rows)
        if untrained:  # a new IVF gallery: its first rows are the training sample
            held[0].extend(ids)
            held[1].extend(probes)
            if len(held[1]) < sample:
                continue
            _train(gallery, held[1])
            (ids, probes), untrained = held, False
        added += enroll_new(gallery, ids, probes)
    if untrained and held[1]:
        _train(gallery, held[1])
        added += enroll_new(gallery, *held)
    buried = session.exec(
        select(Tombstone.seq, Tombstone.record_id).where(col(Tombstone.seq) > done)
    ).all()
    before = gallery.size
    gallery.remove([rid for _, rid in buried])
    removed = before - gallery.size
    after = mark.after(seqs)
    last = max((seq or 0 for seq, _ in buried), default=done)
    if seqs or buried or not Gallery.exists(directory):
        gallery.save(directory, last, after.seq, after.holes)
        log.info("snapshot_refreshed", added=added, removed=removed, size=gallery.size)
    return Refreshed(last, removed, added, after)


def _train(gallery: Gallery, probes: list[Probe]) -> None:
    faces = [p.face for p in probes if p.face is not None]
    fingers = [v for p in probes for v in p.fingers.values()]
    if faces and fingers:
        gallery.train(np.stack(faces[:100_000]), np.stack(fingers[:100_000]))
