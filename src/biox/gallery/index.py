"""FAISS indexes for one modality: float vectors by inner product, iris codes by Hamming.

Why these index types: deletions (§22-24) and retention purges must take ids out, and
HNSW has no ``remove_ids``. So small galleries use an exact ``IndexIDMap2(FlatIP)`` and
large ones an ``IndexIVFFlat`` with a hash-table direct map: both remove in place and
both reconstruct a stored vector by id, which fusion needs to score every candidate on
every modality, not only on the one that found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from biox.gallery.templates import rotate_iris
from biox.wire.biometrics import IRIS_COLS, IRIS_ROWS

IndexKind = Literal["flat", "ivf"]


class _Presence:
    """Which ids an index holds: a growable bitmap for the dense record numbers of bulk
    enrolment, a set for the few hashed ids of enrolled query data (far above them)."""

    DENSE = 1 << 32

    def __init__(self) -> None:
        self.bits = np.zeros(1024, dtype=bool)
        self.sparse: set[int] = set()

    def set(self, ids: np.ndarray, value: bool) -> None:
        big = ids >= self.DENSE
        if big.any():
            for i in ids[big].tolist():
                (self.sparse.add if value else self.sparse.discard)(i)
            ids = ids[~big]
        if len(ids) == 0:
            return
        top = int(ids.max()) + 1
        if top > len(self.bits):
            grown = np.zeros(max(top, 2 * len(self.bits)), dtype=bool)
            grown[: len(self.bits)] = self.bits
            self.bits = grown
        self.bits[ids] = value

    def mask(self, ids: np.ndarray) -> np.ndarray:
        inside = (ids >= 0) & (ids < len(self.bits))
        out = np.zeros(len(ids), dtype=bool)
        out[inside] = self.bits[ids[inside]]
        if self.sparse:
            big = np.flatnonzero(ids >= self.DENSE)
            out[big] = [int(ids[j]) in self.sparse for j in big]
        return out

    @property
    def count(self) -> int:
        return int(self.bits.sum()) + len(self.sparse)


class VectorIndex:
    """L2-normalised float32 templates compared by cosine (inner product)."""

    def __init__(self, dim: int, kind: IndexKind = "flat", nlist: int = 0, nprobe: int = 0):
        self.dim = dim
        self.kind = kind
        self.nprobe = nprobe
        self.present = _Presence()
        if kind == "flat":
            self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, max(nlist, 1), faiss.METRIC_INNER_PRODUCT)
            # faiss's stubs leave out the DirectMap enum, which the SWIG module has
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            self.nprobe = ivf.nprobe = nprobe_for(ivf.nlist, nprobe)
            self.index = ivf
            self._quantizer = quantizer  # keep the Python object alive with the index

    @staticmethod
    def nlist_for(n: int) -> int:
        return int(max(64, min(65536, 4 * np.sqrt(max(n, 1)))))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, sample: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def copy_training(self, other: VectorIndex) -> None:
        """Take over ``other``'s trained, still empty index structure."""
        if self.kind == "ivf" and self.ntotal == 0 and other.trained and other.ntotal == 0:
            clone = faiss.clone_index(other.index)
            assert isinstance(clone, faiss.IndexIVF)  # only an IVF index needs training
            clone.nprobe = self.nprobe
            self.index = clone

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self.index.is_trained:
            self.train(vectors)
        self.index.add_with_ids(vectors, ids)
        self.present.set(ids, True)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ids = ids[self.present.mask(ids)]
        if len(ids) == 0:
            return 0
        # the IVF hash-table direct map removes only through an explicit id array
        selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        removed = int(self.index.remove_ids(selector))
        self.present.set(ids, False)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, min(k, self.ntotal))

    def scores(self, query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine between ``query`` and each stored id that exists; (ids, scores)."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[self.present.mask(ids)]
        if len(ids) == 0:
            return ids, np.zeros(0, np.float32)
        stored = self.index.reconstruct_batch(ids)
        return ids, stored @ query

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 0) -> VectorIndex:
        index = faiss.read_index(str(path))
        self = cls.__new__(cls)
        self.dim = index.d
        self.nprobe = nprobe
        self.present = _Presence()
        if isinstance(index, faiss.IndexIVF):
            self.kind = "ivf"
            self.nprobe = index.nprobe = nprobe_for(index.nlist, nprobe)
            ids = _ivf_ids(index)
        else:
            assert isinstance(index, faiss.IndexIDMap2)  # what __init__ writes for "flat"
            self.kind = "flat"
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        self.index = index
        self.present.set(ids, True)
        return self


def nprobe_for(nlist: int, configured: int) -> int:
    """Lists searched per query: as configured, or (0) about 4 % of them.

    Recall depends on the fraction of the gallery scanned, not on the number of lists:
    measured on the synthetic population, 1.2 % scanned gave recall@1 0.988 at 1 M
    identities and 3.8 % gave 0.9995 at 100 k (docs/performance.md).
    """
    return configured if configured > 0 else max(16, min(nlist, round(nlist * 0.04)))


def _ivf_ids(index: faiss.IndexIVF) -> np.ndarray:
    invlists = index.invlists
    assert invlists is not None  # an IVF index always has its inverted lists
    parts = []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class IrisIndex:
    """Packed iris codes on a binary FAISS index, masks kept beside it.

    FAISS finds candidates by plain Hamming distance over rotated copies of the probe;
    each candidate is then scored exactly: the fractional Hamming distance over the bits
    both masks mark valid, minimised over the same rotations (Daugman's method).
    """

    def __init__(self, max_shift: int = 8) -> None:
        self.bits = IRIS_ROWS * IRIS_COLS
        self.max_shift = max_shift
        self.index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.bits))
        self.codes: dict[int, np.ndarray] = {}
        self.masks: dict[int, np.ndarray] = {}

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, codes: np.ndarray, masks: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), ids)
        for i, c, m in zip(ids.tolist(), codes, masks, strict=True):
            self.codes[i] = np.asarray(c, dtype=np.uint8)
            self.masks[i] = np.asarray(m, dtype=np.uint8)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        for i in ids.tolist():
            self.codes.pop(i, None)
            self.masks.pop(i, None)
        return removed

    def shifts(self, code: np.ndarray) -> np.ndarray:
        return np.stack([rotate_iris(code, s) for s in range(-self.max_shift, self.max_shift + 1)])

    def candidates(self, code: np.ndarray, k: int) -> np.ndarray:
        if self.ntotal == 0:
            return np.zeros(0, np.int64)
        _, ids = self.index.search(self.shifts(code), min(k, self.ntotal))
        ids = np.unique(ids.reshape(-1))
        return ids[ids >= 0]

    def scores(
        self, code: np.ndarray, mask: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best masked fractional Hamming distance over rotations, per existing id."""
        ids = np.asarray([i for i in np.asarray(ids).tolist() if i in self.masks], np.int64)
        if len(ids) == 0:
            return ids, np.zeros(0, np.float32)
        stored = np.stack([self.codes[i] for i in ids.tolist()])
        stored_masks = np.stack([self.masks[i] for i in ids.tolist()])
        codes = self.shifts(code)[:, None, :]  # (shifts, 1, bytes) against (n, bytes)
        masks = self.shifts(mask)[:, None, :] & stored_masks
        differ = np.bitwise_count((codes ^ stored) & masks).sum(axis=2, dtype=np.int32)
        valid = np.bitwise_count(masks).sum(axis=2, dtype=np.int32)
        best = (differ / np.maximum(valid, 1)).min(axis=0).astype(np.float32)
        return ids, best

    def save(self, path: Path) -> None:
        faiss.write_index_binary(self.index, str(path))
        ids = np.fromiter(self.masks, dtype=np.int64, count=len(self.masks))
        masks = np.stack(list(self.masks.values())) if self.masks else np.zeros((0, self.bits // 8))
        codes = np.stack(list(self.codes.values())) if self.codes else masks
        np.savez(path.with_suffix(".masks.npz"), ids=ids, codes=codes, masks=masks)

    @classmethod
    def load(cls, path: Path) -> IrisIndex:
        self = cls()
        index = faiss.read_index_binary(str(path))
        assert isinstance(index, faiss.IndexBinaryIDMap2)  # what __init__ writes
        self.index = index
        with np.load(path.with_suffix(".masks.npz")) as data:
            ids = data["ids"].tolist()
            self.codes = {i: c.astype(np.uint8) for i, c in zip(ids, data["codes"], strict=True)}
            self.masks = {i: m.astype(np.uint8) for i, m in zip(ids, data["masks"], strict=True)}
        return self
