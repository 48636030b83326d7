from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from biox.gallery import gallery as gallery_mod
from biox.gallery import index as index_mod
from biox.gallery.calibration import LikelihoodRatio, ScoreMap
from biox.gallery.fusion import MeanRule
from biox.gallery.gallery import Gallery, Hit, Probe
from biox.gallery.index import IrisIndex, VectorIndex, nprobe_for
from biox.gallery.templates import rotate_iris, vector
from biox.sim import galleries, synth
from biox.wire.biometrics import FACE, FINGER, IRIS
from biox.wire.errors import PermanentError, Reason
from biox.wire.messages import Biometrics, Face, Fingerprint, Iris

SEED = 11
SIZE = 2000


def build(kind: str = "flat") -> tuple[Gallery, list[int]]:
    gallery = Gallery(kind, nlist=32, nprobe=8)
    batches = list(galleries.enrolments(SEED, "mx", SIZE))
    if kind == "ivf":
        faces = np.concatenate([b.face for b in batches])
        fingers = np.concatenate([b.fingers[2][1] for b in batches])
        gallery.train(faces, fingers)
    people = []
    for b in batches:
        galleries.add_to(gallery, b)
        people.extend(b.persons.tolist())
    return gallery, people


@pytest.fixture(scope="module")
def flat() -> tuple[Gallery, list[int]]:
    return build("flat")


def probes_for(people: list[int], quality: int = 70) -> list[Probe]:
    return [
        Probe.from_biometrics(synth.capture(SEED, p, context=5, quality=quality)) for p in people
    ]


def test_mated_probes_find_their_identity_first(flat):
    gallery, people = flat
    chosen = people[:: len(people) // 20][:20]
    hits = gallery.search(probes_for(chosen), k=10, top=3)
    assert [h[0].record_id for h in hits] == chosen
    assert min(h[0].fused for h in hits) > 0.55
    assert all(h[1].fused < 0.3 for h in hits)


def test_non_mated_probes_score_low(flat):
    gallery, _ = flat
    rng = np.random.default_rng(3)
    strangers = [synth.stranger(SEED, {"mx": SIZE}, rng) for _ in range(10)]
    hits = gallery.search(probes_for(strangers), k=10, top=1)
    assert max(h[0].fused for h in hits) < 0.3


def compared_alone(gallery: Gallery, probe: Probe, ids: np.ndarray) -> dict[str, np.ndarray]:
    """One probe's element scores as each index gives them, one probe at a time."""
    raw = {}

    def spread(found: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.full(len(ids), np.nan, np.float32)
        out[np.searchsorted(ids, found)] = values
        return out

    if probe.face is not None:
        raw["face"] = spread(*gallery.face.scores(probe.face, ids))
    for pos, v in probe.fingers.items():
        raw[f"finger.{pos}"] = spread(*gallery.fingers[pos].scores(v, ids))
    for eye, (code, mask) in probe.irises.items():
        found, hd = gallery.irises[eye].scores(code, mask, ids)
        raw[f"iris.{eye}"] = spread(found, 1.0 - hd)
    return raw


def alone(gallery: Gallery, probe: Probe, k: int, top: int) -> list[Hit]:
    """One probe ranked as the matcher ranked each probe before batches were fused at
    once: its own candidates, each element scored by the index, fused, sorted stably."""
    ids = np.fromiter(sorted(gallery.candidates([probe], k)[0].tolist()), np.int64)
    if not len(ids):
        return []
    raw = compared_alone(gallery, probe, ids)
    fused = gallery.scorer(raw)
    return [
        Hit(
            int(ids[j]),
            round(float(fused.score[j]), 4),
            {m: round(float(s[j]), 4) for m, s in fused.scores.items() if not np.isnan(s[j])},
            None
            if fused.evidence is None
            else {
                m: round(float(e[j]), 3) for m, e in fused.evidence.items() if not np.isnan(e[j])
            },
        )
        for j in np.argsort(-fused.score, kind="stable")[:top]
    ]


@pytest.mark.parametrize("scorer", ["mean", "calibrated"])
def test_a_batch_ranks_each_probe_exactly_as_that_probe_alone(flat, scorer):
    """The batch is compared and fused at once; each probe's hits, scores and evidence
    must be bit for bit what it gets on its own, whatever else the batch holds: probes
    with a face only, irises only, fingers in another order, nothing at all, strangers."""
    gallery, people = flat
    rng = np.random.default_rng(5)
    mates = probes_for(people[3:90:3], quality=55)
    strangers = probes_for([synth.stranger(SEED, {"mx": SIZE}, rng) for _ in range(4)])
    eyes = next(p for p in mates if len(p.irises) == 2)
    tenprint = next(p for p in mates if len(p.fingers) > 2)
    face_only = Probe(face=mates[0].face)
    iris_only = Probe(irises=eyes.irises)
    reversed_fingers = Probe(
        face=tenprint.face, fingers=dict(reversed(list(tenprint.fingers.items())))
    )
    batch = [mates[0], face_only, Probe(), *strangers, iris_only, reversed_fingers, *mates[1:]]
    if scorer == "calibrated":
        gallery.scorer = LikelihoodRatio(
            {"face": ScoreMap([0.2, 0.8], [-3.0, 5.0]), "finger": ScoreMap([0.3, 0.9], [-2.0, 4.0])}
        )  # no map for the iris: it is evidence of nothing
    try:
        together = gallery.search(batch, k=10, top=3)
        assert together == [alone(gallery, p, 10, 3) for p in batch]
        assert together[2] == [] and len(together[0]) == 3
        assert together[0][0].record_id == people[3]
        if scorer == "calibrated":
            assert set(together[0][0].evidence or {}) == {"face", "finger"}
        one = gallery.search(batch, k=10, top=1)
        assert one == [hits[:1] for hits in together]
        assert gallery.search([Probe(), mates[0]], k=10, top=3) == [[], together[0]]
        assert {type(h.record_id) for hits in together for h in hits} == {int}
    finally:
        gallery.scorer = MeanRule()


def test_compare_gives_each_element_score_the_index_gives(flat):
    """``compare`` (what the evaluation and the calibration read) is the batch's code for
    one probe: each element's score for every candidate, NaN where one side lacks it."""
    gallery, people = flat
    probes = probes_for(people[:60:4])
    assert any(p.irises for p in probes) and any(len(p.fingers) > 2 for p in probes)
    absent = min(set(range(1, SIZE)) - set(people))  # an id the gallery does not hold
    for probe in [*probes, Probe(face=probes[0].face)]:
        chosen = [*gallery.candidates([probe], 10)[0].tolist(), people[0], absent, max(people)]
        ids = np.unique(chosen)
        got, want = gallery.compare(probe, ids), compared_alone(gallery, probe, ids)
        assert list(got) == list(want)
        for element, scores in want.items():
            np.testing.assert_array_equal(got[element], scores)
        assert np.isnan(got["face"][np.searchsorted(ids, absent)])
        assert not np.isnan(got["face"][[0, -1]]).any()  # the first and the last are held


def test_identity_zero_is_a_candidate_like_any_other(flat):
    """FAISS pads a short answer with -1, which is dropped; id 0 is a real identity."""
    _, people = flat
    two = probes_for(people[:2])
    gallery = Gallery("flat")
    gallery.enroll([0, 1], two)
    assert [[h.record_id for h in hits] for hits in gallery.search(two, k=10, top=3)] == [
        [0, 1],
        [1, 0],
    ]


def test_remove_takes_identities_out_of_every_index(flat):
    gallery, people = build("flat")
    target = people[7]
    gallery.remove([target])
    hits = gallery.search(probes_for([target]), k=10, top=3)
    assert target not in [h.record_id for h in hits[0]]


def test_save_and_load_give_the_same_answers(flat, tmp_path):
    gallery, people = flat
    chosen = people[:5]
    before = gallery.search(probes_for(chosen))
    gallery.save(tmp_path)
    after = Gallery.load(tmp_path).search(probes_for(chosen))
    assert [[h.record_id for h in x] for x in before] == [[h.record_id for h in x] for x in after]


def test_a_snapshot_is_on_disk_file_by_file_before_its_manifest_is_in_place(tmp_path, monkeypatch):
    # after a power loss the manifest must not name files the disk never got, and a 1 M
    # gallery's pages written back half a minute later stalled the broker's syncs
    gallery, _ = build("ivf")
    order: list[tuple[str, str, bool]] = []  # (name, its folder, manifest in place yet)
    synced = gallery_mod.synced

    def noting(path):
        order.append((path.name, path.parent.name, (tmp_path / "manifest.json").exists()))
        synced(path)

    moved: list[str] = []
    replace = Path.replace

    def moving(self, target):
        moved.append(self.name)
        return replace(self, target)

    monkeypatch.setattr(gallery_mod, "synced", noting)
    monkeypatch.setattr(Path, "replace", moving)
    gallery.save(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert moved[-1] == "manifest.json" and sorted(moved) == sorted(written)  # manifest last
    assert "face.vectors.f32" in written and "manifest.json" in written
    files, last = order[:-1], order[-1]
    # every file of the snapshot, synced where it was staged, before any of them moved in
    assert sorted(name for name, _, _ in files) == sorted(written)
    assert {(folder, placed) for _, folder, placed in files} == {(".staged", False)}
    assert last == (tmp_path.name, tmp_path.parent.name, True)  # then the moves themselves
    assert Gallery.load(tmp_path, nprobe=8).size == gallery.size


def test_ivf_index_supports_removal_and_reload(tmp_path):
    gallery, people = build("ivf")
    assert gallery.face.kind == "ivf"
    chosen = people[:10]
    assert [h[0].record_id for h in gallery.search(probes_for(chosen))] == chosen
    gallery.remove(chosen[:1])
    gallery.save(tmp_path)
    loaded = Gallery.load(tmp_path, nprobe=8)
    assert loaded.face.kind == "ivf"
    hits = loaded.search(probes_for(chosen))
    assert hits[0][0].record_id != chosen[0]
    assert [h[0].record_id for h in hits[1:]] == chosen[1:]


def test_codes_hold_eight_dimensions_a_sub_vector_and_finer_ones_still_load(tmp_path, monkeypatch):
    gallery, people = build("ivf")
    indexes = [gallery.face, *gallery.fingers.values()]
    # 4 bits per sub-vector of 8 dimensions: 32 bytes a face, 12 a finger
    assert {(ix.dim, ix.index.pq.M, ix.index.code_size) for ix in indexes} == {
        (FACE.dim, 64, 32),
        (FINGER.dim, 24, 12),
    }
    # past 1 M identities (more than 4 000 lists) the finer codes, not yet measured coarser
    assert VectorIndex(FACE.dim, "ivf", 4001).index.pq.M == 128
    assert VectorIndex(FACE.dim, "ivf", 4000).index.pq.M == 64
    # never fewer than the finger's 24 sub-vectors: a small template keeps 4 dimensions each
    assert VectorIndex(184, "ivf", 64).index.pq.M == 46
    assert VectorIndex(32, "ivf", 16).index.pq.M == 8
    assert VectorIndex(196, "ivf", 64).index.pq.M == 49  # 8 does not divide it; 4 does
    # a snapshot written with 4 dimensions a sub-vector (before 2026-12-05) is read as it is
    monkeypatch.setattr(index_mod, "PQ_DIMS", 4)
    older, _ = build("ivf")
    assert older.face.index.pq.M == 128  # 512 dimensions / 4
    older.save(tmp_path)
    monkeypatch.undo()
    loaded = Gallery.load(tmp_path, nprobe=8)
    assert loaded.face.index.pq.M == 128
    chosen = people[:10]
    assert [h[0].record_id for h in loaded.search(probes_for(chosen))] == chosen


def test_the_lists_scanned_change_on_a_built_gallery(flat):
    gallery, people = build("ivf")
    indexes = [gallery.face, *gallery.fingers.values()]
    gallery.scan(1)
    assert gallery.nprobe == 1
    assert {(ix.nprobe, ix.index.nprobe) for ix in indexes} == {(1, 1)}
    gallery.remove(people[-1:])  # a tombstone: the search passes its own parameters
    assert gallery.face._params().nprobe == 1
    gallery.scan(0)  # the default share, at least 16 lists
    assert {(ix.nprobe, ix.index.nprobe) for ix in indexes} == {(16, 16)}
    gallery.scan(32)  # every list: the same first candidates as exact search
    chosen = people[:: len(people) // 20][:20]
    exact = [h[0].record_id for h in flat[0].search(probes_for(chosen, quality=45))]
    assert [h[0].record_id for h in gallery.search(probes_for(chosen, quality=45))] == exact
    flat[0].scan(1)  # exact search has no lists: nothing changes
    assert [h[0].record_id for h in flat[0].search(probes_for(chosen, quality=45))] == exact
    flat[0].scan(8)  # the module's gallery as it was built


@pytest.mark.parametrize(
    ("nlist", "configured", "lists"),
    [
        (1264, 0, 152),  # 100 000 identities: 12 %, evaluated
        (4000, 0, 480),  # 1 M: 12 %, evaluated
        (4001, 0, 640),  # beyond: 16 %, the width measured at 10 M
        (12649, 0, 2024),  # 10 M
        (64, 0, 16),  # at least 16 lists
        (10, 0, 10),  # and never more than there are
        (4000, 7, 7),  # BIOX_IVF_NPROBE wins
    ],
)
def test_the_share_of_lists_scanned_is_the_evaluated_one(nlist, configured, lists):
    assert nprobe_for(nlist, configured) == lists


def test_vector_index_scores_only_ids_it_holds():
    ix = VectorIndex(4)
    ix.add(np.array([3, 9]), np.eye(4, dtype=np.float32)[:2])
    ids, scores = ix.scores(np.array([1, 0, 0, 0], np.float32), np.array([3, 9, 42]))
    assert ids.tolist() == [3, 9]
    assert np.allclose(scores, [1.0, 0.0])


def test_hashed_ids_of_enrolled_query_data_live_beside_dense_ones(tmp_path):
    """Enrolled query data has 62-bit ids; they are found, removed and reloaded like the
    dense record numbers of bulk enrolment."""
    big = (1 << 61) + 12345
    ix = VectorIndex(4)
    ix.add(np.array([3, big]), np.eye(4, dtype=np.float32)[:2])
    ids, scores = ix.scores(np.array([0, 1, 0, 0], np.float32), np.array([3, big, big + 1]))
    assert ids.tolist() == [3, big] and np.allclose(scores, [0.0, 1.0])
    ix.save(tmp_path / "x.faiss")
    again = VectorIndex.load(tmp_path / "x.faiss")
    assert again.scores(np.array([0, 1, 0, 0], np.float32), np.array([big]))[0].tolist() == [big]
    again.remove(np.array([big]))
    assert again.scores(np.array([0, 1, 0, 0], np.float32), np.array([big]))[0].tolist() == []


def test_iris_match_survives_rotation():
    rng = np.random.default_rng(0)
    code = rng.integers(0, 256, IRIS.nbytes, dtype=np.uint8)
    mask = np.full(IRIS.nbytes, 255, np.uint8)
    other = rng.integers(0, 256, IRIS.nbytes, dtype=np.uint8)
    ix = IrisIndex()
    ix.add(np.array([1, 2]), np.stack([code, other]), np.stack([mask, mask]))
    rotated = rotate_iris(code, 5)
    ids, hd = ix.scores(rotated, mask, ix.candidates(rotated, 5))
    assert ids.tolist()[int(np.argmin(hd))] == 1
    assert float(hd.min()) == 0.0
    assert float(hd.max()) > 0.4


@pytest.mark.parametrize(
    ("template", "algorithm", "reason"),
    [
        (np.ones(10, "<f4").tobytes(), "biox-face-512/1", Reason.template_size),
        (np.full(512, np.nan, "<f4").tobytes(), "biox-face-512/1", Reason.template_invalid),
        (np.full(512, np.inf, "<f4").tobytes(), "biox-face-512/1", Reason.template_invalid),
        (np.zeros(512, "<f4").tobytes(), "biox-face-512/1", Reason.template_invalid),
        (np.ones(512, "<f4").tobytes(), "acme-face/9", Reason.unknown_algorithm),
        (np.ones(192, "<f4").tobytes(), "biox-finger-192/1", Reason.unknown_algorithm),
    ],
)
def test_bad_templates_are_refused_with_a_specific_reason(template, algorithm, reason):
    with pytest.raises(PermanentError) as info:
        Probe.from_biometrics(Biometrics(face=Face(algorithm=algorithm, template=template)))
    assert info.value.reason is reason


def test_vectors_are_l2_normalised():
    v = vector("biox-face-512/1", "face", (np.arange(512, dtype="<f4") + 1).tobytes())
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def _iris(code: bytes, mask: bytes, algorithm: str = "biox-iris-2048/1") -> Biometrics:
    return Biometrics(irises=[Iris(eye="left", algorithm=algorithm, code=code, mask=mask)])


FULL = bytes([255]) * IRIS.nbytes


@pytest.mark.parametrize(
    ("code", "mask", "algorithm", "reason", "says"),
    [
        (FULL, bytes(IRIS.nbytes), "biox-iris-2048/1", Reason.template_invalid, "no valid bit"),
        (FULL[:-1], FULL, "biox-iris-2048/1", Reason.template_size, "iris code"),
        (FULL + b"\0", FULL, "biox-iris-2048/1", Reason.template_size, "iris code"),
        (FULL, FULL[:-1], "biox-iris-2048/1", Reason.template_size, "iris mask"),
        (FULL, FULL, "biox-face-512/1", Reason.unknown_algorithm, "iris algorithm"),
    ],
)
def test_bad_iris_codes_are_refused_with_a_specific_reason(code, mask, algorithm, reason, says):
    with pytest.raises(PermanentError) as info:
        Probe.from_biometrics(_iris(code, mask, algorithm))
    assert info.value.reason is reason
    assert says in str(info.value)


def test_an_iris_mask_with_a_single_valid_bit_is_usable():
    mask = bytes(IRIS.nbytes - 1) + b"\x01"
    probe = Probe.from_biometrics(_iris(FULL, mask))
    code, kept = probe.irises["left"]
    assert code.tobytes() == FULL and kept.tobytes() == mask


def test_a_finger_template_names_its_position_in_the_probe():
    template = np.ones(192, "<f4").tobytes()
    bio = Biometrics(
        fingerprints=[Fingerprint(position=7, algorithm="biox-finger-192/1", template=template)]
    )
    probe = Probe.from_biometrics(bio)
    assert list(probe.fingers) == [7] and probe.face is None
    assert abs(float(np.linalg.norm(probe.fingers[7])) - 1.0) < 1e-5


def test_algorithm_byte_lengths_are_what_the_contract_says():
    assert (FACE.nbytes, FINGER.nbytes, IRIS.nbytes) == (2048, 768, 256)


@pytest.mark.parametrize(
    ("algorithm", "modality", "data", "says"),
    [
        ("acme/1", "face", b"", "face algorithm 'acme/1'"),
        ("biox-face-512/1", "finger", b"", "finger algorithm 'biox-face-512/1'"),
        (
            "biox-face-512/1",
            "face",
            bytes(8),
            "face biox-face-512/1: 8 bytes, expected 2048 (512 x float32)",
        ),
        (
            "biox-face-512/1",
            "face",
            np.full(512, np.nan, "<f4").tobytes(),
            "face biox-face-512/1: NaN or infinite value",
        ),
        ("biox-finger-192/1", "finger", bytes(768), "finger biox-finger-192/1: all-zero vector"),
        (
            "biox-finger-192/1",
            "finger",
            np.full(192, 1e-20, "<f4").tobytes(),
            "finger biox-finger-192/1: values too small (L2 norm 1.4e-19, at least 1e-12 needed)",
        ),
    ],
)
def test_each_refused_template_says_what_is_wrong_with_it(algorithm, modality, data, says):
    from biox.gallery.templates import vector as read_vector

    with pytest.raises(PermanentError) as info:
        read_vector(algorithm, modality, data)
    assert info.value.detail == says


@pytest.mark.parametrize(
    ("code", "mask", "says"),
    [
        (FULL[:-2], FULL, "iris code biox-iris-2048/1: 254 bytes, expected 256"),
        (FULL, FULL[:-3], "iris mask biox-iris-2048/1: 253 bytes, expected 256"),
        (FULL, bytes(IRIS.nbytes), "iris mask marks no valid bit"),
    ],
)
def test_each_refused_iris_code_says_what_is_wrong_with_it(code, mask, says):
    from biox.gallery.templates import iris_code

    with pytest.raises(PermanentError) as info:
        iris_code("biox-iris-2048/1", code, mask)
    assert info.value.detail == says
    assert info.value.reason in (Reason.template_size, Reason.template_invalid)


def test_a_tiny_but_nonzero_vector_is_still_a_vector():
    from biox.gallery.templates import vector as read_vector

    v = np.zeros(512, "<f4")
    v[3] = 1e-10
    assert read_vector("biox-face-512/1", "face", v.tobytes())[3] == pytest.approx(1.0)
    assert read_vector("biox-face-512/1", "face", v.tobytes()).dtype == np.float32


def test_rotating_an_iris_shifts_each_radial_band_on_its_own():
    from biox.wire.biometrics import IRIS_COLS, IRIS_ROWS

    bits = np.zeros((IRIS_ROWS, IRIS_COLS), np.uint8)
    bits[0, IRIS_COLS - 1] = 1  # last sample of the first band
    bits[1, 0] = 1
    rotated = np.unpackbits(rotate_iris(np.packbits(bits.reshape(-1)), 1)).reshape(
        IRIS_ROWS, IRIS_COLS
    )
    assert rotated[0, 0] == 1 and rotated[1, 1] == 1  # wraps within its band, not the next
    assert rotated.sum() == 2
    assert rotate_iris(np.packbits(bits.reshape(-1)), 1).shape == (IRIS.nbytes,)


def test_template_bytes_are_little_endian_float32_whatever_the_input():
    from biox.gallery.templates import vector_bytes

    data = vector_bytes(np.array([1.0, -2.5], dtype=np.float64))
    assert data == np.array([1.0, -2.5], dtype="<f4").tobytes() and len(data) == 8


def test_a_gallery_larger_than_half_of_memory_reads_its_candidates_ahead(tmp_path, monkeypatch):
    """Read-ahead costs a system call per row already in memory, so it is on only where
    most templates will not be (gallery.load): 10 M identities, 36 GB, on 24 GB."""
    from biox.gallery import gallery as gallery_module

    gallery, people = build("ivf")
    gallery.save(tmp_path)
    mapped = sum(s.base.nbytes for s in Gallery.load(tmp_path).stores())
    for memory, expected in ((2 * mapped + 2, False), (2 * mapped - 2, True)):
        monkeypatch.setattr(gallery_module, "physical_memory", lambda m=memory: m)
        loaded = Gallery.load(tmp_path, nprobe=8)
        assert {s.read_ahead for s in loaded.stores()} == {expected}
        hits = loaded.search(probes_for(people[:5]))
        assert [h[0].record_id for h in hits] == people[:5]


def test_memory_for_read_ahead_is_a_containers_limit_where_it_has_one(tmp_path, monkeypatch):
    """A matcher in a container limited below the machine's memory has only the limit's
    page cache: a gallery larger than half of it must read ahead there too."""
    from biox.gallery import gallery as gallery_module

    monkeypatch.setattr(gallery_module, "CGROUP_MEMORY", tmp_path / "absent")
    machine = gallery_module.physical_memory()
    assert machine > 1 << 30
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(gallery_module, "CGROUP_MEMORY", limit)
    for written, expected in (("1073741824\n", 1 << 30), ("max\n", machine)):
        limit.write_text(written)
        assert gallery_module.physical_memory() == expected
    limit.write_text(f"{2 * machine}\n")  # a limit above the machine's memory is no limit
    assert gallery_module.physical_memory() == machine


def _vector_as_before(data: bytes) -> np.ndarray:
    """The reading of a template before it took one pass (2026-12-06): a copy, a finiteness
    pass, ``np.linalg.norm``, the division. The oracle for the values it did accept."""
    vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
    assert np.all(np.isfinite(vec))
    norm = float(np.linalg.norm(vec))
    assert norm >= 1e-12
    return vec / norm


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 1.0, 37.5, 1e6, 1e15])
def test_a_template_reads_bit_for_bit_as_it_did_before_it_took_one_pass(scale):
    from biox.gallery.templates import vector as read_vector

    rng = np.random.default_rng(int(scale * 1000) % 2**32)
    for dim, algorithm, modality in (
        (512, "biox-face-512/1", "face"),
        (192, "biox-finger-192/1", "finger"),
    ):
        for _ in range(20):
            data = (rng.standard_normal(dim) * scale).astype("<f4").tobytes()
            got = read_vector(algorithm, modality, data)
            assert got.dtype == np.float32 and got.flags.writeable
            assert got.tobytes() == _vector_as_before(data).tobytes()


@pytest.mark.parametrize("value", [1e20, -3e25, 3.4e38])
def test_a_template_of_finite_values_too_large_to_square_in_float32_is_still_normalised(value):
    """Its float32 sum of squares is infinite: it was divided by infinity into an all-zero
    vector that matched nothing, and no one was told. Now its norm is taken in float64."""
    from biox.gallery.templates import vector as read_vector

    v = np.ones(512, "<f4") * np.float32(value)
    v[7] = np.float32(value) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warning in a worker's output
        got = read_vector("biox-face-512/1", "face", v.tobytes())
    assert got.dtype == np.float32
    assert float(np.linalg.norm(got.astype(np.float64))) == pytest.approx(1.0, abs=1e-6)
    expected = v.astype(np.float64) / np.linalg.norm(v.astype(np.float64))
    assert np.allclose(got, expected, atol=1e-7)


@pytest.mark.parametrize(
    ("poison", "says"),
    [(np.nan, "NaN or infinite value"), (np.inf, "NaN or infinite value"), (-np.inf, "NaN")],
)
def test_one_bad_value_among_good_ones_is_refused_whatever_the_others(poison, says):
    from biox.gallery.templates import vector as read_vector

    for others in (1.0, 1e20, 0.0):  # a finite sum otherwise, an overflowing one, none
        v = np.full(192, others, "<f4")
        v[101] = poison
        with warnings.catch_warnings(), pytest.raises(PermanentError) as info:
            warnings.simplefilter("error")  # refused, not warned about in a worker's output
            read_vector("biox-finger-192/1", "finger", v.tobytes())
        assert info.value.reason is Reason.template_invalid and says in info.value.detail


def test_intake_checks_a_template_as_the_matcher_reads_it():
    """``check`` (intake) and ``vector`` (the matcher) share one reading: what one refuses
    the other refuses, with the same reason and words."""
    from biox.gallery.templates import check
    from biox.gallery.templates import vector as read_vector

    for data in (
        np.zeros(512, "<f4").tobytes(),
        np.full(512, np.nan, "<f4").tobytes(),
        bytes(10),
        np.full(512, 1e-30, "<f4").tobytes(),
    ):
        with pytest.raises(PermanentError) as by_matcher:
            read_vector("biox-face-512/1", "face", data)
        with pytest.raises(PermanentError) as by_intake:
            check(Biometrics(face=Face(algorithm="biox-face-512/1", template=data)))
        assert (by_intake.value.reason, by_intake.value.detail) == (
            by_matcher.value.reason,
            by_matcher.value.detail,
        )
    check(
        Biometrics(
            face=Face(algorithm="biox-face-512/1", template=np.full(512, 1e20, "<f4").tobytes())
        )
    )
