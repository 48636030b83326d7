"""A gallery split into shards, each searched by its own worker (docs/architecture.md,
"Shards").

A record belongs to the shard ``record_id % count``: the database numbers records in
order, so the shards stay even as imports and enrolments add to them, and any worker
tells a record's shard from its id alone, with nothing to look up or keep in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from biox.gallery.gallery import Hit


@dataclass(frozen=True)
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


def merge(found: Iterable[Sequence[Hit]], top: int) -> list[Hit]:
    """The best ``top`` of every shard's best ``top`` (best fused score first; ties by
    record id, as one search ranks them). A record's fused score does not depend on its
    shard, and a shard takes as candidates its own ``k`` nearest per modality, among them
    every record of it that one search of the whole gallery would take: so the best here
    are never worse than one search's, and can be better where a shard reached deeper."""
    hits = [h for shard in found for h in shard]
    hits.sort(key=lambda h: (-h.fused, h.record_id))
    return hits[:top]
