from __future__ import annotations

import numpy as np

from biox.gallery.fusion import NORMALISERS, Decision, decide, fuse


def test_normalisers_clip_to_unit_interval():
    face = NORMALISERS["face"]
    assert face(np.array([-1.0, face.lo, face.hi, 1.0])).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_sum_rule_averages_only_modalities_both_sides_have():
    fused = fuse({"face": np.array([1.0, 0.2]), "iris": np.array([np.nan, 0.8])})
    assert np.allclose(fused, [1.0, 0.5])


def test_nothing_in_common_fuses_to_zero():
    assert fuse({"face": np.array([np.nan])}).tolist() == [0.0]


def test_thresholds_split_match_review_no_match():
    assert decide(0.9, 0.55, 0.3) is Decision.match
    assert decide(0.55, 0.55, 0.3) is Decision.match
    assert decide(0.4, 0.55, 0.3) is Decision.review
    assert decide(0.1, 0.55, 0.3) is Decision.no_match
