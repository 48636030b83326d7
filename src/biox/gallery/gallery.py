"""A participant's biometric gallery: one index per (modality, algorithm, position).

Searches are batched: all probes waiting in a consume batch go to FAISS in one call per
index, because single-query flat search is memory-bound and a batch reads the gallery
once for many probes; and their candidates are then compared and fused together, because
a numpy call on a probe's 25 candidates costs what it costs on a batch's 1 500.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biox.gallery.fusion import Fused, MeanRule, Scorer
from biox.gallery.index import IndexKind, IrisIndex, VectorIndex
from biox.gallery.templates import iris_code, vector
from biox.gallery.vectors import VectorStore
from biox.wire.biometrics import FACE, FINGER
from biox.wire.messages import Biometrics

EYES = ("left", "right")


@dataclass
class Probe:
    """Validated templates of one query or enrolment."""

    face: np.ndarray | None = None
    fingers: dict[int, np.ndarray] = field(default_factory=dict)
    irises: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_biometrics(cls, bio: Biometrics) -> Probe:
        """Raises ``PermanentError`` naming the first unusable template."""
        probe = cls()
        if bio.face is not None:
            probe.face = vector(bio.face.algorithm, "face", bio.face.template)
        for fp in bio.fingerprints:
            probe.fingers[fp.position] = vector(fp.algorithm, "finger", fp.template)
        for ir in bio.irises:
            probe.irises[ir.eye] = iris_code(ir.algorithm, ir.code, ir.mask)
        return probe


@dataclass
class Hit:
    record_id: int
    fused: float
    scores: dict[str, float]  # normalised per modality, [0, 1]
    evidence: dict[str, float] | None = None  # log-LR per modality, when calibrated


class Gallery:
    def __init__(
        self, kind: IndexKind = "flat", nlist: int = 0, nprobe: int = 0, spill: Path | None = None
    ) -> None:
        """``spill``: a directory for the full templates while a gallery larger than
        memory is built (on the snapshot's file system: saving links, never copies)."""
        self.kind = kind
        self.nprobe = nprobe
        if spill is not None:
            spill.mkdir(parents=True, exist_ok=True)
        at = (lambda name: spill / f"{name}.spill") if spill is not None else (lambda _: None)
        self.face = VectorIndex(FACE.dim, kind, nlist, nprobe, at("face"))
        self.fingers = {
            p: VectorIndex(FINGER.dim, kind, nlist, nprobe, at(f"finger.{p}")) for p in range(1, 11)
        }
        self.irises = {eye: IrisIndex() for eye in EYES}
        self.scorer: Scorer = MeanRule()

    @classmethod
    def for_size(cls, n: int, index: str, exact_max: int, nprobe: int) -> Gallery:
        kind: IndexKind = (
            "flat" if index == "flat" or (index == "auto" and n <= exact_max) else "ivf"
        )
        return cls(kind, VectorIndex.nlist_for(n), nprobe)

    @property
    def size(self) -> int:
        return int(
            max(
                self.face.ntotal,
                *(f.ntotal for f in self.fingers.values()),
                *(i.ntotal for i in self.irises.values()),
            )
        )

    def _vector_indexes(self) -> dict[str, VectorIndex]:
        return {"face": self.face, **{f"finger.{p}": ix for p, ix in self.fingers.items()}}

    def scan(self, nprobe: int) -> None:
        """Lists each face and finger search scans (``VectorIndex.scan``): ``bench.evaluate
        --scan-shares`` measures several widths on one built gallery."""
        self.nprobe = nprobe
        for ix in self._vector_indexes().values():
            ix.scan(nprobe)

    # --- writes ---------------------------------------------------------------------------

    def train(self, face_sample: np.ndarray, finger_sample: np.ndarray) -> None:
        """IVF needs a sample of each space before adds; flat ignores this.

        Every finger position shares one template space, so one quantizer is trained and
        copied to the ten position indexes (training ten would cost ten times as much).
        """
        self.face.train(face_sample)
        first, *others = self.fingers.values()
        first.train(finger_sample)
        for ix in others:
            ix.copy_training(first)

    def enroll(self, ids: Sequence[int], probes: Sequence[Probe]) -> None:
        ids_arr = np.asarray(ids, dtype=np.int64)
        faces = [(i, p.face) for i, p in enumerate(probes) if p.face is not None]
        if faces:
            self.face.add(ids_arr[[i for i, _ in faces]], np.stack([f for _, f in faces]))
        for pos, ix in self.fingers.items():
            rows = [i for i, p in enumerate(probes) if pos in p.fingers]
            if rows:
                ix.add(ids_arr[rows], np.stack([probes[i].fingers[pos] for i in rows]))
        for eye, iris in self.irises.items():
            rows = [i for i, p in enumerate(probes) if eye in p.irises]
            if rows:
                codes = np.stack([probes[i].irises[eye][0] for i in rows])
                masks = np.stack([probes[i].irises[eye][1] for i in rows])
                iris.add(ids_arr[rows], codes, masks)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Whether any index holds each of ``ids``."""
        held = np.zeros(len(ids), dtype=bool)
        for vectors in self._vector_indexes().values():
            if vectors.ntotal:
                held |= vectors.present.mask(ids)
        for iris in self.irises.values():
            if iris.codes:
                held |= np.fromiter((i in iris.codes for i in ids.tolist()), bool, len(ids))
        return held

    def remove(self, ids: Sequence[int]) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        for vectors in self._vector_indexes().values():
            vectors.remove(arr)
        for iris in self.irises.values():
            iris.remove(arr)

    # --- search ---------------------------------------------------------------------------

    def search(self, probes: Sequence[Probe], k: int = 10, top: int = 3) -> list[list[Hit]]:
        """Best ``top`` fused hits per probe; candidates come from every modality. The
        whole batch is compared and fused at once ("Gallery" in docs/architecture.md)."""
        found = self.candidates(probes, k)
        bounds = np.zeros(len(found) + 1, np.int64)
        np.cumsum([len(ids) for ids in found], out=bounds[1:])
        if not bounds[-1]:
            return [[] for _ in probes]
        ids = np.concatenate(found)
        return _ranked(ids, self.scorer(self._raw(probes, ids, bounds)), bounds, top)

    def candidates(self, probes: Sequence[Probe], k: int) -> list[np.ndarray]:
        """The union of each index's ``k`` nearest, per probe: its ids, ascending."""
        found: list[list[np.ndarray]] = [[] for _ in probes]
        for name, ix in self._vector_indexes().items():
            rows, queries = self._queries_for(name, probes)
            if not rows:
                continue
            _, near = ix.search(np.stack(queries), k)
            for row, ids in zip(rows, near, strict=True):
                found[row].append(ids)
        for i, probe in enumerate(probes):
            for eye, (code, _mask) in probe.irises.items():
                found[i].append(self.irises[eye].candidates(code, k))
        out = []
        for parts in found:
            ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            out.append(ids[ids >= 0])
        return out

    @staticmethod
    def _queries_for(name: str, probes: Sequence[Probe]) -> tuple[list[int], list[np.ndarray]]:
        rows, queries = [], []
        for i, p in enumerate(probes):
            vec = p.face if name == "face" else p.fingers.get(int(name.split(".")[1]))
            if vec is not None:
                rows.append(i)
                queries.append(vec)
        return rows, queries

    def compare(self, probe: Probe, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Raw similarity of ``probe`` to each of ``ids`` (ascending), per element it has:
        cosine for the face and each finger, ``1 - HD`` for each eye; NaN where the
        candidate lacks it."""
        return self._raw([probe], np.asarray(ids, np.int64), np.array([0, len(ids)]))

    def _raw(
        self, probes: Sequence[Probe], ids: np.ndarray, bounds: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``compare`` for a batch: probe ``i``'s candidates are ``ids[bounds[i]:bounds[i
        + 1]]``. One element's templates are gathered once for the whole batch; each
        probe's scores are still its own product, as one probe's compare makes them."""
        raw: dict[str, np.ndarray] = {}
        owner = np.repeat(np.arange(len(probes)), np.diff(bounds))  # each candidate's probe
        if any(p.face is not None for p in probes):
            raw["face"] = _cosines(self.face, [p.face for p in probes], ids, owner)
        for pos in dict.fromkeys(pos for p in probes for pos in p.fingers):
            queries = [p.fingers.get(pos) for p in probes]
            raw[f"finger.{pos}"] = _cosines(self.fingers[pos], queries, ids, owner)
        for eye in dict.fromkeys(eye for p in probes for eye in p.irises):
            out = np.full(len(ids), np.nan, np.float32)
            for i, p in enumerate(probes):
                if eye in p.irises:
                    a, b = bounds[i], bounds[i + 1]
                    found, hd = self.irises[eye].scores(*p.irises[eye], ids[a:b])
                    out[a + np.searchsorted(ids[a:b], found)] = 1.0 - hd
            raw[f"iris.{eye}"] = out
        return raw

    # --- persistence ----------------------------------------------------------------------

    def save(
        self,
        directory: Path,
        tombstone_seq: int = 0,
        enrolled_seq: int = 0,
        enrolled_holes: Sequence[int] = (),
    ) -> None:
        """Each file written beside its place and then moved there, the manifest last: a
        matcher starting meanwhile reads either file whole. The full templates of a
        snapshot saved where it was loaded are updated in place instead, before the ids
        that name them are moved in (``VectorStore.save``, docs/architecture.md
        "Gallery"). Each is on disk before it is moved, and the moves before this returns:
        after a power loss the manifest never names a file the disk does not hold, and
        the gigabytes are written now, not half a minute later under the broker's syncs
        (docs/operations.md, "Keep the gallery off the broker's disk"). ``tombstone_seq``:
        the last tombstone this snapshot no longer holds; ``enrolled_seq`` and
        ``enrolled_holes``: how far the enrolled templates are folded in
        (``gallery/snapshot.py``)."""
        directory.mkdir(parents=True, exist_ok=True)
        staged = directory / ".staged"
        staged.mkdir(exist_ok=True)
        for left in staged.iterdir():  # a save cut short: its files must not be moved now
            left.unlink()
        for name, ix in self._vector_indexes().items():
            ix.save(staged / f"{name}.faiss", directory / f"{name}.faiss")
        for eye, iris in self.irises.items():
            iris.save(staged / f"iris.{eye}.faiss")
        manifest = {
            "kind": self.kind,
            "size": self.size,
            "tombstone_seq": tombstone_seq,
            "enrolled_seq": enrolled_seq,
            "enrolled_holes": list(enrolled_holes),
        }
        (staged / "manifest.json").write_text(json.dumps(manifest))
        files = sorted(staged.iterdir(), key=lambda p: p.name == "manifest.json")
        for path in files:
            synced(path)
        for path in files:
            path.replace(directory / path.name)
        staged.rmdir()
        synced(directory)

    @staticmethod
    def manifest(directory: Path) -> dict[str, Any] | None:
        """The snapshot's manifest (None: no snapshot in ``directory``)."""
        path = directory / "manifest.json"
        if not path.exists():
            return None
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest

    @staticmethod
    def tombstone_seq(directory: Path) -> int | None:
        """The last tombstone the snapshot in ``directory`` was rewritten without (None: no
        snapshot there)."""
        manifest = Gallery.manifest(directory)
        return None if manifest is None else int(manifest.get("tombstone_seq", 0))

    @classmethod
    def load(cls, directory: Path, nprobe: int = 0) -> Gallery:
        manifest = json.loads((directory / "manifest.json").read_text())
        self = cls.__new__(cls)
        self.kind = manifest["kind"]
        self.nprobe = nprobe
        self.face = VectorIndex.load(directory / "face.faiss", nprobe)
        self.fingers = {
            p: VectorIndex.load(directory / f"finger.{p}.faiss", nprobe) for p in range(1, 11)
        }
        self.irises = {eye: IrisIndex.load(directory / f"iris.{eye}.faiss") for eye in EYES}
        self.scorer = MeanRule()
        # most candidates' templates will be on disk, not in memory (``vectors.read_ahead``)
        self.read_ahead(sum(s.base.nbytes for s in self.stores()) > physical_memory() // 2)
        return self

    def stores(self) -> list[VectorStore]:
        """The full templates of the compressed indexes (a flat index holds its own)."""
        return [ix.store for ix in self._vector_indexes().values() if ix.store is not None]

    def read_ahead(self, on: bool) -> None:
        for store in self.stores():
            store.read_ahead = on

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / "manifest.json").exists()


#: a container's memory limit (cgroup v2), which its page cache is charged to
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory.max")


def physical_memory() -> int:
    """Bytes of memory this matcher may have, the machine's or its container's limit if
    lower: half of it is what the templates may count on finding in the page cache beside
    the matcher's own codes and the other workers."""
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = CGROUP_MEMORY.read_text().strip()  # "max" where there is none
    except OSError:
        return machine
    return min(machine, int(limit)) if limit.isdigit() else machine


def _cosines(
    ix: VectorIndex, queries: Sequence[np.ndarray | None], ids: np.ndarray, owner: np.ndarray
) -> np.ndarray:
    """Cosine of probe ``i``'s template (``queries[i]``; None: it has none) to each of its
    candidates (``ids[j]`` where ``owner[j] == i``, ascending) this index holds; NaN
    elsewhere."""
    out = np.full(len(ids), np.nan, np.float32)
    has = np.fromiter((q is not None for q in queries), bool, len(queries))
    at = np.flatnonzero(has[owner])
    at = at[ix.present.mask(ids[at])]
    if not len(at):
        return out
    stored = ix.vectors(ids[at])  # one gather for the batch
    cuts = np.searchsorted(owner[at], np.arange(len(queries) + 1)).tolist()
    for i, query in enumerate(queries):
        if query is not None and cuts[i] < cuts[i + 1]:
            out[at[cuts[i] : cuts[i + 1]]] = stored[cuts[i] : cuts[i + 1]] @ query
    return out


def _ranked(ids: np.ndarray, fused: Fused, bounds: np.ndarray, top: int) -> list[list[Hit]]:
    """Each probe's best ``top`` of its candidates ``ids[bounds[i]:bounds[i + 1]]`` by the
    fused score, ties to the lower id. The scorer works candidate by candidate, so the
    batch was fused in one call; only the hits kept become Python objects."""
    owner = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    order = np.lexsort((-fused.score, owner))  # stable: a tie keeps the ascending ids
    spans = [(a, min(a + top, b)) for a, b in itertools.pairwise(bounds.tolist())]
    kept = np.concatenate([order[a:b] for a, b in spans])
    record, score = ids[kept].tolist(), fused.score[kept].tolist()
    scores = {m: s[kept].tolist() for m, s in fused.scores.items()}
    evidence = (
        None if fused.evidence is None else {m: e[kept].tolist() for m, e in fused.evidence.items()}
    )
    hits: list[list[Hit]] = []
    start = 0
    for a, b in spans:
        hits.append(
            [
                Hit(
                    record_id=record[j],
                    fused=round(score[j], 4),
                    scores={m: round(v[j], 4) for m, v in scores.items() if v[j] == v[j]},
                    evidence=None
                    if evidence is None
                    else {m: round(v[j], 3) for m, v in evidence.items() if v[j] == v[j]},
                )
                for j in range(start, start + b - a)
            ]
        )
        start += b - a
    return hits


def synced(path: Path) -> None:
    """``path`` (a file, or a directory's entries) on disk, not only in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
