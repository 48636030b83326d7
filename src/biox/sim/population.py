"""The hard synthetic population: genuine and impostor scores that overlap as real ones do.

The easy population (``synth.py``) is for the demo and the workflow tests: its impostor
and genuine scores never meet, so it cannot test a threshold. This one exists to measure
decisions (``biox calibrate``, ``make evaluate``, docs/matching.md "Decision quality").
What makes it hard, each a field of ``Hardness`` with its default:

* **capture quality down to unusable**: a probe capture per modality is good (quality
  40-100), poor (10-40) or unusable (0-10); the noise grows steeply below quality 25;
* **failures to capture**: no face, a missing index finger, no iris although enrolled;
  both fingers of a probe share one quality (one session: dry or worn skin);
* **look-alikes**: a non-mated probe may resemble one gallery person (face correlated
  0.55, fingers 0.25, iris independent), the more likely the larger the gallery, and
  some gallery people have a twin in the gallery, so impostor tails are heavier than
  independent draws give;
* **ageing**: the face drifts with the years between enrolment and probe (up to 15),
  fingers a little, the iris not;
* **iris occlusion**: eyelids and lashes mask up to 60 % of the code, and a poor
  capture (blur, off-angle) flips up to 44 % of the bits;
* **mislabelled enrolments**: a share of gallery records hold another person's
  templates, so that person's mate cannot be found under the right name.

Everything is drawn from ``numpy.random.default_rng([seed, stream, ...])``: the same
seed gives the same gallery and probes. Templates are ``Probe`` arrays, ready for
``Gallery.enroll`` and ``Gallery.search`` (the matcher's own code path), never wire
messages: a million-identity gallery is built in about a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from biox.gallery.gallery import Gallery, Probe
from biox.wire.biometrics import FACE, FINGER, IRIS, IRIS_COLS, IRIS_ROWS

if TYPE_CHECKING:
    from biox.gallery.calibration import ScoreTable

FINGERS = (2, 7)  # the border profile: right and left index fingers
EYES = ("left", "right")
BLOCK = 8192


@dataclass(frozen=True)
class Hardness:
    """How hard the population is (docs/matching.md, "The hard population")."""

    poor: float = 0.10  # share of probe captures per modality at quality 10-40
    unusable: float = 0.04  # ... at quality 0-10
    face_missing: float = 0.03
    finger_missing: float = 0.05  # per finger
    iris_enrolled: float = 0.30
    iris_captured: float = 0.80  # of the enrolled, per probe
    lookalike: float = 2e-7  # per gallery identity: a non-mated probe resembles one of
    # them with probability 1 - exp(-n * lookalike) (2 % at 100 000, 18 % at 1 M), so
    # look-alikes grow with the gallery as real ones do
    twins: float = 0.01  # gallery people with a twin in the gallery
    rho_face: float = 0.55  # correlation of a look-alike's true face
    rho_finger: float = 0.25
    max_years: float = 15.0
    ageing_face: float = 0.045  # drift per year, in units of the template's norm
    ageing_finger: float = 0.01
    max_occlusion: float = 0.60
    mislabelled: float = 0.003


def noise_scale(quality: np.ndarray) -> np.ndarray:
    """The capture noise at a quality: the easy model's line plus a steep rise below 25."""
    q = np.asarray(quality, np.float32)
    return 0.25 + 0.9 * (1 - q / 100) + 6.0 * np.clip((25 - q) / 25, 0, None) ** 2


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return unit


def _capture(true: np.ndarray, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(true.shape, dtype=np.float32) / np.sqrt(true.shape[-1])
    return _unit(true + noise_scale(quality)[:, None] * noise)


@dataclass
class Truth:
    """True templates of the gallery's people, kept to draw their probes and look-alikes."""

    face: np.ndarray  # (n, 512)
    fingers: dict[int, np.ndarray]  # position -> (n, 192)
    iris: dict[str, np.ndarray]  # eye -> (n, 256) packed bits
    has_iris: np.ndarray  # (n,) bool
    wrong: np.ndarray  # (n,) bool: the record holds a stranger's templates (mislabelled)

    @property
    def size(self) -> int:
        return len(self.face)


@dataclass
class Probes:
    """Probe captures with the ground truth the evaluation needs."""

    probes: list[Probe]
    mate: np.ndarray  # gallery record id of the person, -1 for a non-mated probe
    lookalike: np.ndarray  # the gallery record a non-mated probe resembles, -1 if none


class Population:
    def __init__(self, seed: int, hardness: Hardness | None = None) -> None:
        self.seed = seed
        self.hard = hardness or Hardness()

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    # --- the gallery ----------------------------------------------------------------------

    def truth(self, n: int) -> Truth:
        """The first ``n`` people: the same people whatever ``n`` (blocks of 8192)."""
        blocks = [self._block(b) for b in range((n + BLOCK - 1) // BLOCK)]
        face = np.concatenate([b[0] for b in blocks])[:n]
        fingers = {p: np.concatenate([b[1][p] for b in blocks])[:n] for p in FINGERS}
        iris = {e: np.concatenate([b[2][e] for b in blocks])[:n] for e in EYES}
        has_iris = np.concatenate([b[3] for b in blocks])[:n]
        wrong = np.concatenate([b[4] for b in blocks])[:n]
        twins = np.flatnonzero(self._rng(9).random(n) < self.hard.twins)
        twins = twins[twins > 0]
        face[twins] = _unit(
            self.hard.rho_face * face[twins - 1] + np.sqrt(1 - self.hard.rho_face**2) * face[twins]
        )
        return Truth(face, fingers, iris, has_iris, wrong)

    def _block(
        self, b: int
    ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
        rng = self._rng(1, b)
        face = _unit(rng.standard_normal((BLOCK, FACE.dim), dtype=np.float32))
        fingers = {
            p: _unit(rng.standard_normal((BLOCK, FINGER.dim), dtype=np.float32)) for p in FINGERS
        }
        iris = {e: rng.integers(0, 256, (BLOCK, IRIS.nbytes), dtype=np.uint8) for e in EYES}
        has_iris = rng.random(BLOCK) < self.hard.iris_enrolled
        wrong = rng.random(BLOCK) < self.hard.mislabelled
        return face, fingers, iris, has_iris, wrong

    def enrolments(self, truth: Truth) -> Iterator[tuple[np.ndarray, list[Probe]]]:
        """Record ids and their enrolment captures, a block at a time (good quality, 50-100:
        an office capture). A mislabelled record holds a stranger's templates."""
        for start in range(0, truth.size, BLOCK):
            stop = min(start + BLOCK, truth.size)
            rng = self._rng(2, start // BLOCK)
            n = stop - start
            face, fingers = (
                truth.face[start:stop],
                {p: f[start:stop] for p, f in truth.fingers.items()},
            )
            wrong = truth.wrong[start:stop]
            if wrong.any():  # another person entirely: fresh true templates
                face = face.copy()
                face[wrong] = _unit(
                    rng.standard_normal((int(wrong.sum()), FACE.dim), dtype=np.float32)
                )
                fingers = {p: f.copy() for p, f in fingers.items()}
                for f in fingers.values():
                    f[wrong] = _unit(
                        rng.standard_normal((int(wrong.sum()), FINGER.dim), dtype=np.float32)
                    )
            quality = rng.uniform(50, 100, (1 + len(FINGERS), n)).astype(np.float32)
            faces = _capture(face, quality[0], rng)
            prints = {p: _capture(fingers[p], quality[1 + i], rng) for i, p in enumerate(FINGERS)}
            probes = []
            for r in range(n):
                irises = {}
                if truth.has_iris[start + r]:
                    for e in EYES:
                        irises[e] = _iris(truth.iris[e][start + r], 80.0, 0.2, rng)
                probes.append(Probe(faces[r], {p: v[r] for p, v in prints.items()}, irises))
            yield np.arange(start, stop, dtype=np.int64), probes

    # --- probes ---------------------------------------------------------------------------

    def probes(self, truth: Truth, mated: int, non_mated: int, stream: int) -> Probes:
        """``mated`` captures of gallery people and ``non_mated`` of strangers, in that
        order. ``stream`` keeps calibration and evaluation probes apart."""
        h = self.hard
        rng = self._rng(3, stream)
        n = mated + non_mated
        mate = np.full(n, -1, np.int64)
        mate[:mated] = rng.choice(truth.size, mated, replace=False)
        look = np.full(n, -1, np.int64)
        chance = 1 - np.exp(-truth.size * h.lookalike)
        resembles = np.flatnonzero(rng.random(non_mated) < chance) + mated
        look[resembles] = rng.integers(0, truth.size, len(resembles))

        face = _unit(rng.standard_normal((n, FACE.dim), dtype=np.float32))
        fingers = {
            p: _unit(rng.standard_normal((n, FINGER.dim), dtype=np.float32)) for p in FINGERS
        }
        m = mate[:mated]
        face[:mated] = truth.face[m]
        for p in FINGERS:
            fingers[p][:mated] = truth.fingers[p][m]
        if len(resembles):
            g = look[resembles]
            face[resembles] = _unit(
                h.rho_face * truth.face[g] + np.sqrt(1 - h.rho_face**2) * face[resembles]
            )
            for p in FINGERS:
                own = fingers[p][resembles]
                fingers[p][resembles] = _unit(
                    h.rho_finger * truth.fingers[p][g] + np.sqrt(1 - h.rho_finger**2) * own
                )

        years = rng.uniform(0, h.max_years, n).astype(np.float32)
        face = _age(face, years * h.ageing_face, rng)
        fingers = {p: _age(f, years * h.ageing_finger, rng) for p, f in fingers.items()}

        quality = self._qualities(rng, (1 + len(FINGERS) + 1, n))
        # one session for both fingers (dry or worn skin): their qualities go together
        quality[2 : 1 + len(FINGERS)] = np.clip(
            quality[1] + rng.normal(0, 5, (len(FINGERS) - 1, n)), 0, 100
        )
        faces = _capture(face, quality[0], rng)
        prints = {p: _capture(fingers[p], quality[1 + i], rng) for i, p in enumerate(FINGERS)}
        has_face = rng.random(n) >= h.face_missing
        has_finger = rng.random((len(FINGERS), n)) >= h.finger_missing
        iris_seen = rng.random(n) < h.iris_captured
        strangers_iris = rng.random(n) < h.iris_enrolled
        probes = []
        for r in range(n):
            irises = {}
            enrolled = bool(truth.has_iris[mate[r]]) if mate[r] >= 0 else bool(strangers_iris[r])
            if enrolled and iris_seen[r]:
                occlusion = float(rng.uniform(0, h.max_occlusion))
                for e in EYES:
                    code = (
                        truth.iris[e][mate[r]]
                        if mate[r] >= 0
                        else rng.integers(0, 256, IRIS.nbytes, dtype=np.uint8)
                    )
                    irises[e] = _iris(code, float(quality[-1, r]), occlusion, rng)
            probes.append(
                Probe(
                    faces[r] if has_face[r] else None,
                    {p: prints[p][r] for i, p in enumerate(FINGERS) if has_finger[i, r]},
                    irises,
                )
            )
        return Probes(probes, mate, look)

    def _qualities(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        u = rng.random(shape)
        good = rng.uniform(40, 100, shape)
        poor = rng.uniform(10, 40, shape)
        unusable = rng.uniform(0, 10, shape)
        q = np.where(
            u < self.hard.unusable,
            unusable,
            np.where(u < self.hard.unusable + self.hard.poor, poor, good),
        )
        return q.astype(np.float32)


def _age(true: np.ndarray, drift: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The true template after ``drift`` (relative norm) of change in a random direction."""
    direction = rng.standard_normal(true.shape, dtype=np.float32) / np.sqrt(true.shape[-1])
    return _unit(true + drift[:, None] * direction)


def _iris(
    code: np.ndarray, quality: float, occlusion: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A capture of one eye: bits flipped with the quality, a rotation, and eyelids or
    lashes masking ``occlusion`` of the code at most (outer bands first)."""
    bits = np.unpackbits(code).reshape(IRIS_ROWS, IRIS_COLS)
    flip = rng.random(bits.shape) < (0.08 + 0.36 * (1 - quality / 100) ** 2)
    bits = np.roll(bits ^ flip, int(rng.integers(-4, 5)), axis=1)
    mask = np.ones_like(bits)
    covered = int(rng.uniform(0, occlusion) * bits.size)
    if covered:
        order = np.argsort(-np.arange(bits.size) // IRIS_COLS + rng.random(bits.size) * 3)
        mask.reshape(-1)[order[:covered]] = 0
    return np.packbits(bits), np.packbits(mask)


def build(population: Population, truth: Truth, gallery: Gallery) -> None:
    for ids, probes in population.enrolments(truth):
        gallery.enroll(ids.tolist(), probes)


def score_table(gallery: Gallery, sample: Probes, k: int, seed: int) -> ScoreTable:
    """Every element comparison the matcher makes for each probe (its search candidates),
    plus each mated probe against its mate and against ``k`` identities drawn at random
    (the bulk of the impostor distribution, which a search's candidates are not)."""
    from biox.gallery.calibration import ScoreTable

    rng = np.random.default_rng([seed, 7])
    columns: dict[str, list[np.ndarray]] = {
        c: [] for c in ("probe", "candidate", "modality", "score", "mated")
    }
    found = gallery.candidates(sample.probes, k)
    for i, (probe, ids) in enumerate(zip(sample.probes, found, strict=True)):
        mate = int(sample.mate[i])
        chosen = set(ids.tolist()) | set(rng.integers(0, gallery.size, k).tolist())
        if mate >= 0:
            chosen.add(mate)
        ordered = np.fromiter(sorted(chosen), np.int64)
        for element, values in gallery.compare(probe, ordered).items():
            keep = ~np.isnan(values)
            n = int(keep.sum())
            columns["probe"].append(np.full(n, i))
            columns["candidate"].append(ordered[keep])
            columns["modality"].append(np.full(n, element.split(".", 1)[0]))
            columns["score"].append(values[keep])
            columns["mated"].append(ordered[keep] == mate)
    return ScoreTable(**{c: np.concatenate(v) for c, v in columns.items()})
