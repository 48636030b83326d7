"""Biometric templates in a message, and the rules their bytes follow.

The rules are part of the contract: they appear in the JSON Schemas (``x-biox-template``)
and in docs/integration.md, and intake checks them (``templates.check``) before anything
is sent to a partner or enrolled. The algorithms and their sizes are declared here, with
no numpy: ``gallery/templates.py`` reads the bytes by these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic.config import JsonDict

from biox.wire.fields import Bytes, Model, Short

IRIS_ROWS = 8  # radial bands
IRIS_COLS = 256  # angular samples; rotation of the eye is a circular shift along this axis


@dataclass(frozen=True)
class Algorithm:
    name: str
    modality: Literal["face", "finger", "iris"]
    dim: int  # vector length, or bits for an iris code

    @property
    def nbytes(self) -> int:
        return self.dim * 4 if self.modality != "iris" else self.dim // 8


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("biox-face-512/1", "face", 512),
        Algorithm("biox-finger-192/1", "finger", 192),
        Algorithm("biox-iris-2048/1", "iris", IRIS_ROWS * IRIS_COLS),
    )
}
FACE = ALGORITHMS["biox-face-512/1"]
FINGER = ALGORITHMS["biox-finger-192/1"]
IRIS = ALGORITHMS["biox-iris-2048/1"]


_FLOATS = (
    "float32, little-endian (IEEE 754), finite, not all zero; any scale with an L2 norm of at "
    "least 1e-12 (biox normalises)"
)
FINGER_RULE: JsonDict = {
    "algorithm": FINGER.name,
    "bytes": FINGER.nbytes,
    "layout": f"{FINGER.dim} {_FLOATS}",
}
FACE_RULE: JsonDict = {
    "algorithm": FACE.name,
    "bytes": FACE.nbytes,
    "layout": f"{FACE.dim} {_FLOATS}",
}
IRIS_RULE: JsonDict = {
    "algorithm": IRIS.name,
    "bytes": IRIS.nbytes,
    "layout": f"{IRIS.dim} bits = {IRIS_ROWS} radial bands x {IRIS_COLS} angular samples, "
    "row-major (band 0 first); bits packed most significant bit first (numpy.packbits "
    "order)",
    "mask": "same size and layout as the code; 1 = the code bit is valid, 0 = occluded "
    "(eyelid, lash, reflection); at least one bit must be 1",
}


class Fingerprint(Model):
    position: int = Field(ge=1, le=10, description="ANSI/NIST finger position 1-10")
    algorithm: Short = Field(
        description="template algorithm", json_schema_extra={"enum": [FINGER.name]}
    )
    template: Bytes = Field(
        description=f"exactly {FINGER.nbytes} bytes: {FINGER_RULE['layout']}",
        json_schema_extra={"x-biox-template": FINGER_RULE},
    )
    quality: int = Field(default=50, ge=0, le=100)


class Face(Model):
    algorithm: Short = Field(
        description="template algorithm", json_schema_extra={"enum": [FACE.name]}
    )
    template: Bytes = Field(
        description=f"exactly {FACE.nbytes} bytes: {FACE_RULE['layout']}",
        json_schema_extra={"x-biox-template": FACE_RULE},
    )
    quality: int = Field(default=50, ge=0, le=100)


class Iris(Model):
    eye: Literal["left", "right"]
    algorithm: Short = Field(
        description="template algorithm", json_schema_extra={"enum": [IRIS.name]}
    )
    code: Bytes = Field(
        description=f"exactly {IRIS.nbytes} bytes: {IRIS_RULE['layout']}",
        json_schema_extra={"x-biox-template": IRIS_RULE},
    )
    mask: Bytes = Field(
        description=f"exactly {IRIS.nbytes} bytes: {IRIS_RULE['mask']}",
        json_schema_extra={"x-biox-template": IRIS_RULE},
    )


class Biometrics(Model):
    fingerprints: list[Fingerprint] = Field(default_factory=list, max_length=10)
    face: Face | None = None
    irises: list[Iris] = Field(default_factory=list, max_length=2)

    def is_empty(self) -> bool:
        return not self.fingerprints and self.face is None and not self.irises


class Evidence(Model):
    """How strong a comparison is, in terms a requester can use: present when the
    provider has calibrated its scores (docs/matching.md, "Decision quality")."""

    log_lr: float = Field(description="log (natural) of the likelihood ratio, summed")
    modalities: dict[str, float] = Field(default_factory=dict, description="log-LR each")
    fpir: float = Field(ge=0, le=1, description="FPIR of a threshold at this score")
    gallery_size: int = Field(ge=0, description="identities searched: fpir is at this size")
