"""Score normalisation per modality and sum-rule fusion.

Raw scores live on different scales (cosine for face and finger, fractional Hamming
distance for iris), so each is mapped to [0, 1] by min-max bounds chosen from the score
distributions: ``lo`` sits above the best impostor score expected in a million-identity
gallery, ``hi`` at a typical genuine score. The fused score is the mean of the
normalised scores of the modalities that both probe and candidate have (the sum rule
divided by the count, so thresholds mean the same whatever modalities a query carries).
See docs/matching.md for the distributions these bounds come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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
