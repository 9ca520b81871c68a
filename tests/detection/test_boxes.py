"""Box geometry: IoU properties and reference, coder round trip, clipping, target checks."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retina_np.detection import (
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    validate_boxes,
)
from retina_np.detection.boxes import _DEFAULT_SCALE_CLAMP


@st.composite
def boxes_strategy(draw, max_n=8, min_size=0.0, dtype=np.float64):
    """(n, 4) boxes: corners in [-50, 150), sides in [min_size, 80]."""
    n = draw(st.integers(0, max_n))
    corner = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(-50, 150)))
    size = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(min_size, 80)))
    return np.concatenate([corner, corner + size], axis=1).astype(dtype)


def iou_reference(a, b):
    """Plain Python IoU, the textbook formula, for every pair."""
    out = np.zeros((len(a), len(b)))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@given(boxes_strategy(), boxes_strategy())
def test_iou_in_unit_interval_symmetric_and_equal_to_reference(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert np.all((iou >= 0) & (iou <= 1))
    np.testing.assert_array_equal(iou, box_iou(b, a).T)
    np.testing.assert_allclose(iou, iou_reference(a, b), rtol=1e-12, atol=1e-15)


@given(boxes_strategy(min_size=0.5))
def test_iou_of_identical_boxes_is_one(a):
    for dtype in (np.float32, np.float64):
        boxes = a.astype(dtype)
        iou = box_iou(boxes, boxes)
        assert iou.dtype == dtype
        np.testing.assert_array_equal(np.diag(iou), np.ones(len(a), dtype))


def test_iou_keeps_dtype_and_handles_empty():
    a = np.array([[0, 0, 10, 10]], np.float32)
    assert box_iou(a, a).dtype == np.float32
    assert box_iou(a.astype(np.float64), a.astype(np.float64)).dtype == np.float64
    assert box_iou(np.zeros((0, 4), np.float32), a).shape == (0, 1)
    assert box_iou(a, np.zeros((0, 4), np.float32)).shape == (1, 0)
    # Two zero-area boxes: defined as 0, not NaN.
    point = np.array([[5, 5, 5, 5]], np.float64)
    assert box_iou(point, point)[0, 0] == 0.0


def test_box_area_and_clip():
    boxes = np.array([[-5, 2, 30, 12], [10, -3, 50, 70]], np.float32)
    np.testing.assert_array_equal(box_area(boxes), [35 * 10, 40 * 73])
    clipped = clip_boxes(boxes, (60, 40))  # H = 60, W = 40
    np.testing.assert_array_equal(clipped, [[0, 2, 30, 12], [10, 0, 40, 60]])
    assert clipped.dtype == np.float32
    assert clip_boxes(np.zeros((0, 4), np.float32), (5, 5)).shape == (0, 4)


@given(boxes_strategy(min_size=1.0), st.integers(0, 2**32 - 1))
def test_decode_inverts_encode(gt, seed):
    rng = np.random.default_rng(seed)
    n = len(gt)
    centre = rng.uniform(-20, 120, (n, 2))
    size = rng.uniform(4, 100, (n, 2))
    anchors = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        deltas = encode_boxes(gt, anchors, weights)
        assert deltas.shape == (n, 4)
        np.testing.assert_allclose(decode_boxes(deltas, anchors, weights), gt, rtol=1e-12,
                                   atol=1e-10)


def test_encode_decode_float32_round_trip():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 500, (200, 2))
    gt = np.concatenate([xy, xy + rng.uniform(5, 300, (200, 2))], 1).astype(np.float32)
    anchors = np.concatenate([xy, xy + rng.uniform(5, 300, (200, 2))], 1).astype(np.float32)
    deltas = encode_boxes(gt, anchors)
    assert deltas.dtype == np.float32
    decoded = decode_boxes(deltas, anchors)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, gt, rtol=2e-6, atol=1e-3)


def test_decode_clamps_log_scale():
    anchors = np.array([[0, 0, 16, 32]], np.float64)
    deltas = np.array([[0.0, 0.0, 50.0, 1e4]])  # exp(1e4) would overflow
    boxes = decode_boxes(deltas, anchors)
    assert np.isfinite(boxes).all()
    np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 16 * math.exp(_DEFAULT_SCALE_CLAMP))
    np.testing.assert_allclose(boxes[0, 3] - boxes[0, 1], 32 * 1000 / 16)


@pytest.mark.parametrize(
    "box, label, message",
    [
        ([3, 3, 3, 9], 0, "degenerate"),  # zero width
        ([3, 9, 8, 2], 0, "degenerate"),  # y2 < y1
        ([3, 3, np.nan, 9], 0, "NaN"),
        ([3, -np.inf, 5, 9], 0, "infinite"),
        ([3, 3, 5, 9], 5, "label 1"),  # K = 5: 0..4
        ([3, 3, 5, 9], -1, "label 1"),
    ],
)
def test_validate_boxes_names_image_and_index(box, label, message):
    boxes = np.array([[0, 0, 10, 10], box, [1, 1, 2, 2]], np.float32)
    labels = np.array([1, label, 2])
    with pytest.raises(ValueError) as info:
        validate_boxes(boxes, labels, num_classes=5, image_index=3)
    text = str(info.value)
    assert "image 3" in text and message in text
    if "label" not in message:
        assert "box 1" in text


def test_validate_boxes_accepts_good_and_empty_targets():
    validate_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 3, 0)
    validate_boxes(np.zeros((0, 4)), [], None, 0)
    validate_boxes(np.array([[0, 0, 1, 1.5]]), np.array([2]), 3, 0)
    with pytest.raises(ValueError, match="image 0: label 0 is not an integer"):
        validate_boxes(np.array([[0, 0, 1, 1.5]]), np.array([0.5]), 3, 0)
    with pytest.raises(ValueError, match="shape"):
        validate_boxes(np.array([[0, 0, 1, 1.5]]), np.array([0, 1]), 3, 0)


# ----------------------------------------------------------------------------- torchvision


@pytest.mark.torch
def test_box_ops_equal_torchvision():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(2)
    xy = rng.uniform(-20, 700, (300, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 300, (300, 2))], 1).astype(np.float32)
    xy = rng.uniform(-20, 700, (40, 2))
    b = np.concatenate([xy, xy + rng.uniform(1, 300, (40, 2))], 1).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # Same operations in the same order: bit-identical in float32.
    np.testing.assert_array_equal(box_iou(b, a), ops.box_iou(tb, ta).numpy())
    np.testing.assert_array_equal(box_area(a), ops.box_area(ta).numpy())
    np.testing.assert_array_equal(
        clip_boxes(a, (480, 640)), ops.clip_boxes_to_image(ta, (480, 640)).numpy()
    )

    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    gt = a[:40]
    np.testing.assert_allclose(
        encode_boxes(gt, b), coder.encode_single(torch.from_numpy(gt), tb).numpy(), rtol=1e-6,
        atol=1e-6,
    )
    deltas = rng.normal(0, 1, (300, 4)).astype(np.float32)
    deltas[:5, 2:] = 10.0  # beyond the clamp
    np.testing.assert_allclose(
        decode_boxes(deltas, a), coder.decode_single(torch.from_numpy(deltas), ta).numpy(),
        rtol=1e-6, atol=1e-4,
    )
    deltas64 = deltas.astype(np.float64)
    np.testing.assert_allclose(
        decode_boxes(deltas64, a),
        coder.decode_single(torch.from_numpy(deltas64), ta).numpy(), rtol=1e-13,
    )
