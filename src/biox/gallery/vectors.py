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

A snapshot saved where it was loaded from is updated in place (``VectorStore.save``): the
rows enrolled since are appended and the removed ones zeroed where they lie, so a refresh
writes what changed, not the gallery (36 GB at 10 M identities), and a deleted template
leaves the disk and every matcher that maps the file at once, not when the last of them
restarts. Only past ``HOLES_SHARE`` of zeroed rows is the file written again whole.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

#: zeroed rows (removed since the file was written whole), as a share of a snapshot's
#: rows, past which a save writes the file again without them instead of in place
HOLES_SHARE = 0.1


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
        #: the file ``base`` maps, by device and inode (a file written again in its place
        #: is another): a save to that file updates it in place (``_update``)
        self.source: tuple[int, int] | None = None
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
        memory now, not at the next rebuild. A snapshot's rows are zeroed on disk by the
        next save there (``gallery.snapshot.refresh``); this process maps them read-only."""
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

    def save(self, path: Path, final: Path | None = None) -> None:
        """Raw float32 rows at ``path``, their ids beside it (``.ids.npy``), only the rows
        still held: a removed template is not written. A spill file that holds exactly
        them becomes the snapshot's file by a link, not a copy (at 10 M identities the
        faces alone are 20 GB). Either way the store then reads the file it wrote (its
        inode follows the move to ``final``), so that its next save there is in place
        and zeroes what was removed since in the file every matcher maps. ``final``:
        where ``path`` will be moved; when that is the file this store maps, the file is
        updated in place instead and only the ids are written at ``path`` (``_update``)."""
        ids = self._clear(final) if final else None
        if final and ids is not None and (ids < 0).sum() <= HOLES_SHARE * len(ids):
            self._update(path, final, ids)
            return
        held = self.rows.held()
        rows = self.rows.lookup(held)
        if self.spill is not None and len(self.base) == 0 and len(held) == self.used > 0:
            order = np.argsort(rows)
            held = held[order]
            since = self._since()
            if isinstance(since, np.memmap):  # rows zeroed through the map reach the file
                since.flush()
            os.link(self.spill, path)
            self.spill.unlink()
        else:
            with path.open("wb") as out:
                for start in range(0, len(held), 65536):  # never a second copy of the gallery
                    out.write(self.get(rows[start : start + 65536]).tobytes())
            if self.spill is not None:  # the spill's rows are all in the snapshot now
                self.spill.unlink(missing_ok=True)
        np.save(_ids_path(path), held)
        self._adopt(path, held, 0)

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorStore:
        ids = np.load(_ids_path(path))
        size = path.stat().st_size
        # more bytes than ids: rows an update appended before it was cut short (``_update``)
        if size < len(ids) * dim * 4:
            raise ValueError(f"{path}: {size} bytes for {len(ids)} ids of {dim} float32")
        store = cls(dim, _mapped(path, len(ids), dim))
        store.source = _inode(path)
        held = np.flatnonzero(ids >= 0)  # -1: a row zeroed in place
        store.rows.assign(ids[held], held)
        return store

    def _clear(self, final: Path) -> np.ndarray | None:
        """When ``final`` is the file this store maps: its ids, with -1 for each row whose
        id no longer maps to it (removed, or enrolled again since), and those rows zeroed
        in the file. Done before the file is written again in either way, so that a
        matcher still mapping the old file loses them too. None: another file."""
        if self.source is None or not final.exists() or _inode(final) != self.source:
            return None
        ids = np.array(np.load(_ids_path(final)), dtype=np.int64)
        if len(ids) != len(self.base):
            raise ValueError(f"{final}: {len(ids)} ids, but {len(self.base)} rows mapped")
        rows = np.arange(len(ids), dtype=np.int64)
        gone = rows[(ids >= 0) & (self.rows.lookup(ids) != rows)]
        if len(gone):
            zero, size = bytes(self.dim * 4), self.dim * 4
            fd = os.open(final, os.O_WRONLY)
            try:
                for r in gone.tolist():
                    os.pwrite(fd, zero, r * size)
                os.fsync(fd)
            finally:
                os.close(fd)
            ids[gone] = -1
        return ids

    def _update(self, path: Path, final: Path, ids: np.ndarray) -> None:
        """The snapshot at ``final`` brought up to this store in place: the rows no longer
        held are zeroed already (``_clear``, ``ids`` -1 there); the rows added since are
        appended after the snapshot's (a tail an earlier update left, cut short before its
        ids were written, is cut off first) and synced; the ids go to ``path``, for the
        caller to move over the old ones once every file is on disk. Cut short anywhere,
        the old ids still name exactly the old rows, and the rows zeroed are the removed
        records', which every matcher takes out by their tombstones."""
        nbase, row = len(self.base), self.dim * 4
        held = self.rows.held()
        rows = self.rows.lookup(held)
        new = rows >= nbase
        order = np.argsort(rows[new])
        added, added_rows = held[new][order], rows[new][order]
        with final.open("r+b") as out:
            out.truncate(nbase * row)
            out.seek(nbase * row)
            for start in range(0, len(added), 65536):
                out.write(self.get(added_rows[start : start + 65536]).tobytes())
            out.flush()
            os.fsync(out.fileno())
        np.save(_ids_path(path), np.concatenate([ids, added]))
        self._adopt(final, added, nbase)

    def _adopt(self, path: Path, written: np.ndarray, first: int) -> None:
        """From now on every row is read from the file at ``path``, ``written`` (the ids
        just saved there) from row ``first`` on; the memory of the rows added is given
        back (an import's, or a build's)."""
        total = first + len(written)
        self.base, self.spill, self._mapped, self.used = (
            _mapped(path, total, self.dim),
            None,
            None,
            0,
        )
        self.added = np.zeros((1024, self.dim), np.float32)
        self.rows.assign(written, np.arange(first, total, dtype=np.int64))
        self.source = _inode(path)


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


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


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
