"""A country-sized import (docs/gallery.md): 100 000 identities from one Parquet file,
through `biox gallery import`, found by a matcher reading them as a running one does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlmodel import func, select

from biox.database import session_for
from biox.gallery import snapshot, templates
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.transfer import SCHEMA
from biox.handlers.matcher import MatcherHandler
from biox.policy.release import Policies
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import synth
from biox.sim.galleries import enrolments
from biox.store import Record
from biox.wire import biometrics
from biox.wire.messages import Biometrics, Face

SIZE = 100_000
SEED = 5150

pytestmark = pytest.mark.slow


def write_gallery(path: Path) -> list[int]:
    """mx's synthetic population, face templates only (2 KB a row, 200 MB in all)."""
    people: list[int] = []
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for batch in enrolments(SEED, "mx", SIZE, tenprint=False, iris=False):
            rows = [
                {
                    "identity_ref": synth.identity_ref("mx", n),
                    "face": {
                        "algorithm": biometrics.FACE.name,
                        "template": templates.vector_bytes(vec),
                    },
                    "biographic": synth.person(SEED, n).biographic.model_dump(),
                }
                for n, vec in zip(batch.persons.tolist(), batch.face, strict=True)
            ]
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            people += batch.persons.tolist()
    return people


def test_a_hundred_thousand_identities_imported_from_a_file_answer_mated_probes(tmp_path):
    started = time.monotonic()
    people = write_gallery(tmp_path / "mx.parquet")
    assert len(people) == SIZE
    env = {**os.environ, "BIOX_DATA_DIR": str(tmp_path)}
    env.pop("BIOX_DATABASE_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "biox",
            "gallery",
            "import",
            str(tmp_path / "mx.parquet"),
            "-p",
            "mx",
            "--batch",
            "5000",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{SIZE} imported, 0 already there, 0 refused" in " ".join(done.stdout.split())
    imported_s = time.monotonic() - started

    settings = Settings(data_dir=tmp_path, gallery_sync_s=0)
    db = settings.database_for("mx")
    with session_for(db) as s:
        assert s.exec(select(func.count()).select_from(Record)).one() == SIZE
        ref_of = dict(s.exec(select(Record.id, Record.identity_ref)).all())
    # the import folded every row into the snapshot: a fresh matcher loads it and reads
    # nothing again from the database
    assert f"snapshot updated, {SIZE} added, 0 removed" in " ".join(done.stdout.split())
    directory = settings.gallery_dir("mx")
    loading = time.monotonic()
    matcher = MatcherHandler(
        "mx",
        Registry.load(settings.registry),
        Gallery.load(directory, settings.ivf_nprobe),
        settings,
        Policies.load(settings.policy).of("mx"),
        snapshot.mark_of(directory),
    )
    with session_for(db) as s:
        assert matcher.catch_up(s) == 0
    loaded_s = time.monotonic() - loading

    rng = np.random.default_rng(9)
    chosen = rng.choice(people, size=200, replace=False).tolist()
    probes = []
    for n in chosen:
        face = synth.capture(SEED, n, context=int(rng.integers(1 << 30)), quality=80).face
        assert face is not None
        probes.append(Probe.from_biometrics(Biometrics(face=Face(**face.model_dump()))))
    hits = matcher.gallery.search(probes, k=10, top=3)
    top = [(ref_of[f[0].record_id], f[0].fused) if f else (None, 0.0) for f in hits]
    truth = [synth.identity_ref("mx", n) for n in chosen]
    right = sum(ref == want for (ref, _), want in zip(top, truth, strict=True))
    high = settings.threshold_high
    matched = [(ref, want) for (ref, score), want in zip(top, truth, strict=True) if score >= high]
    print(
        f"import {imported_s:.1f}s, matcher load {loaded_s:.1f}s, rank-1 {right}/200, "
        f"matches {len(matched)}/200"
    )
    assert all(ref == want for ref, want in matched)  # never a wrong identity matched
    assert len(matched) >= 190 and right >= 194  # one face, one capture each
    assert matcher.gallery.size == SIZE
