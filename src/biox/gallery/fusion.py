"""Score normalisation per modality and sum-rule fusion.

Raw scores live on different scales (cosine for face and finger, fractional Hamming
distance for iris), so each is mapped to [0, 1] by min-max bounds chosen from the score
distributions: ``lo`` sits above the best impostor score expected in a million-identity
gallery, ``hi`` at a typical genuine score. The fused score is the mean of the
normalised scores of the modalities that both probe and candidate have (the sum rule
divided by the count, so thresholds mean the same whatever modalities a query carries).
See docs/matching.md for the distributions these bounds come from.

That mean rule is the fallback. Once a participant has calibrated its scores
(``biox calibrate``, ``gallery/calibration.py``), the decision score is the sum of
per-element log-likelihood ratios instead (``calibration.LikelihoodRatio``). Both are a
``Scorer``: raw per-element similarities in, one decision score per candidate out, and
the normalised per-modality scores that the wire's ``scores`` carry either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Normaliser:
    lo: float
    hi: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(raw, np.float32) - self.lo) / (self.hi - self.lo)
        clipped: np.ndarray = np.clip(scaled, 0.0, 1.0)
        return clipped


# raw similarity: cosine for face and finger, 1 - fractional Hamming distance for iris
NORMALISERS: dict[str, Normaliser] = {
    "face": Normaliser(0.25, 0.75),
    "finger": Normaliser(0.35, 0.80),
    "iris": Normaliser(0.60, 0.80),
}


def fuse(group_scores: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over modalities of normalised scores; NaN marks a modality one side lacks."""
    stacked = np.stack(list(group_scores.values()))
    present = ~np.isnan(stacked)
    counts = present.sum(axis=0)
    total = np.where(present, stacked, 0.0).sum(axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), 0.0).astype(np.float32)


def modality_of(element: str) -> str:
    """``finger.7`` -> ``finger``: an element is one finger, one eye, or the face."""
    return element.split(".", 1)[0]


def group_mean(parts: list[np.ndarray]) -> np.ndarray:
    """Mean over the elements (fingers, eyes) both sides have; NaN where they share none."""
    stacked = np.stack(parts)
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(stacked)
        counts = present.sum(axis=0)
        total = np.where(present, stacked, 0.0).sum(axis=0)
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def by_modality(raw: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {}
    for element, values in raw.items():
        groups.setdefault(modality_of(element), []).append(values)
    return groups


def normalised(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per modality, the mean of its elements' min-max normalised scores (NaN: none)."""
    return {
        modality: group_mean([NORMALISERS[modality](v) for v in parts])
        for modality, parts in by_modality(raw).items()
    }


@dataclass
class Fused:
    score: np.ndarray  # the decision score per candidate
    scores: dict[str, np.ndarray]  # normalised per modality, NaN where not shared
    evidence: dict[str, np.ndarray] | None = None  # log-LR per modality, when calibrated


class Scorer(Protocol):
    """Raw element similarities (``face``, ``finger.P``, ``iris.EYE``; NaN where one side
    lacks the element) to a decision score per candidate."""

    name: str

    def __call__(self, raw: dict[str, np.ndarray]) -> Fused: ...


class MeanRule:
    """Today's rule without a calibration: the mean of normalised modality scores."""

    name = "mean"

    def __call__(self, raw: dict[str, np.ndarray]) -> Fused:
        scores = normalised(raw)
        return Fused(fuse(scores), scores)


class Decision(StrEnum):
    match = "match"
    review = "review"
    no_match = "no_match"


def decide(fused: float, high: float, low: float) -> Decision:
    if fused >= high:
        return Decision.match
    if fused < low:
        return Decision.no_match
    return Decision.review
