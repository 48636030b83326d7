"""The snapshot a matcher starts from (gallery/snapshot.py): enrolled templates folded in,
tombstoned records taken out, and a mark that lets a fresh matcher read exactly what the
snapshot lacks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgpack
import numpy as np
import pytest
from sqlmodel import select
from structlog.testing import capture_logs

from biox.agreement.ledgers import Tombstone
from biox.database import session_for
from biox.gallery import snapshot
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.shards import Shard
from biox.gallery.snapshot import Mark
from biox.handlers.matcher import MatcherHandler, load
from biox.settings import Settings
from biox.sim import synth
from biox.store import EnrolledTemplates, Record
from tests.unit.test_matcher import POLICIES, REGISTRY

WHEN = datetime(2026, 1, 5, tzinfo=UTC)  # long before any look-back window


def templates(person: int) -> bytes:
    bio = synth.capture(3, person, context=1)
    return msgpack.packb(bio.model_dump(mode="python"), use_bin_type=True)


def enrol(db: str, record_ids: list[int], when: datetime = WHEN) -> list[int]:
    with session_for(db) as s:
        rows = [
            EnrolledTemplates(record_id=r, biometrics=templates(r), enrolled_at=when)
            for r in record_ids
        ]
        s.add_all(rows)
        s.commit()
        return [r.seq for r in rows if r.seq is not None]


def probe(person: int) -> Probe:
    return Probe.from_biometrics(synth.capture(3, person, context=7))


def test_the_mark_names_the_rows_it_did_not_see_below_it():
    mark = Mark().after([1, 2, 5])
    assert mark == Mark(5, (3, 4))
    assert mark.after([3, 9]) == Mark(9, (4, 6, 7, 8))
    assert mark.after([]) is mark
    far = Mark().after([1, snapshot.HOLES_KEPT + 5])  # holes that old were rolled back
    assert far.holes == tuple(range(6, snapshot.HOLES_KEPT + 5))


def test_an_import_starts_the_snapshot_and_a_fresh_matcher_reads_nothing_again(tmp_path):
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    enrol(db, [11, 12, 13])
    with session_for(db) as s:
        assert snapshot.refresh(s, directory, settings) is None  # the schedule starts none
        done = snapshot.refresh(s, directory, settings, create=True)
    assert done is not None and (done.added, done.mark) == (3, Mark(3))
    assert snapshot.mark_of(directory) == Mark(3)
    loaded = Gallery.load(directory)
    assert loaded.size == 3
    matcher = MatcherHandler(
        "mx", REGISTRY, loaded, settings, POLICIES.of("mx"), snapshot.mark_of(directory)
    )
    enrol(db, [14])
    with session_for(db) as s:
        assert matcher.catch_up(s) == 1  # only the row enrolled since
    assert matcher.gallery.size == 4
    assert [h[0].record_id for h in matcher.gallery.search([probe(14)])] == [14]


def test_rows_read_again_within_the_look_back_are_not_added_twice(tmp_path):
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    enrol(db, [21, 22], when=datetime.now(UTC) - timedelta(seconds=5))
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
    matcher = MatcherHandler(
        "mx", REGISTRY, Gallery.load(directory), settings, POLICIES.of("mx"), Mark(2)
    )
    with session_for(db) as s:
        assert matcher.catch_up(s) == 0  # recent, so read again, but already held
    assert matcher.gallery.size == 2


def test_a_refresh_takes_tombstoned_records_out_of_the_files(tmp_path):
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path)
    enrol(db, [31, 32, 33])
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
        s.add(Tombstone(record_id=32, cause="deletion"))
        s.commit()
        enrol(db, [34])
        done = snapshot.refresh(s, directory, settings)
        assert done is not None and (done.added, done.removed) == (1, 1)
        assert done.tombstone_seq == s.exec(select(Tombstone.seq)).one()
        again = snapshot.refresh(s, directory, settings)  # nothing new: nothing written
        assert again is not None and (again.added, again.removed) == (0, 0)
    loaded = Gallery.load(directory)
    held = loaded.holds(np.array([31, 32, 33, 34]))
    assert held.tolist() == [True, False, True, True]
    assert Gallery.manifest(directory)["enrolled_seq"] == 4


def test_a_row_the_snapshot_missed_below_its_mark_is_still_read(tmp_path):
    """A transaction numbered 2 commits after the snapshot folded 1 and 3: the mark keeps
    2 as a hole, and a fresh matcher reads it however late it came."""
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    enrol(db, [41, 42, 43])
    with session_for(db) as s:
        late = s.exec(select(EnrolledTemplates).where(EnrolledTemplates.seq == 2)).one()
        kept = (late.record_id, late.biometrics)
        s.delete(late)
        s.commit()
        done = snapshot.refresh(s, directory, settings, create=True)
        assert done is not None and done.mark == Mark(3, (2,))
        s.add(EnrolledTemplates(seq=2, record_id=kept[0], biometrics=kept[1], enrolled_at=WHEN))
        s.commit()
    matcher = MatcherHandler(
        "mx", REGISTRY, Gallery.load(directory), settings, POLICIES.of("mx"), Mark(3, (2,))
    )
    with session_for(db) as s:
        assert matcher.catch_up(s) == 1
        assert snapshot.refresh(s, directory, settings).mark == Mark(3)
    assert matcher.gallery.holds(np.array([42])).tolist() == [True]


def test_an_ivf_snapshot_is_trained_on_the_first_rows_it_folds(tmp_path):
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf")
    enrol(db, list(range(1, 301)))
    with session_for(db) as s:
        done = snapshot.refresh(s, directory, settings, create=True)
    assert done is not None and done.added == 300
    loaded = Gallery.load(directory)
    assert loaded.kind == "ivf" and loaded.size == 300
    assert [h[0].record_id for h in loaded.search([probe(7), probe(250)])] == [7, 250]


def test_a_snapshot_written_before_the_marks_is_read_from_the_start(tmp_path):
    """A manifest without ``enrolled_seq`` (a snapshot from before issue 23) lacks every
    enrolled row; one with holes keeps them as numbers."""
    import json

    directory = tmp_path / "gallery"
    Gallery().save(directory, 0, 9, [3, 4])
    assert snapshot.mark_of(directory) == Mark(9, (3, 4))
    manifest = json.loads((directory / "manifest.json").read_text())
    for key in ("enrolled_seq", "enrolled_holes"):
        manifest.pop(key)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert snapshot.mark_of(directory) == Mark(0, ())
    assert snapshot.mark_of(tmp_path / "none") == Mark()


def test_nothing_to_enrol_adds_nothing():
    gallery = Gallery()
    assert snapshot.enroll_new(gallery, [], []) == 0 and gallery.size == 0
    assert snapshot.enroll_new(gallery, [5], [probe(5)]) == 1
    assert snapshot.enroll_new(gallery, [5, 6], [probe(5), probe(6)]) == 1  # 5 held already


def test_a_refresh_says_what_it_folded_and_took_out(tmp_path):
    from structlog.testing import capture_logs

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path)
    enrol(db, [21, 22, 23])
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
        s.add(Tombstone(record_id=22, cause="deletion notice"))
        s.commit()
    enrol(db, [24])
    with session_for(db) as s, capture_logs() as logs:
        done = snapshot.refresh(s, directory, settings)
    assert done is not None and (done.added, done.removed) == (1, 1)
    [event] = [e for e in logs if e["event"] == "snapshot_refreshed"]
    assert (event["added"], event["removed"], event["size"]) == (1, 1, 3)
    with session_for(db) as s, capture_logs() as logs:  # nothing new: nothing written
        again = snapshot.refresh(s, directory, settings)
    assert again is not None and (again.added, again.removed) == (0, 0)
    assert not [e for e in logs if e["event"] == "snapshot_refreshed"]


def test_a_new_ivf_snapshot_trains_once_its_sample_is_in_and_adds_the_rest(tmp_path, monkeypatch):
    """Rows come a chunk at a time: the first chunks are held until the training sample
    is complete, the index is trained on them, and every later chunk is added as read."""
    from biox.gallery.index import VectorIndex

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf")
    enrol(db, list(range(1, 301)))
    read = snapshot.chunks
    monkeypatch.setattr(snapshot, "chunks", lambda s, seqs: read(s, seqs, size=40))
    monkeypatch.setattr(VectorIndex, "nlist_for", staticmethod(lambda n: 2))  # sample: 100
    trained: list[int] = []
    train = snapshot._train
    monkeypatch.setattr(snapshot, "_train", lambda g, p: trained.append(len(p)) or train(g, p))
    with session_for(db) as s:
        done = snapshot.refresh(s, directory, settings, create=True)
    assert trained == [120] and done is not None and done.added == 300
    loaded = Gallery.load(directory)
    assert loaded.size == 300 and loaded.face.trained
    assert [h[0].record_id for h in loaded.search([probe(3), probe(299)])] == [3, 299]


def test_a_new_ivf_snapshot_with_unreadable_rows_trains_on_the_rows_it_could_read(tmp_path):
    """Rows that cannot be read leave the sample short of its size: the index is trained on
    what was read once every row is in, and those are added; the bad rows are named."""
    from structlog.testing import capture_logs

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf")
    enrol(db, list(range(1, 201)))
    with session_for(db) as s:
        s.add(EnrolledTemplates(record_id=900, biometrics=b"\xc1", enrolled_at=WHEN))
        s.commit()
    with session_for(db) as s, capture_logs() as logs:
        done = snapshot.refresh(s, directory, settings, create=True)
    assert done is not None and done.added == 200
    assert [e["record_id"] for e in logs if e["event"] == "enrolment_unreadable"] == [900]
    loaded = Gallery.load(directory)
    assert loaded.size == 200 and loaded.face.trained and not loaded.holds(np.array([900]))[0]
    assert [h[0].record_id for h in loaded.search([probe(5), probe(200)])] == [5, 200]


def every_file(directory) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_a_refresh_updates_the_snapshot_in_place_and_leaves_no_deleted_template_on_disk(
    tmp_path,
):
    """An auditor's check (issue 20, §22-24): once the refresh after a deletion is done,
    no file of the snapshot holds any byte pattern of the deleted record's templates, and
    the refresh wrote the templates it added, not the gallery again."""
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf")
    enrol(db, list(range(1, 301)))
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
    faces = directory / "face.vectors.f32"
    inode, size = faces.stat().st_ino, faces.stat().st_size
    loaded = Gallery.load(directory)
    deleted = [
        ix.vectors(np.array([77])).tobytes()
        for ix in (loaded.face, *loaded.fingers.values())
        if ix.present.mask(np.array([77]))[0]
    ]
    assert len(deleted) == 3 and all(d in every_file(directory) for d in deleted)
    with session_for(db) as s:
        s.add(Tombstone(record_id=77, cause="deletion"))
        s.commit()
        enrol(db, [301, 302])
        done = snapshot.refresh(s, directory, settings)
    assert done is not None and (done.added, done.removed) == (2, 1)
    assert faces.stat().st_ino == inode and faces.stat().st_size == size + 2 * 512 * 4
    on_disk = every_file(directory)
    assert not any(d in on_disk for d in deleted)
    again = Gallery.load(directory)
    assert again.size == 301 and not again.holds(np.array([77]))[0]
    assert [h[0].record_id for h in again.search([probe(302), probe(5)])] == [302, 5]


def test_a_save_cut_short_leaves_nothing_the_next_save_moves(tmp_path):
    """A staged file left by a save that stopped half way (here a whole vectors file) is
    not moved over the snapshot by the next save, which updates that file in place."""
    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf")
    enrol(db, list(range(1, 301)))
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
    (directory / ".staged").mkdir()
    (directory / ".staged" / "face.vectors.f32").write_bytes(b"\0" * 2048)
    enrol(db, [301])
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings)
    assert not (directory / ".staged").exists()
    loaded = Gallery.load(directory)
    assert loaded.size == 301
    assert [h[0].record_id for h in loaded.search([probe(301), probe(9)])] == [301, 9]


def test_one_writer_at_a_time_and_the_purge_does_not_wait(tmp_path):
    """An import holds the snapshot for as long as it takes: a refresh that may wait does,
    the purge schedule's leaves the snapshot as it is on disk and says so."""
    from structlog.testing import capture_logs

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path)
    enrol(db, [31, 32])
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
        s.add(Tombstone(record_id=31, cause="deletion"))
        s.commit()
        with snapshot.only_writer(directory) as first:
            with snapshot.only_writer(directory, wait=False) as second:
                assert first and not second
            with capture_logs() as logs:
                busy = snapshot.refresh(s, directory, settings, wait=False)
            assert busy == snapshot.Refreshed(0, 0, 0, Mark(2, ()), busy=1)
            everything = snapshot.refresh_all(s, directory, settings, wait=False)
            assert everything is not None and everything.busy == 1
            assert [(e["event"], e["directory"]) for e in logs] == [
                ("snapshot_busy", str(directory))
            ]
            fresh = tmp_path / "fresh"  # a snapshot still being made by the other writer
            fresh.mkdir()
            with snapshot.only_writer(fresh):
                assert snapshot.refresh(s, fresh, settings, create=True, wait=False) is None
            assert Gallery.load(directory).holds(np.array([31]))[0]  # left as it was
        done = snapshot.refresh(s, directory, settings, wait=False)
    assert done is not None and done.removed == 1 and done.tombstone_seq == 1
    assert not Gallery.load(directory).holds(np.array([31]))[0]
    with snapshot.only_writer(directory, wait=False) as free:
        assert free


def test_a_refresh_that_may_wait_waits_for_the_writer_and_then_does_its_work(tmp_path):
    """An import (``refresh_all``'s default) and a refresh by hand wait for a writer that
    holds the snapshot, and then fold in and take out what they came for."""
    import threading

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path)
    enrol(db, [31, 32])
    with session_for(db) as s:
        snapshot.refresh_all(s, directory, settings, create=True)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with snapshot.only_writer(directory):
            held.set()
            release.wait(10)

    for refresh in (
        lambda s: snapshot.refresh(s, directory, settings),
        lambda s: snapshot.refresh_all(s, directory, settings),
    ):
        enrol(db, [40 + len(Gallery.load(directory).face.present.held())])
        held.clear()
        release.clear()
        thread = threading.Thread(target=writer)
        thread.start()
        held.wait(10)
        threading.Timer(0.2, release.set).start()
        with session_for(db) as s:
            done = refresh(s)
        thread.join()
        assert done is not None and done.added == 1
    assert Gallery.load(directory).size == 4


def test_a_split_writes_each_shard_with_the_whole_ones_marks_while_no_one_else_writes(
    tmp_path,
):
    """``biox gallery split``: each shard's snapshot holds its own records, built as the
    settings ask (IVF lists here), and the whole one's marks, so
    that each shard's worker reads exactly what the whole lacked; it waits for a writer
    that holds the whole snapshot."""
    import threading

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf", exact_max=10)
    enrol(db, list(range(1, 301)))
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
    Gallery.load(directory).save(directory, 5, 9, [3, 4])
    held, release = threading.Event(), threading.Event()

    shard_1 = directory / "shard-1-of-2"  # left by an earlier split, a purge refreshing it
    shard_1.mkdir()

    def writer() -> None:
        with snapshot.only_writer(directory), snapshot.only_writer(shard_1):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    done: list[int] = []
    threading.Timer(0.2, lambda: (done.append(0), release.set())).start()
    seen: list[int] = []
    sizes = snapshot.split_snapshot(directory, 2, settings, progress=seen.append)
    thread.join()
    assert done == [0]  # it ran once the writers had let go
    assert sizes == [150, 150] and sum(seen) == 300
    for i, size in enumerate(sizes):
        part_dir = directory / f"shard-{i}-of-2"
        part = Gallery.load(part_dir)
        assert part.size == size and part.kind == "ivf"  # (searched as the worker says)
        assert (
            part.holds(np.arange(i + 2, 301, 2)).all()
            and not part.holds(np.arange(i + 1, 301, 2)).any()
        )
        manifest = Gallery.manifest(part_dir)
        assert (
            manifest["tombstone_seq"],
            manifest["enrolled_seq"],
            manifest["enrolled_holes"],
        ) == (5, 9, [3, 4])


def test_a_split_waits_for_a_writer_of_a_shard_snapshot(tmp_path):
    """A shard's snapshot from an earlier split may be under a purge's refresh: the split
    writes that shard once the refresh lets go, and the others meanwhile."""
    import threading

    db, directory = f"sqlite:///{tmp_path / 'mx.db'}", tmp_path / "gallery"
    settings = Settings(data_dir=tmp_path, index="ivf", exact_max=10)
    enrol(db, list(range(1, 301)))
    with session_for(db) as s:
        snapshot.refresh(s, directory, settings, create=True)
    shard_0, shard_1 = directory / "shard-0-of-2", directory / "shard-1-of-2"
    shard_1.mkdir()
    held, written_before = threading.Event(), []

    def writer() -> None:
        with snapshot.only_writer(shard_1):
            held.set()
            deadline = time.monotonic() + 60
            while not Gallery.exists(shard_0) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)  # long enough for the split to write shard 1 if it did not wait
            written_before.append((Gallery.exists(shard_0), Gallery.exists(shard_1)))

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    assert snapshot.split_snapshot(directory, 2, settings) == [150, 150]
    thread.join()
    assert written_before == [(True, False)] and Gallery.exists(shard_1)


def own_records(db: str, ids: list[int], source: str = "mx") -> None:
    """Records of a gallery whose templates are in a snapshot only, as `biox synth` makes."""
    with session_for(db) as s:
        s.add_all(Record(id=i, identity_ref=f"{source.upper()}-{i}", source=source) for i in ids)
        s.commit()


def test_a_matcher_without_its_snapshot_refuses_to_start_when_templates_live_nowhere_else(
    tmp_path,
):
    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    db = settings.database_for("mx")
    own_records(db, list(range(1, 11)))  # templates in a snapshot that is not there
    own_records(db, [50, 51], source="us")  # a partner's data: its templates are enrolled
    enrol(db, [50, 51])
    with capture_logs() as logs, pytest.raises(SystemExit) as whole:
        load("mx", settings, Shard())
    where = settings.gallery_dir("mx")
    said = {"event": "gallery_snapshot_missing", "directory": str(where), "identities": 10}
    assert [{k: line.get(k) for k in said} for line in logs] == [said]
    assert str(whole.value) == (
        f"no gallery snapshot at {where}, and 10 of mx's own identities have their templates "
        "nowhere else: this matcher would answer them no match. "
        "Build it again there (a synthetic gallery: `biox synth -p mx`), not from an older "
        "copy: that would still hold templates deleted since."
    )
    with pytest.raises(SystemExit) as one:  # a shard: its own identities counted
        load("mx", settings, Shard(1, 3))
    assert "and 4 of mx's own identities in shard 1 of 3 have" in str(one.value)  # 1, 4, 7, 10
    assert str(one.value).endswith(
        "not from an older copy: that would still hold templates deleted since."
    )
    enrol(db, [60])
    with session_for(db) as s:  # the whole snapshot is there: the shard's is split from it
        snapshot.refresh(s, where, settings, create=True)
    assert load("mx", settings, Shard())[0].size == 3  # the enrolled rows, folded in
    with pytest.raises(SystemExit) as split:
        load("mx", settings, Shard(0, 2))
    assert str(split.value).endswith(
        "in shard 0 of 2 have their templates nowhere else: this matcher would answer them "
        "no match. Split the snapshot (`biox gallery split -p mx --shards 2`) or copy "
        "shard-0-of-2/ here from the host that split it."
    )


def test_a_matcher_without_its_snapshot_starts_empty_where_the_database_holds_every_template(
    tmp_path,
):
    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    db = settings.database_for("mx")
    with capture_logs() as logs:
        gallery, mark = load("mx", settings, Shard())  # nothing anywhere: a new participant
    assert (gallery.size, mark) == (0, Mark())
    where = str(settings.gallery_dir("mx"))
    said = {"event": "empty_gallery", "participant": "mx", "directory": where}
    assert [{k: line.get(k) for k in said} for line in logs] == [said]
    own_records(db, [1, 2, 3])
    enrol(db, [1, 2, 3])  # imported: each template in the database too
    gallery, mark = load("mx", settings, Shard(0, 2))
    assert (gallery.size, mark) == (0, Mark())
    with session_for(db) as s:
        assert snapshot.templates_only_there(s, "mx") == 0
        own_records(db, [4])
        assert snapshot.templates_only_there(s, "mx") == 1
        assert snapshot.templates_only_there(s, "mx", Shard(0, 2)) == 1
        assert snapshot.templates_only_there(s, "mx", Shard(1, 2)) == 0
        assert snapshot.templates_only_there(s, "us") == 0
    matcher = MatcherHandler("mx", REGISTRY, gallery, settings, POLICIES.of("mx"), mark)
    with session_for(db) as s:
        assert matcher.catch_up(s) == 3  # read from the database, slowly but whole
