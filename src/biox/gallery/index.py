"""FAISS indexes for one modality: float vectors by inner product, iris codes by Hamming.

Why these index types (docs/architecture.md, "Search"): small galleries are searched
exactly, an ``IndexIDMap2(FlatIP)``. Large ones find candidates in an IVF index of
PQ fast-scan codes (4 bits per sub-vector, a few dozen bytes a template, scanned with
SIMD lookups: about a fifth of the CPU of scanning full vectors), fetch ``RERANK`` times
as many as asked and score them again exactly against the full templates
(``vectors.VectorStore``), so the approximation decides only which templates are looked
at, never a score. Deletions (§22-24) and retention purges take the full template out of
memory at once and the id into a tombstone filter that every search passes to FAISS
(``IDSelector``); the codes leave in one rebuild of the lists once tombstones pass a
share of the gallery, and always before a snapshot is written. HNSW would need no
training but has no removal at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import structlog

from biox.gallery.templates import rotate_iris
from biox.gallery.vectors import Rows, VectorStore
from biox.wire.biometrics import IRIS_COLS, IRIS_ROWS

IndexKind = Literal["flat", "ivf"]
RERANK = 4  # candidates fetched from the codes per candidate returned, then scored exactly
#: dimensions per PQ sub-vector: 8 scans a third faster than 4 and finds the same people,
#: 16 loses poor captures; never under 24 sub-vectors, the finger's (`python -m
#: bench.codes`; docs/performance.md, "Coarser codes")
PQ_DIMS, PQ_MIN = 8, 24
COMPACT_SHARE = 0.01  # tombstones, as a share of the codes, that trigger a rebuild
COMPACT_MIN = 1000
SCAN_SHARE = 0.12  # of the IVF lists searched per query when BIOX_IVF_NPROBE is 0
WIDE_SHARE, WIDE_FROM = 0.16, 4001  # above 1 M identities, where 12 % is not evaluated
#: more lists than this (about 4 M identities): the lists' centroids also get an HNSW
#: graph (10 M: 12 600 lists). Only a template added on its own walks it; batches and
#: searches compare every centroid at once, which is exact and cheaper (``_exact_lists``)
HNSW_COARSE_FROM = 8192
ADD_EF = 128  # how widely the graph looks for the list of a template added on its own
#: a batch this large finds its lists by comparing every centroid at once (BLAS), not by
#: walking the graph: 4.4 times faster at 12 600 lists, and exact; one template alone is
#: faster through the graph (1.6 ms against 3.7 as a product, docs/performance.md)
BULK_ADD_FROM = 16
#: a batch of queries holding this many numbers (queries times dimensions) or more is compared
#: with a flat set (an exact gallery, an IVF index's centroids) as one matrix product, a
#: smaller one a pair at a time. faiss 1.15 takes the product only from 128 000, so a batch
#: of 64 faces (32 768) went pair by pair at 3-7 times the CPU; the product pays from about
#: four queries at either size (`python -m bench.products`, docs/performance.md): from four
#: faces here, and eleven fingers. Set for the process: every flat comparison is one of these.
BLAS_FROM = 2048
faiss.cvar.distance_compute_blas_threshold = BLAS_FROM

log = structlog.get_logger("biox.gallery")


class VectorIndex:
    """L2-normalised float32 templates compared by cosine (inner product)."""

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        nlist: int = 0,
        nprobe: int = 0,
        spill: Path | None = None,
    ):
        """``spill``: where an IVF index's full templates go while it is built, for a
        gallery larger than memory (``vectors.VectorStore``)."""
        self.dim = dim
        self.kind = kind
        self.nprobe = nprobe
        self.tombstones: set[int] = set()  # removed ids whose codes the IVF lists still hold
        self._selector: faiss.IDSelector | None = None
        if kind == "flat":
            self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            self.store: VectorStore | None = None
            self.present = Rows()
        else:
            nlist = max(nlist, 1)
            coarse = f"IVF{nlist}_HNSW32" if nlist > HNSW_COARSE_FROM else f"IVF{nlist}"
            ivf = faiss.index_factory(
                dim, f"{coarse},PQ{pq_subvectors(dim, nlist)}x4fs", faiss.METRIC_INNER_PRODUCT
            )
            assert isinstance(ivf, faiss.IndexIVFPQFastScan)  # what the string asks for
            if nlist > HNSW_COARSE_FROM:  # k-means over 12 600 centroids: 10 rounds, not 25
                ivf.cp.niter = 10
            self.index = ivf
            self.scan(nprobe)
            self.store = VectorStore(dim, spill=spill)
            self.present = self.store.rows

    def scan(self, nprobe: int) -> None:
        """Lists each search scans from now on (0: ``SCAN_SHARE``); exact search ignores it."""
        if isinstance(self.index, faiss.IndexIVF):
            self.nprobe = _search_width(self.index, nprobe_for(self.index.nlist, nprobe))

    @staticmethod
    def nlist_for(n: int) -> int:
        return int(max(64, min(65536, 4 * np.sqrt(max(n, 1)))))

    @property
    def ntotal(self) -> int:
        return self.present.count

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
            _search_width(clone, self.nprobe)
            self.index = clone

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self.index.is_trained:
            self.train(vectors)
        if self.tombstones.intersection(ids.tolist()):
            self.compact()  # a removed id enrolled again: its old codes go first
        graph = _graph(self.index)
        if graph is None or len(ids) >= BULK_ADD_FROM:
            # each template of a batch to its nearest list, exactly (``_exact_lists``); the
            # walk put a quarter of them in another list (performance.md)
            with _exact_lists(self.index):
                self.index.add_with_ids(vectors, ids)
        else:  # one list per template: a narrower walk than a search's
            searching, graph.hnsw.efSearch = graph.hnsw.efSearch, ADD_EF
            try:
                self.index.add_with_ids(vectors, ids)
            finally:
                graph.hnsw.efSearch = searching
        if self.store is None:
            self.present.assign(ids, 0)
        else:
            self.store.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ids = np.unique(ids[self.present.mask(ids)])
        if len(ids) == 0:
            return 0
        if self.store is None:
            self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
            self.present.assign(ids, -1)
            return len(ids)
        self.store.remove(ids)
        self.tombstones.update(ids.tolist())
        self._selector = None
        if len(self.tombstones) >= max(COMPACT_MIN, COMPACT_SHARE * self.index.ntotal):
            self.compact()
        return len(ids)

    def compact(self) -> None:
        """The tombstoned ids' codes out of the IVF lists (one pass over every list)."""
        if self.tombstones:
            gone = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
            self.index.remove_ids(faiss.IDSelectorBatch(gone))
            log.info("gallery_compacted", removed=len(gone), size=self.ntotal)
            self.tombstones.clear()
            self._selector = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best per query, best first, scored exactly; (scores, ids), -1 padded."""
        n = len(queries)
        if self.ntotal == 0:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.store is None:
            return self.index.search(queries, min(k, self.ntotal))
        fetch = min(k * RERANK, int(self.index.ntotal))
        with _exact_lists(self.index):
            _, found = self.index.search(queries, fetch, params=self._params())
        rows = self.present.lookup(found)  # -1: padding, or a tombstone
        vectors = self.store.get(np.maximum(rows, 0))
        exact = np.einsum("qfd,qd->qf", vectors, queries)
        exact[rows < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        ids = np.where(np.isfinite(scores), np.take_along_axis(found, order, axis=1), -1)
        return scores, ids

    def _params(self) -> faiss.SearchParametersIVF | None:
        if not self.tombstones:
            return None
        if self._selector is None:
            gone = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
            self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(gone))
            self._selector_ids = gone  # FAISS keeps a pointer, not a copy
        params = faiss.SearchParametersIVF()
        params.sel, params.nprobe = self._selector, self.nprobe
        return params

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The full templates of ``ids``, each of which must be held."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.store is None:
            stored: np.ndarray = self.index.reconstruct_batch(ids)
            return stored
        return self.store.vectors(ids)

    def scores(self, query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine between ``query`` and each stored id that exists; (ids, scores)."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[self.present.mask(ids)]
        if len(ids) == 0:
            return ids, np.zeros(0, np.float32)
        return ids, self.vectors(ids) @ query

    def save(self, path: Path, final: Path | None = None) -> None:
        """The index to ``path`` (then moved to ``final``), an IVF index's templates beside it
        or updated at ``final`` (``VectorStore.save``); the tombstones' codes out first."""
        self.compact()
        faiss.write_index(self.index, str(path))
        if self.store is not None:
            self.store.save(_vectors_path(path), final and _vectors_path(final))

    @classmethod
    def load(cls, path: Path, nprobe: int = 0) -> VectorIndex:
        index = faiss.read_index(str(path))
        self = cls.__new__(cls)
        self.dim = index.d
        self.tombstones, self._selector = set(), None
        if isinstance(index, faiss.IndexIVFPQFastScan):
            self.kind, self.index = "ivf", index
            self.scan(nprobe)
            self.store = VectorStore.load(_vectors_path(path), index.d)
            self.present = self.store.rows
            return self
        if isinstance(index, faiss.IndexIVF):  # IVF-Flat, as biox wrote it before
            return _from_ivf_flat(index, nprobe)
        assert isinstance(index, faiss.IndexIDMap2)  # what __init__ writes for "flat"
        self.kind, self.nprobe, self.store = "flat", nprobe, None
        self.present = Rows()
        self.present.assign(faiss.vector_to_array(index.id_map).astype(np.int64), 0)
        self.index = index
        return self


def _graph(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW graph over an IVF index's centroids, if it has one."""
    if not isinstance(index, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(index.quantizer)
    return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None


@contextmanager
def _exact_lists(index: faiss.Index) -> Iterator[None]:
    """Where an IVF index's lists are found through an HNSW graph, find them for this call
    by comparing every centroid at once instead: the graph's own flat storage, as one
    matrix product from ``BLAS_FROM``. At 12 649 lists a search for 2 024 of them costs
    5.2 ms of CPU through the graph at 512-d and 3.4 at 192-d, against 1.9 and 0.66 even
    one pair at a time (`python -m bench.coarse`), and is exact; only a template added on
    its own is faster through the graph."""
    graph = _graph(index)
    if graph is None:
        yield
        return
    ivf = faiss.extract_index_ivf(index)
    ivf.quantizer = graph.storage
    try:
        yield
    finally:
        ivf.quantizer = graph


def _search_width(index: faiss.IndexIVF, nprobe: int) -> int:
    """``nprobe`` lists searched, and a graph over them that explores as many."""
    index.nprobe = nprobe
    _explore(index, nprobe)
    return nprobe


def _explore(index: faiss.Index, nprobe: int) -> None:
    """A graph asked for the ``nprobe`` nearest lists must explore at least that many (with
    HNSW's default, 16, a search for 2 024 returned half, recall@1 at 10 M 0.26). ``search``
    no longer walks it (``_exact_lists``); it is kept for faiss readers of the snapshot."""
    graph = _graph(index)
    if graph is not None:
        graph.hnsw.efSearch = max(nprobe, ADD_EF)


def pq_subvectors(dim: int, nlist: int = 0) -> int:
    """4 bits per sub-vector of ``PQ_DIMS`` dimensions (32 bytes a 512-d face, 12 a 192-d
    finger), else of 4: past ``WIDE_FROM`` lists or under ``PQ_MIN``, not measured."""
    coarse = dim // PQ_DIMS if dim % PQ_DIMS == 0 else 0  # sub-vectors of one size only
    return coarse if nlist < WIDE_FROM and coarse >= PQ_MIN else max(2, dim // 4)


def _vectors_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.vectors.f32")


def _from_ivf_flat(old: faiss.IndexIVF, nprobe: int) -> VectorIndex:
    """A snapshot written with IVF-Flat lists read into the compressed layout: the lists'
    own vectors become the full templates and the sample the codes are trained on."""
    ids = _ivf_ids(old)
    vectors = old.reconstruct_batch(ids) if len(ids) else np.zeros((0, old.d), np.float32)
    index = VectorIndex(old.d, "ivf", old.nlist, nprobe)
    if len(ids):
        index.train(vectors[np.random.default_rng(0).permutation(len(ids))[:100_000]])
        index.add(ids, vectors)
    log.info("gallery_migrated", size=len(ids), layout="ivf-pq fast-scan")
    return index


def nprobe_for(nlist: int, configured: int) -> int:
    """Lists searched per query: as configured, or (0) ``SCAN_SHARE`` of them, or
    ``WIDE_SHARE`` from ``WIDE_FROM`` lists. 12 % adds to exact FNIR at FPIR 0.1 % what 16 %
    adds (0.05-0.10 points at 100 000 and 1 M), 8 % reaches the 0.2-point bound (docs/matching.md).
    At one share fewer, longer lists find fewer (``bench.lists``: 1 M faces 92.4 / 90.9 /
    88.7 % at 4 000 / 2 000 / 1 000 lists; docs/performance.md, "Where the latency goes")."""
    share = SCAN_SHARE if nlist < WIDE_FROM else WIDE_SHARE
    return configured if configured > 0 else min(nlist, max(16, round(nlist * share)))


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
