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

import fcntl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import msgpack
import numpy as np
import structlog
from sqlalchemy import ColumnElement, func, or_
from sqlmodel import Session, col, select

from biox.agreement.ledgers import Tombstone
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.index import VectorIndex
from biox.gallery.shards import Shard, split
from biox.settings import Settings
from biox.store import EnrolledTemplates, Record
from biox.wire.messages import Biometrics, utcnow

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


def templates_only_there(session: Session, participant: str, shard: Shard = Shard()) -> int:
    """How many of ``participant``'s own identities (those ``shard`` holds) have their
    templates in a snapshot alone: ``biox synth`` writes a gallery's templates to the
    snapshot only, an import writes each to ``enrolled_templates`` as well (which a matcher
    without a snapshot reads at start, slowly but whole)."""
    own = (
        select(func.count())
        .select_from(Record)
        .where(
            Record.source == participant,
            col(Record.id).not_in(select(EnrolledTemplates.record_id)),
        )
    )
    if not shard.whole:
        own = own.where(col(Record.id) % shard.count == shard.index)
    return session.exec(own).one()


def missing(participant: str, settings: Settings, shard: Shard, alone: int) -> str:
    """What a matcher without its snapshot says as it refuses to start: from an empty
    gallery it would answer no match for people the gallery holds, where a matcher that is
    down only delays the answers (its queue keeps the queries; docs/operations.md)."""
    whole = settings.gallery_dir(participant)
    where = shard.directory(whole)
    text = (
        f"no gallery snapshot at {where}, and {alone} of {participant}'s own identities"
        f"{'' if shard.whole else f' in shard {shard.index} of {shard.count}'} have their "
        "templates nowhere else: this matcher would answer them no match. "
    )
    if not shard.whole and Gallery.exists(whole):
        return text + (
            f"Split the snapshot (`biox gallery split -p {participant} --shards "
            f"{shard.count}`) or copy {where.name}/ here from the host that split it."
        )
    return text + (  # an import keeps every template in the database: only synth's are not
        f"Build it again there (a synthetic gallery: `biox synth -p {participant}`), not from "
        "an older copy: that would still hold templates deleted since."
    )


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
    busy: int = 0  # snapshots left as they were: another writer held them


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


def _lacking(session: Session, mark: Mark, shard: Shard) -> tuple[list[int], list[int]]:
    """The sequence numbers of every enrolled row ``mark`` lacks, and of those the ones
    whose record is ``shard``'s: a shard's mark passes the others' rows too, unread."""
    found = session.exec(
        select(EnrolledTemplates.seq, EnrolledTemplates.record_id).where(mark.lacks())
    ).all()
    every = sorted(seq for seq, _ in found if seq is not None)
    mine = every if shard.whole else sorted(s for s, r in found if s is not None and shard.holds(r))
    return every, mine


@contextmanager
def only_writer(directory: Path, wait: bool = True) -> Iterator[bool]:
    """Whether this process holds ``directory``'s writer lock for the block (an ``flock``,
    let go when the process dies): a snapshot is updated in place
    (``vectors.VectorStore.save``), and two writers at once would append over each other.
    ``wait``: for the other writer to finish; otherwise False at once while it holds it."""
    with (directory / ".writer.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def refresh(
    session: Session,
    directory: Path,
    settings: Settings,
    create: bool = False,
    shard: Shard = Shard(),
    wait: bool = True,
) -> Refreshed | None:
    """The snapshot in ``directory`` with the enrolled templates it lacks (of ``shard``'s
    records) and without the records tombstoned since; written only when something
    changed. Without a snapshot, one is started only when ``create`` (an import asks; the
    purge schedule does not put templates on disk that were only in the database). None:
    no snapshot written. One writer at a time (``only_writer``); ``wait`` False (the purge
    schedule, which must not stand still behind an import of hours): a snapshot another
    writer holds is left as it is on disk, nothing added or removed."""
    if not Gallery.exists(directory) and not create:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    with only_writer(directory, wait) as mine:
        if mine:
            return _refresh(session, directory, settings, create, shard)
    log.info("snapshot_busy", directory=str(directory))
    done = Gallery.tombstone_seq(directory)
    return None if done is None else Refreshed(done, 0, 0, mark_of(directory), busy=1)


def _refresh(
    session: Session, directory: Path, settings: Settings, create: bool, shard: Shard
) -> Refreshed | None:
    mark = mark_of(directory)
    every, seqs = _lacking(session, mark, shard)
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
    after = mark.after(every)
    last = max((seq or 0 for seq, _ in buried), default=done)
    if every or buried or not Gallery.exists(directory):
        gallery.save(directory, last, after.seq, after.holes)
        log.info("snapshot_refreshed", added=added, removed=removed, size=gallery.size)
    return Refreshed(last, removed, added, after)


def on_disk(gallery_dir: Path, shards: int) -> list[Shard]:
    """Every snapshot to keep current: the current split's (``shards``) and any other
    found on disk (the whole gallery's, or an earlier split's), so that no snapshot left
    behind keeps a deleted template."""
    found = {Shard(i, shards) for i in range(shards)}
    if Gallery.exists(gallery_dir):
        found.add(Shard())
    for path in gallery_dir.glob("shard-*-of-*") if gallery_dir.is_dir() else ():
        index, _, count = path.name.removeprefix("shard-").partition("-of-")
        if index.isdigit() and count.isdigit() and int(index) < int(count) and Gallery.exists(path):
            found.add(Shard(int(index), int(count)))
    return sorted(found, key=lambda s: (s.count, s.index))


def refresh_all(
    session: Session,
    gallery_dir: Path,
    settings: Settings,
    create: bool = False,
    wait: bool = True,
) -> Refreshed | None:
    """Every snapshot on disk (``on_disk``); ``create``: the current split's where there
    is none; ``wait``: as ``refresh``. ``tombstone_seq``: the lowest any snapshot on disk
    was written without, so that no tombstone a snapshot still lacks is purged."""
    done = [
        refresh(
            session,
            shard.directory(gallery_dir),
            settings,
            create and shard.count == settings.shards,
            shard,
            wait,
        )
        for shard in on_disk(gallery_dir, settings.shards)
    ]
    written = [d for d in done if d is not None]
    seq = tombstone_seq(gallery_dir, settings.shards)
    if not written or seq is None:
        return None
    added, removed = sum(d.added for d in written), sum(d.removed for d in written)
    return Refreshed(seq, removed, added, written[0].mark, sum(d.busy for d in written))


def tombstone_seq(gallery_dir: Path, shards: int) -> int | None:
    """The last tombstone every snapshot on disk was rewritten without (None: none there)."""
    seqs = [Gallery.tombstone_seq(s.directory(gallery_dir)) for s in on_disk(gallery_dir, shards)]
    held = [s for s in seqs if s is not None]
    return min(held) if held else None


def split_snapshot(
    gallery_dir: Path,
    shards: int,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """The whole snapshot in ``gallery_dir`` written again as one snapshot per shard, each
    with the whole one's marks (so the shard workers read exactly what it lacked); the
    size of each. ``biox gallery split``; the whole snapshot is not refreshed meanwhile."""
    with only_writer(gallery_dir):
        whole = Gallery.load(gallery_dir, settings.ivf_nprobe)
        mark = mark_of(gallery_dir)
        done = Gallery.tombstone_seq(gallery_dir) or 0
        sizes = []
        parts = split(
            whole,
            shards,
            settings.index,
            settings.exact_max,
            settings.ivf_nprobe,
            progress=progress,
        )
        for shard, part in parts:
            target = shard.directory(gallery_dir)  # a purge may be refreshing an older one
            target.mkdir(parents=True, exist_ok=True)
            with only_writer(target):
                part.save(target, done, mark.seq, mark.holes)
            sizes.append(part.size)
    return sizes


class Follower:
    """A loaded gallery kept up to date with the database by the worker searching it:
    the query data enrolled since (by any matcher) added, the records deleted since
    (by a notice or by retention, ``lifecycle.forget_records``) removed; the snapshot on
    disk is behind on both until the next ``refresh``."""

    def __init__(self, gallery: Gallery, mark: Mark, every_s: float, shard: Shard = Shard()):
        self.gallery = gallery
        self.mark = mark  # enrolled rows read up to here (at first: the snapshot's mark)
        self.every_s = every_s
        self.shard = shard
        self.synced_at = float("-inf")
        self.seen: set[int] = set()
        self.tombstone_seq = 0

    def catch_up(self, session: Session) -> int:
        """Adds what was enrolled since this worker last looked, at most every
        ``every_s``. Rows are read by sequence and, to cover a slower transaction that
        committed a lower sequence late, again over the last minute; each is added once."""
        now = time.monotonic()
        if now - self.synced_at < self.every_s:
            return 0
        self.synced_at = now
        recent = utcnow() - timedelta(seconds=60)
        # the sequence numbers first: after a bulk import the last minute holds many rows
        # this matcher already has, and their templates need not be read again
        found = session.exec(
            select(EnrolledTemplates.seq, EnrolledTemplates.record_id).where(
                or_(self.mark.lacks(), col(EnrolledTemplates.enrolled_at) >= recent)
            )
        ).all()
        unseen = sorted((s, r) for s, r in found if s is not None and s not in self.seen)
        mine = [s for s, r in unseen if self.shard.holds(r)]
        added = 0
        for rows in chunks(session, mine):
            added += enroll_new(self.gallery, *read_enrolled(rows))
        self.seen.update(s for s, _ in unseen)
        if unseen:
            self.mark = Mark(max(self.mark.seq, unseen[-1][0]))
            log.info("enrolments_loaded", count=added, gallery=self.gallery.size)
        self._bury(session)
        return added

    def _bury(self, session: Session) -> None:
        rows = session.exec(select(Tombstone).where(col(Tombstone.seq) > self.tombstone_seq)).all()
        if not rows:
            return
        self.gallery.remove([r.record_id for r in rows])
        self.tombstone_seq = max(r.seq or 0 for r in rows)
        log.info("tombstones_applied", count=len(rows), gallery=self.gallery.size)


def _train(gallery: Gallery, probes: list[Probe]) -> None:
    faces = [p.face for p in probes if p.face is not None]
    fingers = [v for p in probes for v in p.fingers.values()]
    if faces and fingers:
        gallery.train(np.stack(faces[:100_000]), np.stack(fingers[:100_000]))
