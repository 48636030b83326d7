"""Synthetic galleries: each participant's enrolments of the synthetic population, written
where its workers look for them (records in its database, FAISS snapshot on disk), and
captures chosen to land in an examiner's gray zone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from biox.gallery.gallery import Gallery, Probe
from biox.gallery.index import VectorIndex
from biox.settings import Settings
from biox.sim.synth import (
    _SALT,
    CHUNK,
    TWO_FINGERS,
    _capture_iris,
    _capture_vectors,
    chunk,
    identity_ref,
    known_to,
    member_of,
    person,
    poor_capture,
    population_for,
    sealed,
)
from biox.wire.messages import Biometrics


@dataclass
class EnrolmentBatch:
    persons: np.ndarray
    face: np.ndarray
    fingers: dict[int, tuple[np.ndarray, np.ndarray]]  # position -> (rows, vectors)
    irises: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # eye -> (rows, codes, masks)


def enrolments(
    seed: int, code: str, size: int, *, tenprint: bool = True, iris: bool = True
) -> Iterator[EnrolmentBatch]:
    """The gallery of ``code``: captures of the first ``size`` people who are members."""
    done = 0
    positions = tuple(range(1, 11)) if tenprint else TWO_FINGERS
    for number in range(population_for(size) // CHUNK + 1):
        if done >= size:
            return
        c = chunk(seed, number, positions)
        persons = np.arange(c.start, c.start + CHUNK)
        rows = np.flatnonzero(member_of(code, persons))[: size - done]
        if len(rows) == 0:
            continue
        rng = np.random.default_rng([seed, 5, _SALT.get(code, 0), number])
        quality = rng.integers(40, 96, size=len(rows))
        face = _capture_vectors(c.face[rows], quality, rng)
        fingers = {}
        for p in positions:
            sel = rows if p in TWO_FINGERS else rows[c.tenprint[rows]]
            if len(sel):
                q = rng.integers(40, 96, size=len(sel))
                fingers[p] = (sel - 0, _capture_vectors(c.fingers[p][sel], q, rng))
        irises = {}
        if iris:
            sel = rows[c.has_iris[rows]]
            for eye in ("left", "right"):
                codes, masks = [], []
                for r in sel:
                    cd, mk = _capture_iris(c.iris[eye][r], int(rng.integers(50, 96)), rng)
                    codes.append(np.frombuffer(cd, np.uint8))
                    masks.append(np.frombuffer(mk, np.uint8))
                if len(sel):
                    irises[eye] = (sel, np.stack(codes), np.stack(masks))
        done += len(rows)
        yield EnrolmentBatch(
            persons[rows],
            face,
            _rows_to_persons(fingers, c.start),
            _rows_to_persons(irises, c.start),
        )


def _rows_to_persons(parts: dict[Any, Any], start: int) -> dict[Any, Any]:
    return {k: (v[0] + start, *v[1:]) for k, v in parts.items()}


def populate(
    code: str,
    size: int,
    seed: int,
    database_url: str,
    gallery_directory: Path,
    *,
    index: str = "auto",
    exact_max: int = 50_000,
    nprobe: int = 48,
    tenprint: bool = True,
    iris: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Gallery:
    """Build ``code``'s synthetic gallery: identity records in its database, FAISS on disk.

    Record ids are the people's numbers, so the same person has the same id in every
    gallery that knows them: handy for checking answers, meaningless to the protocol.
    """
    from sqlalchemy import delete, insert

    from biox.database import engine_for
    from biox.store import EnrolledTemplates, Record

    gallery = Gallery.for_size(size, index, exact_max, nprobe)
    batches = list(enrolments(seed, code, size, tenprint=tenprint, iris=iris))
    if gallery.kind == "ivf":  # train each space on a sample before adding
        sample = np.concatenate([b.face for b in batches])[: 50 * VectorIndex.nlist_for(size)]
        fsample = np.concatenate([b.fingers[TWO_FINGERS[0]][1] for b in batches])
        gallery.train(sample, fsample[: len(sample)])
    engine = engine_for(database_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(delete(Record))
        conn.execute(delete(EnrolledTemplates))
    for b in batches:
        add_to(gallery, b)
        rows_out = []
        for n in b.persons.tolist():
            p = person(seed, n)
            rows_out.append(
                {
                    "id": n,
                    "identity_ref": identity_ref(code, n),
                    "person_centric_id": f"{code}-pcn-{n}",
                    "biographic": p.biographic.model_dump(mode="json", exclude_none=True),
                    "encounters": [
                        {
                            "encountered_at": (now - timedelta(days=30 + n % 900)).isoformat(),
                            "country": code,
                            "type": "border",
                            "location": f"{code.upper()}-POE-{n % 40:02d}",
                        }
                    ],
                    "derogatory": p.derogatory,
                    "releasable": not sealed(n),
                    "source": code,
                    "received_at": now,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(Record), rows_out)
        if progress:
            progress(len(b.persons))
    gallery.save(gallery_directory)
    return gallery


def build_gallery(
    settings: Settings,
    code: str,
    size: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Gallery:
    """A synthetic gallery where ``code``'s workers will look for it (database, snapshot)."""
    return populate(
        code,
        size,
        seed,
        settings.database_for(code),
        settings.gallery_dir(code),
        index=settings.index,
        exact_max=settings.exact_max,
        nprobe=settings.ivf_nprobe,
        progress=progress,
    )


def add_to(gallery: Gallery, batch: EnrolmentBatch) -> None:
    """Put one batch of enrolments into the gallery's indexes (ids = person numbers)."""
    gallery.face.add(batch.persons, batch.face)
    for pos, (rows, vecs) in batch.fingers.items():
        gallery.fingers[pos].add(rows, vecs)
    for eye, (rows, codes, masks) in batch.irises.items():
        gallery.irises[eye].add(rows, codes, masks)


def gray_zone_subject(
    gallery: Gallery,
    code: str,
    size: int,
    seed: int,
    low: float,
    high: float,
    rng: np.random.Generator,
    tries: int = 300,
    accept: Callable[[int], bool] | None = None,
) -> tuple[int, Biometrics]:
    """A mated, unsealed person (one ``accept`` likes) and a poor capture of them whose
    best fused score in ``gallery`` falls between the thresholds: a case for an examiner
    (§8)."""
    for _ in range(tries):
        n = known_to(code, size, rng)
        if sealed(n) or (accept is not None and not accept(n)):
            continue
        bio = poor_capture(seed, n, context=int(rng.integers(1 << 30)))
        [hits] = gallery.search([Probe.from_biometrics(bio)])
        if hits and hits[0].record_id == n and low <= hits[0].fused < high:
            return n, bio
    raise LookupError(f"no gray-zone capture in {tries} tries")
