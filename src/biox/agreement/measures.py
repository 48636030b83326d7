"""The agreement's measures as configuration (§27-28): what the annual review reports and
reconciles, and which quality checks run with which limits. Both participants of a pair
load the same file (``BIOX_AGREEMENT``, ``deploy/agreement.toml``), so that their reviews
measure one thing; a signed review names the file's digest (``agreement.report``), and a
reconciliation refuses reviews made under different measures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from biox.config import read_toml

Check = Literal[
    "expired",
    "provenance",
    "onward_disclosure",
    "notice_overdue",
    "incident_overdue",
    "review_overdue",
    "audit_chain",
    "need_to_know",
]
CHECKS: tuple[Check, ...] = Check.__args__  # type: ignore[attr-defined]


class Review(BaseModel):
    latency_percentiles: list[int] = Field(default=[50, 95, 99], min_length=1)
    reconcile: list[Literal["queries", "outcomes"]] = Field(default=["queries", "outcomes"])


class Checks(BaseModel):
    enabled: list[Check] = Field(default_factory=lambda: list(CHECKS))
    review_overdue_hours: float = Field(default=24.0, gt=0)


class Measures(BaseModel):
    review: Review = Field(default_factory=Review)
    checks: Checks = Field(default_factory=Checks)
    #: SHA-256 of the file the measures were read from ("" for the defaults)
    digest: str = ""

    @classmethod
    def load(cls, path: Path) -> Measures:
        """The measures in ``path``; the defaults when there is no such file."""
        if not path.exists():
            return cls()
        raw = path.read_bytes()
        body = read_toml(path, "BIOX_AGREEMENT")
        return cls(**body, digest=hashlib.sha256(raw).hexdigest())
