"""NMS: order, the two defining properties, a brute-force reference, torchvision."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retina_np.detection import batched_nms, box_iou, nms


@st.composite
def detections(draw, max_n=40, num_classes=3, tied=False):
    """Boxes in a 100x100 area (sizes 1..50, so overlaps are common), distinct scores (or,
    with ``tied``, scores from three values, so that most boxes share theirs), labels in
    0..num_classes-1, and a threshold."""
    n = draw(st.integers(0, max_n))
    corner = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(0, 100)))
    size = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(1, 50)))
    if tied:
        scores = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.25, 0.5, 1.0])))
    else:
        scores = np.array(draw(st.permutations(range(n))), dtype=np.float64) / max(n, 1)
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.95]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(dtype)
    return boxes, scores.astype(dtype), labels, threshold


def nms_reference(boxes, scores, labels, threshold):
    """Greedy NMS as written in textbooks: best box first, drop its same-class overlaps.

    ``sorted`` is stable: of equal scores the lower index comes first."""
    iou = box_iou(boxes, boxes)
    remaining = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [j for j in remaining if labels[j] != labels[best] or iou[best, j] <= threshold]
    return np.array(keep, dtype=np.int64)


def check_nms_properties(keep, boxes, scores, labels, threshold):
    assert keep.dtype == np.int64
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0), "kept boxes must come by descending score"
    tied = np.diff(scores[keep]) == 0
    assert np.all(np.diff(keep)[tied] > 0), "kept boxes of equal score must keep input order"
    iou = box_iou(boxes, boxes)
    same_class = labels[:, None] == labels[None, :]
    kept_pairs = (iou[np.ix_(keep, keep)] > threshold) & same_class[np.ix_(keep, keep)]
    np.fill_diagonal(kept_pairs, False)
    assert not kept_pairs.any(), "two kept boxes of one class overlap above the threshold"
    for j in np.setdiff1d(np.arange(len(scores)), keep):
        # Boxes before j in the order: a higher score, or an equal one and a lower index.
        before = (scores[keep] > scores[j]) | ((scores[keep] == scores[j]) & (keep < j))
        suppressors = keep[before & (labels[keep] == labels[j])]
        assert (iou[suppressors, j] > threshold).any(), f"box {j} was dropped for nothing"


@given(st.one_of(detections(), detections(tied=True)))
def test_nms_properties_and_reference(case):
    boxes, scores, labels, threshold = case
    single = np.zeros_like(labels)
    keep = nms(boxes, scores, threshold)
    check_nms_properties(keep, boxes, scores, single, threshold)
    np.testing.assert_array_equal(keep, nms_reference(boxes, scores, single, threshold))


@given(st.one_of(detections(), detections(tied=True)))
def test_batched_nms_properties_and_reference(case):
    boxes, scores, labels, threshold = case
    keep = batched_nms(boxes, scores, labels, threshold)
    check_nms_properties(keep, boxes, scores, labels, threshold)
    np.testing.assert_array_equal(keep, nms_reference(boxes, scores, labels, threshold))
    # Per-class NMS is NMS run class by class.
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        np.testing.assert_array_equal(
            np.sort(keep[labels[keep] == c]), np.sort(members[nms(boxes[members],
                                                                  scores[members], threshold)])
        )


@given(st.one_of(detections(), detections(tied=True)), st.integers(0, 10))
def test_max_keep_is_a_prefix(case, max_keep):
    boxes, scores, labels, threshold = case
    np.testing.assert_array_equal(
        nms(boxes, scores, threshold, max_keep=max_keep), nms(boxes, scores, threshold)[:max_keep]
    )
    np.testing.assert_array_equal(
        batched_nms(boxes, scores, labels, threshold, max_keep=max_keep),
        batched_nms(boxes, scores, labels, threshold)[:max_keep],
    )


def test_ties_keep_input_order_and_empty_input():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 1])
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)


@pytest.mark.torch
@pytest.mark.parametrize("n, dtype", [(500, np.float64), (5000, np.float32)])
def test_equals_torchvision(n, dtype):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(n)
    xy = rng.uniform(0, 400, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 120, (n, 2))], 1).astype(dtype)
    scores = rng.permutation(n).astype(dtype) / n  # distinct
    labels = rng.integers(0, 7, n)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(nms(boxes, scores, threshold),
                                      ops.nms(tb, ts, threshold).numpy())
        # float64 for n = 500: torchvision offsets coordinates by class for small inputs,
        # which costs float32 precision; for 5000 it runs per class, exactly like ours.
        np.testing.assert_array_equal(
            batched_nms(boxes, scores, labels, threshold),
            ops.batched_nms(tb, ts, torch.from_numpy(labels), threshold).numpy(),
        )
