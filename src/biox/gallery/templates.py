"""Template formats: which algorithms a gallery understands and how their bytes are read.

A template is accepted only when its algorithm is known and its length is exactly what
that algorithm produces; vectors must be finite and non-zero. Each failure has its own
reason code, because "your matcher sent 768-d face vectors" is something a partner's
on-call engineer can act on and "bad input" is not.
"""

from __future__ import annotations

import math
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
    vec, norm = _read(name, modality, data)
    return vec / norm


def _read(name: str, modality: str, data: bytes) -> tuple[np.ndarray, float]:
    """A template's values and their L2 norm, once its bytes are known to be a vector.

    Intake reads three templates of every submission and the matcher three of every probe,
    so the usual case takes one pass: the float32 sum of squares (what ``np.linalg.norm``
    computes) is finite and non-zero only if every value is finite and one is not zero.
    Only a template that fails it is read again, for its reason; one whose values are
    finite but whose squares pass float32's range is normalised in float64 (and returned
    so, with a norm of 1), not divided by infinity into an all-zero vector, which matches
    nothing and says nothing."""
    algo = algorithm(name, modality)
    if len(data) != algo.nbytes:
        raise PermanentError(
            Reason.template_size,
            f"{modality} {name}: {len(data)} bytes, expected {algo.nbytes} ({algo.dim} x float32)",
        )
    vec = np.frombuffer(data, dtype="<f4")
    with np.errstate(over="ignore"):  # squares past float32: handled below
        norm = float(np.sqrt(vec.dot(vec)))
    if 1e-12 <= norm < math.inf:
        return vec, norm
    if not np.all(np.isfinite(vec)):
        raise PermanentError(Reason.template_invalid, f"{modality} {name}: NaN or infinite value")
    wide = vec.astype(np.float64)
    norm = math.sqrt(float(wide.dot(wide)))
    if norm < 1e-12:
        if not vec.any():
            raise PermanentError(Reason.template_invalid, f"{modality} {name}: all-zero vector")
        raise PermanentError(  # not zero, but too small for a float32 direction to be read
            Reason.template_invalid,
            f"{modality} {name}: values too small (L2 norm {norm:.1e}, at least 1e-12 needed)",
        )
    return (wide / norm).astype(np.float32), 1.0  # its norm may be past float32's range too


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
        _read(f.algorithm, "finger", f.template)
    if biometrics.face is not None:
        _read(biometrics.face.algorithm, "face", biometrics.face.template)
    for i in biometrics.irises:
        iris_code(i.algorithm, i.code, i.mask)


def vector_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def rotate_iris(packed: np.ndarray, shift: int) -> np.ndarray:
    """Circularly shift a packed iris code along the angular axis by ``shift`` samples."""
    bits = np.unpackbits(packed).reshape(IRIS_ROWS, IRIS_COLS)
    return np.packbits(np.roll(bits, shift, axis=1).reshape(-1))
