"""Synthetic population: deterministic identities, galleries and encounters from a seed.

Noise model (docs/matching.md has the measured distributions):

* Each person has a *true* template per modality: a standard normal vector, L2-normalised
  (face 512-d, each finger position 192-d), and for some an iris code of 2048 random bits.
* A *capture* (an enrolment or an encounter) is ``normalise(true + s * g / sqrt(d))`` with
  ``g`` standard normal and ``s = 0.25 + 0.9 * (1 - quality / 100)``. Two captures of the
  same person (genuine pair) have cosine about ``1 / sqrt((1 + s1^2)(1 + s2^2))``: 0.62 at
  quality 40 on both sides, 0.92 at quality 95. Two different people (impostor pair) have
  cosine ~ N(0, 1/d): sd 0.044 for faces, 0.072 for fingers.
* An iris capture flips each bit with probability ``0.08 + 0.2 * (1 - quality / 100)``,
  rotates the eye by up to 4 angular samples and masks eyelid-occluded bits; a genuine pair
  has a fractional Hamming distance near 0.2-0.35, an impostor pair near 0.5.

Membership of a person in a participant's gallery is a fixed hash of the person number,
so galleries overlap (about 45 % of people are in each; 20 % in any two) and an encounter
system can draw people its partners know and people nobody knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np

from biox.gallery.templates import vector_bytes
from biox.wire.biometrics import FACE, FINGER, IRIS, IRIS_COLS, IRIS_ROWS
from biox.wire.messages import (
    Biographic,
    Biometrics,
    Encounter,
    EncounterType,
    Face,
    Fingerprint,
    Iris,
    SubjectStatus,
)

CHUNK = 512
TWO_FINGERS = (2, 7)  # right and left index fingers
MEMBER_RATE = 450  # per mille of the population in each gallery
_SALT = {"us": 17, "mx": 389, "sv": 733}
_FAMILY = [
    "García",
    "Hernández",
    "López",
    "Martínez",
    "Rodríguez",
    "Pérez",
    "Sánchez",
    "Ramírez",
    "Cruz",
    "Flores",
    "Gómez",
    "Morales",
    "Reyes",
    "Díaz",
    "Ortiz",
    "Singh",
    "Kumar",
    "Chen",
    "Wang",
    "Okafor",
    "Mensah",
    "Diallo",
    "Haile",
    "Tesfaye",
]
_GIVEN = [
    "María",
    "José",
    "Juan",
    "Ana",
    "Luis",
    "Carlos",
    "Rosa",
    "Miguel",
    "Elena",
    "Jorge",
    "Sofía",
    "Daniel",
    "Lucía",
    "Pedro",
    "Amit",
    "Wei",
    "Ngozi",
    "Kofi",
    "Aminata",
    "Yonas",
    "Fatima",
    "Samuel",
    "Grace",
    "Omar",
]
_THIRD_COUNTRIES = ["gt", "hn", "ni", "co", "ve", "ec", "cu", "ht", "in", "cn", "er", "sn", "gh"]
_DEROGATORY = [
    "prior removal order",
    "fraudulent travel document",
    "visa overstay",
    "smuggling investigation",
    "prior asylum claim denied",
]


def member_of(code: str, persons: np.ndarray) -> np.ndarray:
    """Whether each person is in ``code``'s gallery: a fixed hash, so galleries overlap."""
    salt = _SALT.get(code, sum(map(ord, code)))
    x = persons.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
    x ^= x >> np.uint64(30)  # splitmix64 finaliser: independent bits per salt
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(1000)) < MEMBER_RATE


def population_for(gallery_size: int) -> int:
    """How many people must exist for a gallery to hold ``gallery_size`` of them."""
    return int(gallery_size * 1000 / MEMBER_RATE * 1.02) + CHUNK


def noise_scale(quality: np.ndarray | int) -> np.ndarray:
    return 0.25 + 0.9 * (1.0 - np.asarray(quality, np.float32) / 100.0)


def _normalise(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return unit


@dataclass
class Chunk:
    """True templates and attributes of people ``start .. start + CHUNK``."""

    start: int
    face: np.ndarray  # (CHUNK, 512)
    fingers: dict[int, np.ndarray]  # position -> (CHUNK, 192)
    tenprint: np.ndarray  # bool
    has_iris: np.ndarray  # bool
    iris: dict[str, np.ndarray]  # eye -> (CHUNK, 256) packed bits
    attrs: np.ndarray  # (CHUNK, 8) int draws for biographic data


@lru_cache(maxsize=64)
def _attributes(seed: int, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk ``number``'s tenprint and iris flags and biographic draws: a stream of their
    own, so that ``person`` reads them without drawing every template of the chunk."""
    attrs_rng = np.random.default_rng([seed, 4, number])
    tenprint = attrs_rng.random(CHUNK) < 0.2
    has_iris = attrs_rng.random(CHUNK) < 0.3
    return tenprint, has_iris, attrs_rng.integers(0, 1 << 30, size=(CHUNK, 8))


@lru_cache(maxsize=64)
def chunk(seed: int, number: int, positions: tuple[int, ...] = tuple(range(1, 11))) -> Chunk:
    def rng(*stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, *stream, number])

    face = _normalise(rng(1).standard_normal((CHUNK, FACE.dim), dtype=np.float32))
    fingers = {
        p: _normalise(rng(2, p).standard_normal((CHUNK, FINGER.dim), dtype=np.float32))
        for p in positions
    }
    tenprint, has_iris, attrs = _attributes(seed, number)
    iris = {
        eye: rng(3, i).integers(0, 256, size=(CHUNK, IRIS.nbytes), dtype=np.uint8)
        for i, eye in enumerate(("left", "right"))
    }
    return Chunk(number * CHUNK, face, fingers, tenprint, has_iris, iris, attrs)


def _capture_vectors(true: np.ndarray, quality: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = true.shape[-1]
    noise = rng.standard_normal(true.shape, dtype=np.float32) / np.sqrt(d)
    return _normalise(true + noise_scale(quality)[:, None] * noise)


def _capture_iris(code: np.ndarray, quality: int, rng: np.random.Generator) -> tuple[bytes, bytes]:
    bits = np.unpackbits(code).reshape(IRIS_ROWS, IRIS_COLS)
    flip = rng.random(bits.shape) < (0.08 + 0.2 * (1 - quality / 100))
    bits = np.roll(bits ^ flip, int(rng.integers(-4, 5)), axis=1)
    mask = np.ones_like(bits)
    lid = int(rng.integers(0, 3))  # eyelid covers up to two outer bands partly
    if lid:
        start = int(rng.integers(0, IRIS_COLS))
        mask[IRIS_ROWS - lid :, np.arange(start, start + IRIS_COLS // 3) % IRIS_COLS] = 0
    return np.packbits(bits).tobytes(), np.packbits(mask).tobytes()


@dataclass
class Person:
    number: int
    biographic: Biographic
    derogatory: list[str]
    tenprint: bool
    has_iris: bool


def person(seed: int, number: int) -> Person:
    tenprint, has_iris, attrs = _attributes(seed, number // CHUNK)
    r = number % CHUNK
    a = attrs[r]
    born = datetime(1950, 1, 1) + timedelta(days=int(a[3] % 20000))
    bio = Biographic(
        family_name=_FAMILY[a[0] % len(_FAMILY)],
        given_names=_GIVEN[a[1] % len(_GIVEN)],
        date_of_birth=born.date().isoformat(),
        sex="F" if a[2] % 2 else "M",
        claimed_nationality=_THIRD_COUNTRIES[a[4] % len(_THIRD_COUNTRIES)],
        document_number=f"P{a[5] % 10**8:08d}",
    )
    derogatory = [_DEROGATORY[a[6] % len(_DEROGATORY)]] if a[7] % 10 == 0 else []
    return Person(number, bio, derogatory, bool(tenprint[r]), bool(has_iris[r]))


def sealed(number: int) -> bool:
    """A few records are under seal (an open investigation, a protected person): the
    provider's policy declines to release them (§9). About 2 % of people, everywhere."""
    return number % 47 == 11


def identity_ref(code: str, number: int) -> str:
    return f"{code.upper()}-{number:09d}"


def number_of(code: str, ref: str) -> int | None:
    """The person behind a synthetic gallery ref of ``code``; None for anything else
    (query data the participant enrolled, another participant's ref)."""
    prefix = f"{code.upper()}-"
    tail = ref[len(prefix) :]
    return int(tail) if ref.startswith(prefix) and tail.isdigit() else None


def poor_capture(seed: int, number: int, context: int) -> Biometrics:
    """One smudged index finger and nothing else: often lands between the thresholds."""
    full = capture(seed, number, context, quality=5)
    return Biometrics(fingerprints=[f for f in full.fingerprints if f.position == TWO_FINGERS[0]])


def capture(seed: int, number: int, context: int, quality: int = 75) -> Biometrics:
    """A fresh encounter capture of one person (face, two or ten fingers, maybe iris)."""
    c = chunk(seed, number // CHUNK)
    r = number - c.start
    rng = np.random.default_rng([seed, 6, context, number])
    q = np.array([quality])
    face = _capture_vectors(c.face[r : r + 1], q, rng)[0]
    positions = range(1, 11) if c.tenprint[r] else TWO_FINGERS
    fingers = [
        Fingerprint(
            position=p,
            algorithm=FINGER.name,
            template=vector_bytes(_capture_vectors(c.fingers[p][r : r + 1], q, rng)[0]),
            quality=quality,
        )
        for p in positions
    ]
    irises = []
    if c.has_iris[r]:
        for eye in ("left", "right"):
            cd, mk = _capture_iris(c.iris[eye][r], quality, rng)
            irises.append(Iris(eye=eye, algorithm=IRIS.name, code=cd, mask=mk))
    return Biometrics(
        face=Face(algorithm=FACE.name, template=vector_bytes(face), quality=quality),
        fingerprints=fingers,
        irises=irises,
    )


def stranger(seed: int, gallery_sizes: dict[str, int], rng: np.random.Generator) -> int:
    """A person in no participant's gallery (so any query about them is non-mated)."""
    top = max(population_for(n) for n in gallery_sizes.values()) * 2
    while True:
        n = int(rng.integers(top, top * 2))
        if not any(member_of(code, np.array([n]))[0] for code in gallery_sizes):
            return n


def known_to(code: str, size: int, rng: np.random.Generator) -> int:
    """A person enrolled in ``code``'s gallery of ``size`` (so a query to it is mated)."""
    while True:
        n = int(rng.integers(0, population_for(size) - CHUNK))
        if member_of(code, np.array([n]))[0] and n <= last_member(code, size):
            return n


@lru_cache(maxsize=16)
def last_member(code: str, size: int) -> int:
    persons = np.arange(population_for(size) + CHUNK)
    return int(np.flatnonzero(member_of(code, persons))[size - 1])


def encounter_here(code: str, rng: np.random.Generator) -> Encounter:
    when = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=int(rng.integers(0, 30000)))
    kind = list(EncounterType)[int(rng.integers(0, len(EncounterType)))]
    return Encounter(
        encountered_at=when,
        country=code,
        location=f"{code.upper()}-POE-{int(rng.integers(1, 40)):02d}",
        type=kind,
    )


def status_for(requester: str, partners: list[str], excluded: str | None) -> SubjectStatus:
    """Subject status: a third-country national, or one of the §4 exclusions."""
    if excluded == "citizen":
        return SubjectStatus(citizenships=[requester])
    if excluded == "partner_citizen" and partners:
        return SubjectStatus(citizenships=[partners[0]])
    if excluded == "resident":
        return SubjectStatus(citizenships=["gt"], permanent_residences=[requester])
    return SubjectStatus(
        citizenships=[_THIRD_COUNTRIES[sum(map(ord, requester)) % len(_THIRD_COUNTRIES)]]
    )


def in_gallery(code: str, size: int, number: int) -> bool:
    return bool(member_of(code, np.array([number]))[0]) and number <= last_member(code, size)
