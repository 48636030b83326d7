"""The compressed index's contract (gallery/index.py, gallery/vectors.py): candidates from
codes, scores from the full templates, deletions that leave memory at once and the disk
with the snapshot, and a snapshot's templates read from disk as they are needed."""

from __future__ import annotations

import mmap
from multiprocessing.connection import Connection

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from biox.gallery import index as index_module
from biox.gallery.index import VectorIndex
from biox.gallery.vectors import Rows, VectorStore

DIM = 32
N = 3000


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return np.arange(N, dtype=np.int64) * 3 + 1, unit(rng.standard_normal((N, DIM)))


def ivf(data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    ids, vectors = data
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=16)  # every list: only the codes approximate
    ix.train(vectors)
    ix.add(ids, vectors)
    return ix


def noisy(vectors: np.ndarray, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(vectors + 0.4 * rng.standard_normal(vectors.shape) / np.sqrt(DIM))


def test_rows_map_dense_and_hashed_ids_and_count_what_is_held():
    rows = Rows()
    big = (1 << 61) + 7
    rows.assign(np.array([5, 2000, big]), np.array([0, 1, 2]))
    assert rows.lookup(np.array([5, 2000, big, 6, -1, big + 1])).tolist() == [0, 1, 2, -1, -1, -1]
    assert rows.count == 3
    rows.assign(np.array([5, 5, big]), np.array([7, 8, -1]))  # the last value given wins
    assert rows.lookup(np.array([5, big])).tolist() == [8, -1] and rows.count == 2
    rows.assign(np.array([9, 5]), -1)  # 9 was never held: nothing to take away
    assert rows.count == 1 and rows.held().tolist() == [2000]


def test_a_flat_comparison_is_one_matrix_product_from_four_faces_or_eleven_fingers(data):
    """faiss 1.15 compared a batch of 64 faces with an exact gallery (or with the lists'
    centroids) one pair at a time, at 3-7 times the CPU of one matrix product; one to
    three queries are cheaper pair by pair (`python -m bench.products`). Either way the
    answers are the exact ones."""
    assert faiss.cvar.distance_compute_blas_threshold == index_module.BLAS_FROM
    assert 3 * 512 < index_module.BLAS_FROM <= 4 * 512
    assert 3 * 192 < index_module.BLAS_FROM <= 11 * 192
    ids, vectors = data
    ix = VectorIndex(DIM, "flat")
    ix.add(ids, vectors)
    for count in (1, 200):  # a pair at a time; one product (200 * 32 >= BLAS_FROM)
        queries = noisy(vectors[:count], seed=count)
        scores, found = ix.search(queries, 5)
        exact = queries @ vectors.T
        best = np.argsort(-exact, axis=1)[:, :5]
        assert (found == ids[best]).all()
        assert np.allclose(scores, np.take_along_axis(exact, best, axis=1), atol=1e-5)


def test_the_compressed_index_returns_exact_scores_best_first(data):
    """Candidates come from the codes, scores never do: each returned score is the
    exact cosine, and the nearest neighbour of a noisy query is found."""
    ids, vectors = data
    ix = ivf(data)
    queries = noisy(vectors[:200])
    scores, found = ix.search(queries, 5)
    exact = np.einsum("qd,qkd->qk", queries, vectors[(found - 1) // 3])
    assert np.allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert (found[:, 0] == ids[:200]).mean() == 1.0
    assert ix.index.ntotal >= index_module.RERANK * 5  # it did fetch more than it returned


def test_a_removed_id_is_never_a_candidate_and_its_template_leaves_memory(data):
    ids, vectors = data
    ix = ivf(data)
    gone = ids[:10]
    assert ix.remove(np.concatenate([gone, gone, [10**6]])) == 10  # twice, or never held
    assert ix.tombstones == set(gone.tolist()) and ix.ntotal == N - 10
    assert ix.index.ntotal == N  # the codes wait for the rebuild ...
    _, found = ix.search(vectors[:10], 20)
    assert not np.isin(found, gone).any()  # ... behind the filter
    assert not ix.store.added[:10].any()  # the full templates are zeroed now
    assert ix.scores(vectors[0], gone)[0].size == 0


def test_tombstones_past_their_share_rebuild_the_lists(data, monkeypatch):
    ids, _ = data
    monkeypatch.setattr(index_module, "COMPACT_MIN", 50)
    ix = ivf(data)
    ix.remove(ids[:49])
    assert len(ix.tombstones) == 49 and ix.index.ntotal == N
    with capture_logs() as logs:
        ix.remove(ids[49:50])
    assert not ix.tombstones and ix.index.ntotal == N - 50
    assert [(e["event"], e["removed"], e["size"]) for e in logs] == [
        ("gallery_compacted", 50, N - 50)
    ]
    assert ix._params() is None  # no tombstones left: no filter to pass


def test_a_removed_id_enrolled_again_is_found_once(data):
    ids, vectors = data
    ix = ivf(data)
    ix.remove(ids[:1])
    ix.add(ids[:1], vectors[1:2])  # a corrected record: new templates, the same id
    assert not ix.tombstones and ix.index.ntotal == N
    _, found = ix.search(vectors[1:2], 3)
    assert found[0].tolist().count(ids[0]) == 1
    assert np.allclose(ix.vectors(ids[:1]), vectors[1:2])


def test_a_snapshot_holds_no_removed_template_in_any_form(data, tmp_path):
    ids, vectors = data
    ix = ivf(data)
    ix.remove(ids[:5])
    ix.save(tmp_path / "face.faiss")
    assert not ix.tombstones  # the codes left before the file was written
    written = faiss.read_index(str(tmp_path / "face.faiss"))
    assert written.ntotal == N - 5
    held = np.load(tmp_path / "face.vectors.ids.npy")
    assert held.tolist() == ids[5:].tolist()
    on_disk = np.fromfile(tmp_path / "face.vectors.f32", np.float32).reshape(-1, DIM)
    assert np.array_equal(on_disk, vectors[5:])  # the rows of the removed ones are gone


def test_a_loaded_snapshot_reads_templates_from_disk_and_takes_new_ones(data, tmp_path):
    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert loaded.kind == "ivf" and loaded.nprobe == 16 and loaded.ntotal == N
    assert isinstance(loaded.store.base, np.memmap)
    extra = unit(np.random.default_rng(9).standard_normal((3, DIM)))
    loaded.add(np.array([10**7, 10**7 + 1, (1 << 60)]), extra)
    both = np.array([ids[3], 10**7 + 1, 1 << 60])
    assert np.allclose(loaded.vectors(both), [vectors[3], extra[1], extra[2]])
    loaded.remove(ids[3:4])  # a snapshot row: out of the map, on disk until rewritten
    assert loaded.scores(vectors[3], ids[3:4])[0].size == 0
    _, found = loaded.search(np.stack([vectors[3], extra[2]]), 2)
    assert ids[3] not in found[0] and found[1][0] == 1 << 60


def test_a_store_refuses_templates_that_do_not_fit_their_ids(tmp_path):
    store = VectorStore(4)
    store.add(np.array([1, 2]), np.eye(4, dtype=np.float32)[:2])
    store.save(tmp_path / "x.f32")
    np.save(tmp_path / "x.ids.npy", np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="32 bytes for 3 ids of 4 float32"):
        VectorStore.load(tmp_path / "x.f32", 4)


def test_an_ivf_flat_snapshot_from_before_is_read_into_the_compressed_layout(data, tmp_path):
    ids, vectors = data
    quantizer = faiss.IndexFlatIP(DIM)
    old = faiss.IndexIVFFlat(quantizer, DIM, 16, faiss.METRIC_INNER_PRODUCT)
    old.set_direct_map_type(faiss.DirectMap.Hashtable)
    old.train(vectors)
    old.add_with_ids(vectors, ids)
    faiss.write_index(old, str(tmp_path / "face.faiss"))
    with capture_logs() as logs:
        loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert isinstance(loaded.index, faiss.IndexIVFPQFastScan) and loaded.ntotal == N
    assert (loaded.kind, loaded.index.nlist, loaded.nprobe, loaded.dim) == ("ivf", 16, 16, DIM)
    assert [(e["event"], e["size"], e["layout"]) for e in logs] == [
        ("gallery_migrated", N, "ivf-pq fast-scan")
    ]
    assert np.allclose(loaded.vectors(ids[[0, 77]]), vectors[[0, 77]])
    assert (loaded.search(noisy(vectors[:50]), 1)[1][:, 0] == ids[:50]).all()


def test_a_build_larger_than_memory_spills_and_the_snapshot_takes_the_file_over(
    data, tmp_path, monkeypatch
):
    """The full templates go to a spill file as they are added; saving links that file
    into the snapshot (no second copy) and the index then reads it as its base. The
    lists' centroids are found through HNSW past ``HNSW_COARSE_FROM`` lists."""
    ids, vectors = data
    monkeypatch.setattr(index_module, "HNSW_COARSE_FROM", 8)
    spill = tmp_path / "face.spill"
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=16, spill=spill)
    graph = faiss.downcast_index(ix.index.quantizer)
    assert isinstance(graph, faiss.IndexHNSWFlat)
    assert graph.hnsw.efSearch >= 16  # it explores at least as many lists as are searched
    ix.train(vectors)
    ix.add(ids[:2000], vectors[:2000])
    ix.add(ids[2000:], vectors[2000:])
    assert spill.stat().st_size == N * DIM * 4 and len(ix.store.added) == 0  # not in memory
    assert np.allclose(ix.vectors(ids[[5, 2500]]), vectors[[5, 2500]])
    ix.save(tmp_path / "face.faiss")
    assert not spill.exists() and (tmp_path / "face.vectors.f32").stat().st_nlink == 1
    assert isinstance(ix.store.base, np.memmap) and ix.store.spill is None
    assert (ix.search(noisy(vectors[:50]), 1)[1][:, 0] == ids[:50]).all()
    loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert np.allclose(loaded.vectors(ids[[0, 2999]]), vectors[[0, 2999]])
    assert (loaded.search(noisy(vectors[:50]), 1)[1][:, 0] == ids[:50]).all()


def test_a_spilled_build_with_removals_is_written_without_them(data, tmp_path):
    ids, vectors = data
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=16, spill=tmp_path / "face.spill")
    ix.train(vectors)
    ix.add(ids, vectors)
    ix.remove(ids[:3])
    on_file = np.fromfile(tmp_path / "face.spill", np.float32).reshape(-1, DIM)
    assert not on_file[:3].any()  # zeroed where it lies, at once
    ix.save(tmp_path / "face.faiss")
    written = np.fromfile(tmp_path / "face.vectors.f32", np.float32).reshape(-1, DIM)
    assert np.array_equal(written, vectors[3:])
    assert not (tmp_path / "face.spill").exists()  # its rows are the snapshot's now
    assert np.allclose(ix.vectors(ids[[3, 2999]]), vectors[[3, 2999]])
    assert ix.scores(vectors[0], ids[:3])[0].size == 0


def test_a_spilling_index_that_got_nothing_saves_and_loads_empty(tmp_path):
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=16, spill=tmp_path / "finger.1.spill")
    ix.save(tmp_path / "finger.1.faiss")
    loaded = VectorIndex.load(tmp_path / "finger.1.faiss")
    assert loaded.ntotal == 0 and loaded.search(np.zeros((1, DIM), np.float32), 3)[1].tolist() == [
        [-1] * 3
    ]


def test_a_graph_over_the_lists_explores_as_many_as_a_search_asks_for(data, tmp_path, monkeypatch):
    """HNSW's default exploration (16) returned half of 300 lists asked for, most of them
    wrong. A batch added puts each template in its nearest list exactly (the graph's
    centroids compared all at once); one alone walks the graph; either way the graph is
    the quantizer again for searching, at its search width."""
    ids, vectors = data
    monkeypatch.setattr(index_module, "HNSW_COARSE_FROM", 8)
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=300)
    ix.train(vectors)
    assert faiss.downcast_index(ix.index.quantizer).hnsw.efSearch == 300
    ix.add(ids, vectors)
    graph = faiss.downcast_index(ix.index.quantizer)
    assert isinstance(graph, faiss.IndexHNSWFlat) and graph.hnsw.efSearch == 300
    nearest = faiss.downcast_index(graph.storage).search(vectors, 1)[1][:, 0]
    invlists = ix.index.invlists
    held = {
        int(i): lst
        for lst in range(ix.index.nlist)
        for i in faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst))
    }
    assert [held[int(i)] for i in ids] == nearest.tolist()  # every one in its nearest list
    ix.add(np.array([10**6]), vectors[:1])  # one alone: through the graph, its width kept
    assert faiss.downcast_index(ix.index.quantizer).hnsw.efSearch == 300
    assert ix.search(vectors[:1], 2)[1][0].tolist() in ([ids[0], 10**6], [10**6, ids[0]])
    ix.save(tmp_path / "face.faiss")
    loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=500)
    assert faiss.downcast_index(loaded.index.quantizer).hnsw.efSearch == 500


def test_a_hashed_id_at_the_dense_limit_is_kept_apart_and_a_never_held_one_removes_nothing():
    """Ids from the limit up are hashed ids of enrolled query data: the dense array never
    grows to reach them (it would take 32 GB for one)."""
    rows = Rows()
    rows.assign(np.array([Rows.DENSE, 7]), np.array([4, 5]))
    assert rows.lookup(np.array([Rows.DENSE, 7])).tolist() == [4, 5]
    assert Rows.DENSE in rows.sparse and len(rows.dense) == 1024 and rows.count == 2
    rows = Rows()
    rows.assign(np.array([Rows.DENSE + 9]), -1)  # never held: no error, nothing counted
    assert rows.count == 0 and rows.sparse == {}
    rows.assign(np.array([3000]), np.array([1]))  # grown to hold it, at least doubled
    assert len(rows.dense) == 3001 and rows.lookup(np.array([3000])).tolist() == [1]
    rows.assign(np.array([3001]), np.array([2]))
    assert len(rows.dense) == 6002


def test_an_empty_or_short_index_pads_with_minus_infinity_and_minus_one(data):
    ids, vectors = data
    empty = VectorIndex(DIM, "ivf", nlist=16, nprobe=16)
    scores, found = empty.search(vectors[:2], 3)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == (2, 3)
    assert np.isneginf(scores).all() and (found == -1).all()
    few = VectorIndex(DIM, "ivf", nlist=16, nprobe=16)
    few.train(vectors)
    few.add(ids[:6], vectors[:6])
    few.remove(ids[1:6])  # one left living: the rest of the answer is padding
    scores, found = few.search(vectors[:1], 3)
    assert found.tolist() == [[ids[0], -1, -1]] and scores.dtype == np.float32
    assert np.isfinite(scores[0, 0]) and np.isneginf(scores[0, 1:]).all()


def test_tombstones_never_crowd_out_the_candidates_a_search_returns(data):
    """The tombstone filter is passed to FAISS, not applied after: with the 900 nearest of a
    query removed (their codes still in the lists), a search for 5 still returns 5 living
    ids (a filter after the fact would leave padding where the tombstoned ones were)."""
    ids, vectors = data
    ix = ivf(data)
    query = vectors[:1]
    nearest = np.argsort(-(vectors @ query[0]))
    ix.remove(ids[nearest[:900]])  # below the compaction threshold: codes stay, filtered
    scores, found = ix.search(query, 5)
    assert (found[0] >= 0).all() and np.isfinite(scores[0]).all()
    assert not set(found[0].tolist()) & set(ids[nearest[:900]].tolist())


def test_the_iris_index_refuses_mismatched_batches_and_answers_nothing_when_empty(tmp_path):
    from biox.gallery.index import IrisIndex

    iris = IrisIndex()
    width = iris.bits // 8
    rng = np.random.default_rng(3)
    code = rng.integers(0, 256, width, dtype=np.uint8)
    assert iris.candidates(code, 5).dtype == np.int64 and len(iris.candidates(code, 5)) == 0
    got, scores = iris.scores(code, code, np.array([1, 2]))
    assert got.dtype == np.int64 and scores.dtype == np.float32 and len(got) == len(scores) == 0
    codes = rng.integers(0, 256, (3, width), dtype=np.uint8)
    with pytest.raises(ValueError):
        iris.add(np.array([1, 2, 3]), codes, codes[:2])  # a mask short: refused whole
    masks = np.full((3, width), 255, np.uint8)
    iris = IrisIndex()
    iris.add(np.array([1, 2, 3]), codes.astype(np.int64), masks.astype(np.int64))
    assert {c.dtype for c in iris.codes.values()} == {np.dtype(np.uint8)}
    assert 2 in iris.candidates(codes[1], 1).tolist()  # the nearest of each rotation
    got, scores = iris.scores(codes[1], masks[1], np.array([2, 9]))
    assert got.tolist() == [2] and scores.tolist() == [0.0]
    assert iris.remove(np.array([2, 7])) == 1 and 2 not in iris.codes and 2 not in iris.masks
    iris.save(tmp_path / "iris.index")
    back = IrisIndex.load(tmp_path / "iris.index")
    assert sorted(back.codes) == [1, 3] and back.ntotal == 2
    assert all((back.codes[i] == codes[i - 1]).all() for i in (1, 3))
    assert back.codes[1].dtype == np.uint8 and back.masks[3].dtype == np.uint8
    IrisIndex().save(tmp_path / "empty.index")
    assert IrisIndex.load(tmp_path / "empty.index").codes == {}


def test_a_spill_of_one_row_is_linked_not_copied(tmp_path):
    """The smallest spill the snapshot can take over whole: one row, the file itself."""
    rng = np.random.default_rng(8)
    row = unit(rng.standard_normal((1, DIM)))
    store = VectorStore(DIM, spill=tmp_path / "face.spill")
    store.add(np.array([42]), row)
    inode = (tmp_path / "face.spill").stat().st_ino
    store.save(tmp_path / "face.vectors.f32")
    assert (tmp_path / "face.vectors.f32").stat().st_ino == inode  # the same file
    assert store.spill is None and np.allclose(store.get(np.array([0])), row)


def test_row_numbers_index_arrays_directly_whatever_is_looked_up():
    """Rows are array indices (the store reads templates with them): integers even for an
    empty lookup or when nothing hashed is held; id 0 and the ids at and past the dense
    map's end are answered, and an id the map grew past without holding is -1."""
    table = np.arange(10) * 10
    rows = Rows()
    assert table[rows.lookup([])].tolist() == [] and table[rows.held()].tolist() == []
    rows.assign(np.array([0, 3]), np.array([4, 5]))
    assert rows.lookup(np.array([0, 3, 1024])).tolist() == [4, 5, -1]
    assert table[rows.lookup([0, 3])].tolist() == [40, 50]
    assert table[rows.held()].tolist() == [0, 30]  # ids 0 and 3, as row numbers here
    rows.assign(np.array([1500]), np.array([6]))  # the map grows past 1024
    assert rows.lookup(np.array([1024, 1499, 1500, 2047])).tolist() == [-1, -1, 6, -1]
    rows.assign(np.array([3]), -1)
    assert rows.lookup(np.array([3])).tolist() == [-1] and rows.count == 2


def test_a_store_reads_across_its_snapshot_and_what_came_since_row_by_row():
    """One snapshot row and one added since: each read where it lies, alone or together;
    a removal zeroes the added template where it lies and leaves the others."""
    rng = np.random.default_rng(9)
    old, new = unit(rng.standard_normal((1, DIM))), unit(rng.standard_normal((3, DIM)))
    store = VectorStore(DIM, base=old)
    store.rows.assign(np.array([7]), np.array([0]))
    store.add(np.array([8]), new[:1])
    assert np.allclose(store.get(np.array([1])), new[:1])  # the one row added
    assert np.allclose(store.get(np.array([0, 1])), np.vstack([old, new[:1]]))
    store.add(np.array([9, 10]), new[1:])
    store.remove(np.array([9]))
    assert not store.added[1].any() and np.allclose(store.added[[0, 2]], new[[0, 2]])
    assert store.rows.lookup(np.array([9])).tolist() == [-1]
    assert np.allclose(store.vectors(np.array([7, 8, 10])), np.vstack([old, new[[0, 2]]]))


def test_a_spill_keeps_float32_whatever_it_is_given_and_takes_more_after_its_save(tmp_path):
    """Templates given as float64 are written as the float32 the file is read as; once the
    snapshot took the spill over, what is added next lives in memory after it."""
    rng = np.random.default_rng(10)
    rows = rng.standard_normal((3, DIM))  # float64
    store = VectorStore(DIM, spill=tmp_path / "face.spill")
    store.add(np.array([1, 2]), rows[:2])
    assert (tmp_path / "face.spill").stat().st_size == 2 * DIM * 4
    assert np.allclose(store.get(np.array([0, 1])), rows[:2])
    store.save(tmp_path / "face.vectors.f32")
    store.add(np.array([3]), rows[2:])
    assert np.allclose(store.vectors(np.array([1, 3])), rows[[0, 2]])


def _graph_over_256_lists(monkeypatch, seed: int) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """A trained IVF index whose 256 lists are found through an HNSW graph (nprobe 1),
    and 6 000 random templates for it, not yet added."""
    monkeypatch.setattr(index_module, "HNSW_COARSE_FROM", 8)
    vectors = unit(np.random.default_rng(seed).standard_normal((6000, DIM)))
    ix = VectorIndex(DIM, "ivf", nlist=256, nprobe=1)
    ix.train(vectors)
    return ix, np.arange(len(vectors), dtype=np.int64), vectors


def test_a_batch_finds_its_lists_exactly_where_a_walk_through_the_graph_misses(monkeypatch):
    """A graph over 256 lists walked at its narrowest puts some templates in another
    list; a batch (16 templates, and more) still lands each in its nearest one."""
    monkeypatch.setattr(index_module, "ADD_EF", 1)
    ix, ids, vectors = _graph_over_256_lists(monkeypatch, seed=12)
    graph = faiss.downcast_index(ix.index.quantizer)
    nearest = faiss.downcast_index(graph.storage).search(vectors, 1)[1][:, 0]
    assert (graph.search(vectors, 1)[1][:, 0] != nearest).any()  # the walk alone misses
    blas = faiss.cvar.distance_compute_blas_threshold
    ix.add(ids[:16], vectors[:16])
    ix.add(ids[16:], vectors[16:])
    assert faiss.cvar.distance_compute_blas_threshold == blas == index_module.BLAS_FROM
    invlists = ix.index.invlists
    held = {
        int(i): lst
        for lst in range(ix.index.nlist)
        for i in faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst))
    }
    assert [held[int(i)] for i in ids] == nearest.tolist()
    assert faiss.downcast_index(ix.index.quantizer).hnsw.efSearch == 1


def test_a_search_finds_its_lists_by_comparing_every_centroid_not_by_walking_the_graph(
    monkeypatch,
):
    """At 10 M (12 649 lists, 2 024 searched) the walk cost 5.2 ms of a face query's CPU
    where comparing every centroid at once costs 0.6 (`python -m bench.coarse`), and a
    narrow walk also misses lists. A search through the index compares every centroid at
    once, and the graph is the quantizer again after."""
    ix, ids, vectors = _graph_over_256_lists(monkeypatch, seed=13)
    ix.add(ids, vectors)  # each in its nearest list (a batch)
    graph = faiss.downcast_index(ix.index.quantizer)
    graph.hnsw.efSearch = 1
    walked = ix.index.search(vectors, 1)[1][:, 0]  # faiss alone walks the graph
    assert (walked != ids).any()  # and so misses some: each template's own list
    blas = faiss.cvar.distance_compute_blas_threshold
    assert (ix.search(vectors, 1)[1][:, 0] == ids).all()  # its own list, every time
    assert (ix.search(vectors[:1], 1)[1][:, 0] == ids[:1]).all()  # a query alone too
    assert faiss.downcast_index(ix.index.quantizer) is not None
    assert isinstance(faiss.downcast_index(ix.index.quantizer), faiss.IndexHNSWFlat)
    assert faiss.cvar.distance_compute_blas_threshold == blas == index_module.BLAS_FROM


def test_the_first_batch_added_to_an_untrained_index_trains_it(data):
    ids, vectors = data
    ix = VectorIndex(DIM, "ivf", nlist=16, nprobe=16)
    assert not ix.trained
    ix.add(ids, vectors)
    assert ix.trained and ix.ntotal == N
    assert (ix.search(noisy(vectors[:20]), 1)[1][:, 0] == ids[:20]).all()


class _Advice:
    """Stands in for a memory map's ``madvise``, recording what was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int, int]] = []

    def madvise(self, option: int, start: int, length: int) -> None:
        self.asked.append((option, start, length))


def test_read_ahead_asks_for_every_row_of_a_gather_from_disk_before_reading_any(data, tmp_path):
    """A gallery larger than the page cache gathers ~7 700 rows a batch; each asked for
    at once lets the disk read them side by side instead of one page fault at a time."""
    ids, _ = data
    ivf(data).save(tmp_path / "face.faiss")
    store = VectorIndex.load(tmp_path / "face.faiss").store
    extra = unit(np.random.default_rng(9).standard_normal((1, DIM)))
    store.add(np.array([10**7]), extra)  # a row since the snapshot: in memory, never asked
    rows = store.rows.lookup(np.array([ids[7], ids[400], ids[7], 10**7, ids[1023]]))
    expected = store.get(rows)
    advice = _Advice()
    store.base._mmap = advice  # the mapping itself stays: the gather still reads the file
    assert store.get(rows).tobytes() == expected.tobytes() and advice.asked == []  # off
    store.read_ahead = True
    got = store.get(rows)
    assert got.tobytes() == expected.tobytes()
    row_bytes = DIM * 4
    on_disk = sorted({int(r) for r in rows if r < len(store.base)})
    assert len(advice.asked) == len(on_disk) == 3  # once per row, not per occurrence
    for (option, start, length), row in zip(advice.asked, on_disk, strict=True):
        assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0
        assert start <= row * row_bytes and start + length >= (row + 1) * row_bytes


def saved_in_place(ix: VectorIndex, directory, name: str = "face") -> list[str]:
    """``ix`` saved as ``Gallery.save`` saves it: into a staging folder, then each file
    moved over the snapshot's; the names that were staged."""
    staged = directory / ".staged"
    staged.mkdir(exist_ok=True)
    for left in staged.iterdir():
        left.unlink()
    ix.save(staged / f"{name}.faiss", directory / f"{name}.faiss")
    names = sorted(p.name for p in staged.iterdir())
    for path in staged.iterdir():
        path.replace(directory / path.name)
    staged.rmdir()
    return names


def rows_on_disk(directory, name: str = "face") -> np.ndarray:
    return np.fromfile(directory / f"{name}.vectors.f32", np.float32).reshape(-1, DIM)


def test_a_snapshot_saved_where_it_was_loaded_is_updated_in_place(data, tmp_path):
    """What was added is appended, what was removed zeroed where it lies; nothing else of
    the file is written, and the ids say which rows are holes (-1)."""
    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    inode = (tmp_path / "face.vectors.f32").stat().st_ino
    loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    extra = unit(np.random.default_rng(11).standard_normal((3, DIM)))
    new_ids = np.array([10**7, 10**7 + 1, 1 << 60])  # the last a hashed id, kept apart
    loaded.add(new_ids, extra)
    loaded.remove(ids[[4, 9, 2000]])
    staged = saved_in_place(loaded, tmp_path)
    assert staged == ["face.faiss", "face.vectors.ids.npy"]  # no second copy of the rows
    assert (tmp_path / "face.vectors.f32").stat().st_ino == inode
    on_disk = rows_on_disk(tmp_path)
    assert len(on_disk) == N + 3
    assert not on_disk[[4, 9, 2000]].any()  # the removed templates are gone from the disk
    kept = np.setdiff1d(np.arange(N), [4, 9, 2000])
    assert np.array_equal(on_disk[kept], vectors[kept]) and np.array_equal(on_disk[N:], extra)
    written = np.load(tmp_path / "face.vectors.ids.npy")
    assert written[[4, 9, 2000]].tolist() == [-1, -1, -1]
    assert written[N:].tolist() == new_ids.tolist() and np.array_equal(written[kept], ids[kept])
    # the saving store now reads every row from the file, and saves in place again
    assert loaded.store.used == 0 and len(loaded.store.base) == N + 3
    assert loaded.store.added.nbytes == 1024 * DIM * 4  # the memory they took given back
    assert np.allclose(loaded.vectors(new_ids), extra)
    loaded.remove(new_ids[:1])
    loaded.add(np.array([10**7 + 7]), vectors[:1])
    assert saved_in_place(loaded, tmp_path) == ["face.faiss", "face.vectors.ids.npy"]
    assert (tmp_path / "face.vectors.f32").stat().st_ino == inode
    again = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert again.ntotal == N - 3 + 3 - 1 + 1 and not again.present.mask(ids[[4, 9, 2000]]).any()
    assert not rows_on_disk(tmp_path)[N].any()  # 10**7, removed since its own save
    assert np.allclose(
        again.vectors(np.array([1 << 60, 10**7 + 7, ids[5]])),
        np.stack([extra[2], vectors[0], vectors[5]]),
    )
    _, found = again.search(np.stack([extra[1], vectors[3]]), 1)
    assert found[:, 0].tolist() == [10**7 + 1, ids[3]]


def test_a_matcher_mapping_the_snapshot_loses_a_removed_template_when_it_is_saved(data, tmp_path):
    """A matcher that loaded the snapshot before and has not yet taken the deletion in
    (its tombstone) reads zeros from then on, in place or written again whole: the file
    it maps is the one the deletion reached."""
    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    running = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    refresher = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    refresher.remove(ids[:2])
    saved_in_place(refresher, tmp_path)
    assert running.present.mask(ids[:2]).all()  # it still holds them, as zeros
    assert not running.vectors(ids[:2]).any() and np.allclose(running.vectors(ids[2:3]), vectors[2])
    refresher.remove(ids[2 : 2 + N // 5])  # past the share of holes: written again whole
    assert saved_in_place(refresher, tmp_path) == [
        "face.faiss",
        "face.vectors.f32",
        "face.vectors.ids.npy",
    ]
    assert refresher.store.added.nbytes == 1024 * DIM * 4  # its rows read from the file
    assert not running.vectors(ids[2 : 2 + N // 5]).any()  # the old file, still mapped
    assert np.allclose(running.vectors(ids[-1:]), vectors[-1])
    whole = rows_on_disk(tmp_path)
    assert len(whole) == N - 2 - N // 5 and np.array_equal(whole, vectors[2 + N // 5 :])
    assert (np.load(tmp_path / "face.vectors.ids.npy") >= 0).all()
    # the refresher reads the file it wrote: its next save, in the same process, is in
    # place and reaches a matcher that loaded that file
    later = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    refresher.remove(ids[-1:])
    assert saved_in_place(refresher, tmp_path) == ["face.faiss", "face.vectors.ids.npy"]
    assert not later.vectors(ids[-1:]).any() and np.allclose(later.vectors(ids[-2:-1]), vectors[-2])


def test_an_update_cut_short_leaves_the_old_snapshot_and_the_next_save_mends_it(data, tmp_path):
    """Cut short after the rows were appended and zeroed but before the ids were moved
    (the staged files never arrive): the old ids still name exactly the old rows, the
    tail is not read, and the next update cuts it off before it appends."""
    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    cut = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    cut.add(np.array([10**7]), vectors[:1])
    cut.remove(ids[:1])
    (tmp_path / ".staged").mkdir()
    cut.save(tmp_path / ".staged" / "face.faiss", tmp_path / "face.faiss")  # then it stops
    assert len(rows_on_disk(tmp_path)) == N + 1  # the tail, which no ids name
    after = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert after.ntotal == N and len(after.store.base) == N
    assert np.allclose(after.vectors(ids[1:3]), vectors[1:3])
    assert not after.vectors(ids[:1]).any()  # a removed record's: its tombstone takes it out
    after.remove(ids[:1])
    after.add(np.array([10**7 + 1, 10**7 + 2]), vectors[5:7])
    saved_in_place(after, tmp_path)
    on_disk = rows_on_disk(tmp_path)
    assert len(on_disk) == N + 2 and np.array_equal(on_disk[N:], vectors[5:7])
    assert np.load(tmp_path / "face.vectors.ids.npy")[N:].tolist() == [10**7 + 1, 10**7 + 2]
    assert VectorIndex.load(tmp_path / "face.faiss", nprobe=16).ntotal == N + 1


def test_a_store_with_more_rows_than_ids_reads_as_many_as_it_has_ids(tmp_path):
    store = VectorStore(4)
    store.add(np.array([1, 2]), np.eye(4, dtype=np.float32)[:2])
    store.save(tmp_path / "x.f32")
    with (tmp_path / "x.f32").open("ab") as tail:
        tail.write(np.ones((3, 4), np.float32).tobytes())
    loaded = VectorStore.load(tmp_path / "x.f32", 4)
    assert len(loaded.base) == 2 and loaded.count == 2
    assert np.array_equal(loaded.vectors(np.array([2, 1])), np.eye(4, dtype=np.float32)[[1, 0]])


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "save", "reload", "cut_short"]),
        st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True),
    ),
    max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_a_store_saved_in_place_any_number_of_times_holds_what_it_was_given(ops):
    """Adds, removes, saves where it was loaded (in place or, past the share of holes,
    whole), reloads, and saves cut short before the ids are moved, in any order: the
    store always holds what a model of it says (what was given and not removed; after a
    reload, what was last saved; after a save cut short, that too, with the rows removed
    since zeroed), and no removed template is in the file once it was saved."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(len(ops))
    held: dict[int, np.ndarray] = {}  # what the store holds
    saved: dict[int, np.ndarray] = {}  # what the snapshot on disk names
    touched: set[int] = set()  # removed (perhaps added again) since the last save
    gone: set[bytes] = set()  # templates removed and saved since: never on disk again
    with tempfile.TemporaryDirectory() as tmp:
        final, staged = Path(tmp) / "f.f32", Path(tmp) / ".staged"
        store = VectorStore(4)
        store.save(final)
        store = VectorStore.load(final, 4)
        for op, ids in ops:
            if op == "add":
                new = [i for i in ids if i not in held]
                vectors = rng.standard_normal((len(new), 4)).astype(np.float32)
                store.add(np.array(new, dtype=np.int64), vectors)
                held.update(zip(new, vectors, strict=True))
            elif op == "remove":
                for i in ids:
                    if i in held and held[i].any():  # zeros: a row a cut-short save cleared
                        gone.add(held[i].tobytes())
                    held.pop(i, None)
                    touched.add(i)
                store.remove(np.array(ids, dtype=np.int64))
            elif op in ("save", "cut_short"):
                staged.mkdir(exist_ok=True)
                for left in staged.iterdir():
                    left.unlink()
                store.save(staged / "f.f32", final)
                if op == "save":
                    for path in staged.iterdir():
                        path.replace(final.parent / path.name)
                    saved = dict(held)
                    on_disk = final.read_bytes()
                    assert not any(g in on_disk for g in gone)
                else:  # the process stops: the old ids name the old rows, some zeroed
                    store = VectorStore.load(final, 4)
                    zero = np.zeros(4, np.float32)
                    held = {i: zero if i in touched else v for i, v in saved.items()}
                    saved = dict(held)
                touched = set()
            else:  # removals not saved yet are lost with the process
                store = VectorStore.load(final, 4)
                held, touched = dict(saved), set()
            gone -= {v.tobytes() for v in held.values()}
            assert store.count == len(held)
            if held:
                keys = np.array(sorted(held), dtype=np.int64)
                assert np.array_equal(store.vectors(keys), np.stack([held[k] for k in keys]))
            ids_on_disk = np.load(final.with_name("f.ids.npy"))
            assert len(final.read_bytes()) >= len(ids_on_disk) * 16


def test_up_to_a_tenth_of_holes_in_place_and_elsewhere_whole(data, tmp_path):
    """A tenth of the rows zeroed is still updated in place; a loaded snapshot saved into
    another directory is written there whole (the one it came from is not touched); ids
    changed under a store (no writer holds the snapshot) are refused by name."""
    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    inode = (tmp_path / "face.vectors.f32").stat().st_ino
    loaded = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    loaded.remove(ids[: N // 10])
    assert saved_in_place(loaded, tmp_path) == ["face.faiss", "face.vectors.ids.npy"]
    assert (tmp_path / "face.vectors.f32").stat().st_ino == inode
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    again = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    assert saved_in_place(again, elsewhere) == [
        "face.faiss",
        "face.vectors.f32",
        "face.vectors.ids.npy",
    ]
    assert np.array_equal(rows_on_disk(elsewhere), vectors[N // 10 :])
    assert len(rows_on_disk(tmp_path)) == N  # the source, holes and all, as it was
    changed = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
    np.save(tmp_path / "face.vectors.ids.npy", ids[:10])
    with pytest.raises(ValueError, match=r"face.vectors.f32: 10 ids, but 3000 rows mapped"):
        saved_in_place(changed, tmp_path)


def test_record_id_zero_is_an_id_like_any_other_in_place_or_not(tmp_path):
    """``-1`` marks a zeroed row; id 0 is held, counted, removed and zeroed like any id,
    and a store saved without a place to update is written whole each time."""
    store = VectorStore(4)
    vectors = np.arange(40, dtype=np.float32).reshape(10, 4) + 1
    store.add(np.arange(10), vectors)
    store.save(tmp_path / "f.f32")
    store.save(tmp_path / "g.f32")  # no ``final``: whole again, wherever it maps
    assert np.array_equal(np.fromfile(tmp_path / "g.f32", np.float32).reshape(-1, 4), vectors)
    final, staged = tmp_path / "f.f32", tmp_path / "staged"
    staged.mkdir()

    def update(s: VectorStore) -> None:
        s.save(staged / "f.f32", final)
        for path in staged.iterdir():
            path.replace(tmp_path / path.name)

    loaded = VectorStore.load(final, 4)
    inode = final.stat().st_ino
    loaded.remove(np.array([5]))  # a tenth: in place, id 0 not counted as a hole
    update(loaded)
    assert final.stat().st_ino == inode
    assert np.load(tmp_path / "f.ids.npy").tolist() == [0, 1, 2, 3, 4, -1, 6, 7, 8, 9]
    again = VectorStore.load(final, 4)
    assert again.count == 9 and np.array_equal(again.vectors(np.array([0])), vectors[:1])
    again.remove(np.array([0]))
    again.add(np.array([10]), vectors[:1] * 2)
    update(again)  # two of eleven: past a tenth, written whole
    assert np.load(tmp_path / "f.ids.npy").tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    last = VectorStore.load(final, 4)
    assert last.count == 9 and not last.rows.mask(np.array([0]))[0]
    assert vectors[0].tobytes() not in final.read_bytes()
    last.remove(np.array([1]))
    update(last)
    assert 1 not in np.load(tmp_path / "f.ids.npy").tolist()
    assert vectors[1].tobytes() not in final.read_bytes()


def _matcher_process(path: str, ids: list[int], pipe: Connection) -> None:
    """A matcher in a process of its own: loads the snapshot, says so, and reads the
    templates of ``ids`` each time it is asked."""
    from pathlib import Path

    from biox.gallery.index import VectorIndex

    loaded = VectorIndex.load(Path(path), nprobe=16)
    pipe.send("loaded")
    while pipe.recv() == "read":
        pipe.send(loaded.vectors(np.array(ids)).tobytes())


def test_a_matcher_in_another_process_reads_zeros_once_the_refresh_is_saved(data, tmp_path):
    """The claim of docs/architecture.md, across processes: a matcher that loaded the
    snapshot and has not taken the deletion in yet stops reading the removed template
    when the refresher's save is done, without a restart."""
    import multiprocessing

    ids, vectors = data
    ivf(data).save(tmp_path / "face.faiss")
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    matcher = multiprocessing.get_context("spawn").Process(
        target=_matcher_process, args=(str(tmp_path / "face.faiss"), ids[:3].tolist(), theirs)
    )
    matcher.start()
    try:
        assert ours.poll(60) and ours.recv() == "loaded"
        ours.send("read")
        before = np.frombuffer(ours.recv(), np.float32).reshape(3, DIM)
        assert np.allclose(before, vectors[:3])
        refresher = VectorIndex.load(tmp_path / "face.faiss", nprobe=16)
        refresher.remove(ids[1:2])
        saved_in_place(refresher, tmp_path)
        ours.send("read")
        after = np.frombuffer(ours.recv(), np.float32).reshape(3, DIM)
        assert not after[1].any() and np.allclose(after[[0, 2]], vectors[[0, 2]])
        ours.send("stop")
    finally:
        matcher.join(30)
        if matcher.is_alive():
            matcher.kill()
