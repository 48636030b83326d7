"""Which ids an index holds, and the full templates a compressed index re-scores from.

A compressed (IVF-PQ fast-scan) index finds candidates from a few bytes per template;
the answer must not depend on that approximation, so every candidate is scored again
against the full float32 template (docs/architecture.md, "Search"). Those templates live
here, by row, beside a map from record id to row. A snapshot's rows are memory-mapped
from disk, so a matcher starts without reading them all and a gallery larger than memory
is searched from the page cache; rows enrolled since live in memory after them. When the
mapped rows are more than the page cache can keep (10 M identities: 36 GB on a 24 GB
machine), ``read_ahead`` asks the kernel for every row a gather needs before the gather
touches the first: the disk then reads them side by side instead of one fault at a time.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np


class Rows:
    """Record id to row (-1: not held). The dense record numbers of bulk enrolment index
    a growable array; the few hashed ids of enrolled query data (far above them) a dict."""

    DENSE = 1 << 32

    def __init__(self) -> None:
        self.dense = np.full(1024, -1, dtype=np.int64)
        self.sparse: dict[int, int] = {}
        self.count = 0

    def assign(self, ids: np.ndarray, rows: np.ndarray | int) -> None:
        """``rows`` (or -1) for ``ids``; ``count`` follows how many ids are held."""
        ids = np.asarray(ids, dtype=np.int64)
        values = np.broadcast_to(np.asarray(rows, dtype=np.int64), ids.shape)
        big = ids >= self.DENSE
        if big.any():
            for i, r in zip(ids[big].tolist(), values[big].tolist(), strict=True):
                self.count += (r >= 0) - (i in self.sparse)
                if r >= 0:
                    self.sparse[i] = r
                else:
                    self.sparse.pop(i, None)
            ids, values = ids[~big], values[~big]
        if len(ids) == 0:
            return
        top = int(ids.max()) + 1
        if top > len(self.dense):
            grown = np.full(max(top, 2 * len(self.dense)), -1, dtype=np.int64)
            grown[: len(self.dense)] = self.dense
            self.dense = grown
        ids, last = np.unique(ids[::-1], return_index=True)  # the last value given wins
        values = values[::-1][last]
        self.count += int((values >= 0).sum()) - int((self.dense[ids] >= 0).sum())
        self.dense[ids] = values

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self.dense))
        out = np.full(ids.shape, -1, dtype=np.int64)
        out[inside] = self.dense[ids[inside]]
        if self.sparse:
            for j in np.flatnonzero(ids >= self.DENSE).tolist():
                out.flat[j] = self.sparse.get(int(ids.flat[j]), -1)
        return out

    def mask(self, ids: np.ndarray) -> np.ndarray:
        held: np.ndarray = self.lookup(ids) >= 0
        return held

    def held(self) -> np.ndarray:
        """Every id held, ascending."""
        dense = np.flatnonzero(self.dense >= 0).astype(np.int64)
        return np.concatenate([dense, np.asarray(sorted(self.sparse), dtype=np.int64)])


class VectorStore:
    """Full templates by record id: rows ``[0, len(base))`` from a snapshot (a read-only
    memory map), the rows enrolled since after them, in memory or, for a build larger
    than memory, appended to a ``spill`` file that the snapshot then takes over whole."""

    def __init__(self, dim: int, base: np.ndarray | None = None, spill: Path | None = None):
        self.dim = dim
        self.base = np.zeros((0, dim), np.float32) if base is None else base
        self.added = np.zeros((0 if spill else 1024, dim), np.float32)
        self.used = 0  # rows added since the snapshot
        self.spill = spill
        self._mapped: np.ndarray | None = None
        self.rows = Rows()
        #: set by ``Gallery.load`` for a gallery larger than the page cache (``read_ahead``)
        self.read_ahead = False

    @property
    def count(self) -> int:
        return self.rows.count

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = len(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.spill is not None:
            with self.spill.open("ab") as out:
                out.write(vectors.tobytes())
            self._mapped = None
        else:
            if self.used + n > len(self.added):
                grown = np.zeros((max(self.used + n, 2 * len(self.added)), self.dim), np.float32)
                grown[: self.used] = self.added[: self.used]
                self.added = grown
            self.added[self.used : self.used + n] = vectors
        self.rows.assign(ids, np.arange(n, dtype=np.int64) + len(self.base) + self.used)
        self.used += n

    def _since(self) -> np.ndarray:
        """The rows added since the snapshot (the spill file mapped, when spilling)."""
        if self.spill is None:
            return self.added
        if self._mapped is None:
            self._mapped = np.memmap(self.spill, np.float32, "r+", shape=(self.used, self.dim))
        return self._mapped

    def remove(self, ids: np.ndarray) -> None:
        """The ids leave the map and their added rows are zeroed: the template leaves
        memory now, not at the next rebuild (a snapshot's rows leave the disk when the
        snapshot is rewritten without them, ``gallery.snapshot.refresh``)."""
        rows = self.rows.lookup(ids)
        mine = rows[rows >= len(self.base)] - len(self.base)
        if len(mine):
            self._since()[mine] = 0.0
        self.rows.assign(ids, -1)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Templates at ``rows`` (each >= 0), in their order."""
        rows = np.asarray(rows, dtype=np.int64)
        nbase = len(self.base)
        if self.read_ahead:
            read_ahead(self.base, rows[rows < nbase])
        if self.used == 0:
            return np.asarray(self.base[rows])
        since = self._since()
        if nbase == 0:
            return np.asarray(since[rows])
        out = np.empty((*rows.shape, self.dim), np.float32)
        old = rows < nbase
        out[old] = self.base[rows[old]]
        out[~old] = since[rows[~old] - nbase]
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Templates of ``ids``, each of which must be held."""
        return self.get(self.rows.lookup(ids))

    def save(self, path: Path) -> None:
        """Raw float32 rows at ``path``, their ids beside it (``.ids.npy``), only the rows
        still held: a removed template is not written. A spill file that holds exactly
        them becomes the snapshot's file by a link, not a copy (at 10 M identities the
        faces alone are 20 GB), and the store then reads it as its base."""
        held = self.rows.held()
        rows = self.rows.lookup(held)
        if self.spill is not None and len(self.base) == 0 and len(held) == self.used > 0:
            order = np.argsort(rows)
            np.save(_ids_path(path), held[order])
            since = self._since()
            if isinstance(since, np.memmap):  # rows zeroed through the map reach the file
                since.flush()
            os.link(self.spill, path)
            self.spill.unlink()
            self.base, self.spill, self._mapped, self.used = (
                _mapped(path, self.used, self.dim),
                None,
                None,
                0,
            )
            self.rows.assign(held[order], np.arange(len(held), dtype=np.int64))
            return
        np.save(_ids_path(path), held)
        with path.open("wb") as out:
            for start in range(0, len(held), 65536):  # never a second copy of the gallery
                out.write(self.get(rows[start : start + 65536]).tobytes())
        if self.spill is not None:  # the spill's rows are all in the snapshot now
            self.spill.unlink(missing_ok=True)
            self.base, self.spill, self._mapped, self.used = (
                _mapped(path, len(held), self.dim),
                None,
                None,
                0,
            )
            self.rows.assign(held, np.arange(len(held), dtype=np.int64))

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorStore:
        ids = np.load(_ids_path(path))
        size = path.stat().st_size
        if size != len(ids) * dim * 4:
            raise ValueError(f"{path}: {size} bytes for {len(ids)} ids of {dim} float32")
        store = cls(dim, _mapped(path, len(ids), dim))
        store.rows.assign(ids, np.arange(len(ids), dtype=np.int64))
        return store


def read_ahead(mapped: np.ndarray, rows: np.ndarray) -> None:
    """Start reading the pages of ``rows`` of a mapped file, all of them, and return at
    once (``MADV_WILLNEED``). The gather that follows then waits about one disk read, not
    one per row: at 10 M identities a batch of 64 queries gathers some 7 700 rows, most of
    them not in the page cache. A row already in memory costs one short system call, so
    ``Gallery.load`` turns this on only for a gallery larger than the page cache."""
    raw = getattr(mapped, "_mmap", None)
    if raw is None or not hasattr(mmap, "MADV_WILLNEED") or len(rows) == 0:
        return
    row_bytes = mapped.shape[1] * mapped.itemsize
    start = np.unique(rows) * row_bytes
    first = start - start % mmap.PAGESIZE  # madvise takes whole pages
    for at, length in zip(first.tolist(), (start + row_bytes - first).tolist(), strict=True):
        raw.madvise(mmap.MADV_WILLNEED, at, length)


def _ids_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.ids.npy")


def _mapped(path: Path, n: int, dim: int) -> np.ndarray:
    """The rows of ``path``, mapped read-only for reads at random: a candidate's template
    is one row (2 KB for a face), and the kernel's read-ahead would bring 128 KB around
    each from disk when the gallery is larger than memory."""
    if n == 0:  # an empty file cannot be mapped
        return np.zeros((0, dim), np.float32)
    rows = np.memmap(path, np.float32, "r", shape=(n, dim))
    raw = getattr(rows, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)
    return rows
