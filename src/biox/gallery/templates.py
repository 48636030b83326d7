"""Template formats: which algorithms a gallery understands and how their bytes are read.

A template is accepted only when its algorithm is known and its length is exactly what
that algorithm produces; vectors must be finite and non-zero. Each failure has its own
reason code, because "your matcher sent 768-d face vectors" is something a partner's
on-call engineer can act on and "bad input" is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from biox.wire.biometrics import ALGORITHMS, IRIS_COLS, IRIS_ROWS, Algorithm
from biox.wire.errors import PermanentError, Reason

if TYPE_CHECKING:
    from biox.wire.messages import Biometrics


def algorithm(name: str, modality: str) -> Algorithm:
    algo = ALGORITHMS.get(name)
    if algo is None or algo.modality != modality:
        raise PermanentError(Reason.unknown_algorithm, f"{modality} algorithm {name!r}")
    return algo


def vector(name: str, modality: str, data: bytes) -> np.ndarray:
    """A float32 template as an L2-normalised vector, or a specific rejection."""
    algo = algorithm(name, modality)
    if len(data) != algo.nbytes:
        raise PermanentError(
            Reason.template_size,
            f"{modality} {name}: {len(data)} bytes, expected {algo.nbytes} ({algo.dim} x float32)",
        )
    vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise PermanentError(Reason.template_invalid, f"{modality} {name}: NaN or infinite value")
    norm = float(np.linalg.norm(vec))
    if norm < 1e-12:
        raise PermanentError(Reason.template_invalid, f"{modality} {name}: all-zero vector")
    return vec / norm


def iris_code(name: str, code: bytes, mask: bytes) -> tuple[np.ndarray, np.ndarray]:
    algo = algorithm(name, "iris")
    for label, part in (("code", code), ("mask", mask)):
        if len(part) != algo.nbytes:
            raise PermanentError(
                Reason.template_size,
                f"iris {label} {name}: {len(part)} bytes, expected {algo.nbytes}",
            )
    m = np.frombuffer(mask, dtype=np.uint8)
    if not m.any():
        raise PermanentError(Reason.template_invalid, "iris mask marks no valid bit")
    return np.frombuffer(code, dtype=np.uint8).copy(), m.copy()


def check(biometrics: Biometrics) -> None:
    """Every template readable by its algorithm, or the first one's specific rejection:
    intake refuses a bad template before it is sent to partners or enrolled."""
    for f in biometrics.fingerprints:
        vector(f.algorithm, "finger", f.template)
    if biometrics.face is not None:
        vector(biometrics.face.algorithm, "face", biometrics.face.template)
    for i in biometrics.irises:
        iris_code(i.algorithm, i.code, i.mask)


def vector_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def rotate_iris(packed: np.ndarray, shift: int) -> np.ndarray:
    """Circularly shift a packed iris code along the angular axis by ``shift`` samples."""
    bits = np.unpackbits(packed).reshape(IRIS_ROWS, IRIS_COLS)
    return np.packbits(np.roll(bits, shift, axis=1).reshape(-1))
