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


def test_a_score_exactly_at_the_low_threshold_goes_to_review():
    assert decide(0.3, 0.55, 0.3) is Decision.review
    assert decide(0.2999, 0.55, 0.3) is Decision.no_match
    assert decide(0.5499, 0.55, 0.3) is Decision.review


def test_normalisers_map_their_bounds_linearly():
    for n in NORMALISERS.values():
        mid = (n.lo + n.hi) / 2
        assert np.allclose(n(np.array([n.lo, mid, n.hi])), [0.0, 0.5, 1.0])


def test_fusion_is_the_mean_over_three_modalities():
    fused = fuse(
        {
            "face": np.array([0.9, np.nan]),
            "finger": np.array([0.6, 0.3]),
            "iris": np.array([0.3, np.nan]),
        }
    )
    assert np.allclose(fused, [0.6, 0.3]) and fused.dtype == np.float32
