"""Matcher: thresholds, the ignored band, low-quality matches with ties, empty targets."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retina_np.detection import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_anchors


def match_reference(iou, high, low, allow_low_quality_matches):
    """The matcher's rules written out per anchor, in plain Python."""
    num_gt, num_anchors = iou.shape
    best = [max(range(num_gt), key=lambda m: (iou[m, r], -m)) for r in range(num_anchors)]
    matches = []
    for r in range(num_anchors):
        v = iou[best[r], r]
        matches.append(best[r] if v >= high else BETWEEN_THRESHOLDS if v >= low
                       else BELOW_LOW_THRESHOLD)
    if allow_low_quality_matches:
        for m in range(num_gt):
            for r in range(num_anchors):
                if iou[m, r] == iou[m].max():  # every tie
                    matches[r] = best[r]
    return np.array(matches, dtype=np.int64)


def test_thresholds_and_ignored_band():
    #                 anchors:   0     1     2     3     4     5
    iou = np.array([[0.70, 0.50, 0.49, 0.40, 0.39, 0.00],
                    [0.10, 0.20, 0.30, 0.20, 0.10, 0.80]])
    matches = match_anchors(iou, 0.5, 0.4, allow_low_quality_matches=False)
    expected = [0, 0, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, 1]
    np.testing.assert_array_equal(matches, expected)
    assert matches.dtype == np.int64


def test_low_quality_matches_claim_every_tie():
    # gt 0 never reaches 0.5; its best IoU 0.3 is shared by anchors 1 and 3.
    iou = np.array([[0.1, 0.3, 0.2, 0.3, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.9]])
    without = match_anchors(iou, allow_low_quality_matches=False)
    np.testing.assert_array_equal(without, [-1, -1, -1, -1, 1])
    np.testing.assert_array_equal(match_anchors(iou), [-1, 0, -1, 0, 1])


def test_low_quality_match_goes_to_the_anchors_own_best_box():
    # gt 1's best anchor is 0, but anchor 0 overlaps gt 0 more: as in torchvision, the
    # claimed anchor is matched to its own best box (gt 0), not to the claiming one.
    iou = np.array([[0.45, 0.0],
                    [0.35, 0.1]])
    np.testing.assert_array_equal(match_anchors(iou), [0, BELOW_LOW_THRESHOLD])


def test_empty_targets_and_anchors():
    np.testing.assert_array_equal(match_anchors(np.zeros((0, 4))), [BELOW_LOW_THRESHOLD] * 4)
    assert match_anchors(np.zeros((3, 0))).shape == (0,)
    with pytest.raises(ValueError):
        match_anchors(np.zeros((1, 1)), high=0.3, low=0.5)


# IoU values from a small set, so that ties (between boxes and between anchors) are common.
_iou_levels = st.sampled_from([0.0, 0.1, 0.3, 0.4, 0.45, 0.5, 0.7, 1.0])


@given(
    st.tuples(st.integers(1, 5), st.integers(1, 12), st.booleans()).flatmap(
        lambda mrd: hnp.arrays(
            np.float64, mrd[:2], elements=_iou_levels if mrd[2] else st.floats(0, 1)
        )
    ),
    st.booleans(),
)
def test_equals_reference(iou, allow_low_quality_matches):
    expected = match_reference(iou, 0.5, 0.4, allow_low_quality_matches)
    np.testing.assert_array_equal(match_anchors(iou, 0.5, 0.4, allow_low_quality_matches),
                                  expected)
    np.testing.assert_array_equal(
        match_anchors(iou.astype(np.float32), 0.5, 0.4, allow_low_quality_matches),
        match_reference(iou.astype(np.float32), 0.5, 0.4, allow_low_quality_matches),
    )


@pytest.mark.torch
def test_equals_torchvision_matcher():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import Matcher

    rng = np.random.default_rng(0)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for trial in range(20):
        shape = (int(rng.integers(1, 8)), int(rng.integers(1, 300)))
        if trial % 2:
            iou = rng.choice([0.0, 0.2, 0.4, 0.45, 0.5, 0.6], size=shape).astype(np.float32)
        else:
            iou = rng.uniform(0, 1, shape).astype(np.float32)
        expected = matcher(torch.from_numpy(iou)).numpy()
        np.testing.assert_array_equal(match_anchors(iou), expected)
