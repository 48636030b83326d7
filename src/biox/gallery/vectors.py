"""Which ids an index holds, and the full templates a compressed index re-scores from.

A compressed (IVF-PQ fast-scan) index finds candidates from a few bytes per template;
the answer must not depend on that approximation, so every candidate is scored again
against the full float32 template (docs/architecture.md, "Search"). Those templates live
here, by row, beside a map from record id to row. A snapshot's rows are memory-mapped
from disk, so a matcher starts without reading them all and a gallery larger than memory
is searched from the page cache; rows enrolled since live in memory after them.
"""

from __future__ import annotations

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
    memory map), the rows enrolled since in memory after them."""

    def __init__(self, dim: int, base: np.ndarray | None = None) -> None:
        self.dim = dim
        self.base = np.zeros((0, dim), np.float32) if base is None else base
        self.added = np.zeros((1024, dim), np.float32)
        self.used = 0  # rows of ``added`` in use
        self.rows = Rows()

    @property
    def count(self) -> int:
        return self.rows.count

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = len(ids)
        if self.used + n > len(self.added):
            grown = np.zeros((max(self.used + n, 2 * len(self.added)), self.dim), np.float32)
            grown[: self.used] = self.added[: self.used]
            self.added = grown
        self.added[self.used : self.used + n] = vectors
        self.rows.assign(ids, np.arange(n, dtype=np.int64) + len(self.base) + self.used)
        self.used += n

    def remove(self, ids: np.ndarray) -> None:
        """The ids leave the map and their in-memory rows are zeroed: the template leaves
        memory now, not at the next rebuild (a snapshot's rows leave the disk when the
        snapshot is rewritten without them, ``gallery.snapshot.refresh``)."""
        rows = self.rows.lookup(ids)
        mine = rows[rows >= len(self.base)] - len(self.base)
        self.added[mine] = 0.0
        self.rows.assign(ids, -1)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Templates at ``rows`` (each >= 0), in their order."""
        rows = np.asarray(rows, dtype=np.int64)
        nbase = len(self.base)
        if self.used == 0:
            return np.asarray(self.base[rows])
        if nbase == 0:
            mine: np.ndarray = self.added[rows]
            return mine
        out = np.empty((*rows.shape, self.dim), np.float32)
        old = rows < nbase
        out[old] = self.base[rows[old]]
        out[~old] = self.added[rows[~old] - nbase]
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Templates of ``ids``, each of which must be held."""
        return self.get(self.rows.lookup(ids))

    def save(self, path: Path) -> None:
        """Only the rows still held, in id order: a removed template is not written."""
        ids = self.rows.held()
        np.save(path.with_suffix(".ids.npy"), ids)
        with path.open("wb") as out:
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<f4", "fortran_order": False, "shape": (len(ids), self.dim)}
            )
            for start in range(0, len(ids), 65536):  # never a second copy of the gallery
                out.write(self.vectors(ids[start : start + 65536]).tobytes())

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorStore:
        ids = np.load(path.with_suffix(".ids.npy"))
        base = np.load(path, mmap_mode="r")
        if base.shape != (len(ids), dim):
            raise ValueError(f"{path}: {base.shape} templates for {len(ids)} ids of {dim}")
        store = cls(dim, base)
        store.rows.assign(ids, np.arange(len(ids), dtype=np.int64))
        return store
