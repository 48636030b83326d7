"""A gallery split into shards, each searched by its own worker (docs/architecture.md,
"Shards").

A record belongs to the shard ``record_id % count``: the database numbers records in
order, so the shards stay even as imports and enrolments add to them, and any worker
tells a record's shard from its id alone, with nothing to look up or keep in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biox.gallery.gallery import Gallery, Hit
from biox.gallery.index import VectorIndex


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard()`` is the whole gallery."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}")

    @property
    def whole(self) -> bool:
        return self.count == 1

    def holds(self, record_id: int) -> bool:
        return record_id % self.count == self.index

    def directory(self, gallery_dir: Path) -> Path:
        """Its snapshot: the gallery directory itself when unsharded, else a directory of
        its own in it, named for the split (a change of ``count`` starts new snapshots)."""
        if self.whole:
            return gallery_dir
        return gallery_dir / f"shard-{self.index}-of-{self.count}"

    @classmethod
    def all_of(cls, count: int) -> list[Shard]:
        return [cls(i, count) for i in range(count)]


def merge(found: Iterable[Hit], top: int) -> list[Hit]:
    """The best ``top`` of every shard's best ``top``, all together in ``found`` (best
    fused score first; ties by record id, as one search ranks them). A record's fused
    score does not depend on its shard, and a shard takes as candidates its own ``k``
    nearest per modality, among them every record of it that one search of the whole
    gallery would take: so the best here are never worse than one search's, and can be
    better where a shard reached deeper."""
    return sorted(found, key=lambda h: (-h.fused, h.record_id))[:top]


def split(
    whole: Gallery,
    shards: int,
    index: str = "auto",
    exact_max: int = 50_000,
    nprobe: int = 0,
    batch: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[Shard, Gallery]]:
    """Each shard's gallery, built in turn from ``whole``'s full templates (a snapshot's
    are memory-mapped, so this reads each once and holds one shard at a time): how a
    participant moves from one matcher to ``shards``. Each shard is sized, trained and
    indexed for its own share, as a gallery of that size would be."""
    vector_indexes = {"face": whole.face, **{f"finger.{p}": ix for p, ix in whole.fingers.items()}}
    for shard in Shard.all_of(shards):
        mine = {}
        for name, ix in vector_indexes.items():
            held = ix.present.held() if ix.ntotal else np.zeros(0, np.int64)
            mine[name] = held[held % shards == shard.index]
        eyes = {
            eye: [i for i in sorted(iris.codes) if shard.holds(i)]
            for eye, iris in whole.irises.items()
        }
        size = max([len(v) for v in mine.values()] + [len(v) for v in eyes.values()])
        part = Gallery.for_size(size, index, exact_max, nprobe)
        if part.kind == "ivf":
            sample = 50 * VectorIndex.nlist_for(size)
            fingers = [
                vector_indexes[n].vectors(ids[:sample])
                for n, ids in mine.items()
                if n != "face" and len(ids)
            ]
            faces = whole.face.vectors(mine["face"][:sample])
            if fingers:
                part.train(faces, np.concatenate(fingers)[:sample])
            else:  # a gallery of faces alone
                part.face.train(faces)
        targets = {"face": part.face, **{f"finger.{p}": ix for p, ix in part.fingers.items()}}
        for name, ids in mine.items():
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                targets[name].add(chunk, vector_indexes[name].vectors(chunk))
                if progress is not None and name == "face":
                    progress(len(chunk))
        for eye, ids in eyes.items():
            if ids:
                source = whole.irises[eye]
                part.irises[eye].add(
                    np.asarray(ids, dtype=np.int64),
                    np.stack([source.codes[i] for i in ids]),
                    np.stack([source.masks[i] for i in ids]),
                )
        yield shard, part
