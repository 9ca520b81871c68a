"""Loss and detection kernels on the GPU (kernels/cuda/loss.py, cuda/detection.py) against
retina_np.detection and kernels.cpu."""

import math

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np.detection import batched_nms, box_iou, decode_boxes, nms
from retina_np.detection.boxes import DEFAULT_BOX_CODER_WEIGHTS
from retina_np.detection.losses import l1_loss, sigmoid_focal_loss, smooth_l1_loss
from retina_np.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS
from retina_np.kernels import cpu, reference
from retina_np.kernels import cuda as kcuda


def _random_boxes(rng, n, dtype=np.float32, span=60.0):
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(1, span / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_focal_loss_anchor_classes(small_launches, rng, dtype):
    R, K = 13, 3
    logits = (4 * rng.standard_normal((R, K))).astype(dtype)
    logits[0, 0] = 60.0  # far in the tails: still finite
    anchor_class = rng.integers(0, K, R).astype(np.int64)
    anchor_class[[1, 4]] = BELOW_LOW_THRESHOLD
    anchor_class[[2, 7]] = BETWEEN_THRESHOLDS
    alpha, gamma, scale = 0.25, 2.0, 0.5
    want, want_grad = cpu.focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, scale)
    got, got_grad = kcuda.focal_loss_anchor_classes(to_dev(logits), to_dev(anchor_class), alpha,
                                                    gamma, scale)
    assert got == pytest.approx(want, rel=1e-12)
    assert got_grad.dtype == dtype
    assert_close(host(got_grad), want_grad, dtype)
    assert not host(got_grad)[[2, 7]].any()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 1.5), (0.5, 0.0)])
def test_sigmoid_focal_loss_dense(small_launches, rng, alpha, gamma):
    logits = (3 * rng.standard_normal((5, 7))).astype(np.float32)
    targets = rng.uniform(0, 1, (5, 7)).round(1).astype(np.float32)
    want, want_grad = sigmoid_focal_loss(logits, targets, alpha, gamma)
    got, got_grad = kcuda.sigmoid_focal_loss(to_dev(logits), to_dev(targets), alpha, gamma)
    assert got == pytest.approx(want, rel=1e-12)
    assert_close(host(got_grad), want_grad)


def test_smooth_l1_and_l1(small_launches, rng):
    target = rng.standard_normal((9, 4)).astype(np.float32)
    pred = target + rng.uniform(-0.3, 0.3, (9, 4)).astype(np.float32)  # both sides of beta
    pred[0, 0] = target[0, 0]  # zero difference: gradient 0
    for beta in (1 / 9, 0.5):
        want, want_grad = smooth_l1_loss(pred, target, beta)
        got, got_grad = kcuda.smooth_l1_loss(to_dev(pred), to_dev(target), beta)
        assert got == pytest.approx(want, rel=1e-6)
        assert_close(host(got_grad), want_grad)
    want, want_grad = l1_loss(pred, target)
    got, got_grad = kcuda.l1_loss(to_dev(pred), to_dev(target))
    assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(host(got_grad), want_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou(small_launches, rng, dtype):
    a, b = _random_boxes(rng, 5, dtype), _random_boxes(rng, 11, dtype)
    b[3] = a[1]  # identical: IoU 1
    a[4] = b[5] = [2, 2, 2, 2]  # two empty boxes: IoU 0, not NaN
    got = host(kcuda.box_iou(to_dev(a), to_dev(b)))
    np.testing.assert_allclose(got, box_iou(a, b), rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert got[1, 3] == pytest.approx(1.0) and got[4, 5] == 0.0


def test_decode_boxes(small_launches, rng):
    anchors = _random_boxes(rng, 10)
    deltas = rng.normal(0, 0.5, (10, 4)).astype(np.float32)
    deltas[0, 2:] = 10.0  # above the clamp log(1000/16)
    clamp = math.log(1000.0 / 16)  # detection.decode_boxes' default
    got = host(kcuda.decode_boxes(to_dev(deltas), to_dev(anchors), DEFAULT_BOX_CODER_WEIGHTS,
                                  clamp))
    np.testing.assert_allclose(got, decode_boxes(deltas, anchors), rtol=1e-6, atol=1e-4)
    weights = (10.0, 10.0, 5.0, 5.0)
    got = host(kcuda.decode_boxes(to_dev(deltas), to_dev(anchors), weights, clamp))
    np.testing.assert_allclose(got, decode_boxes(deltas, anchors, weights), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("max_keep", [None, 5])
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_nms_bitmask_matches_greedy_cpu(small_launches, rng, threshold, max_keep):
    n = 27  # 4 tiles of 8 boxes (small_launches.cuda_nms_tile), the last one ragged
    boxes = _random_boxes(rng, n, span=40.0)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[5] = scores[9] = scores[20]  # ties keep input order
    labels = rng.integers(0, 3, n)
    got = kcuda.nms(to_dev(boxes), to_dev(scores), threshold, max_keep)
    np.testing.assert_array_equal(got, nms(boxes, scores, threshold, max_keep))
    if max_keep is None:
        assert 0 < len(got) < n  # something was suppressed
    got = kcuda.batched_nms(to_dev(boxes), to_dev(scores), to_dev(labels), threshold, max_keep)
    np.testing.assert_array_equal(got, batched_nms(boxes, scores, labels, threshold, max_keep))


def test_nms_edge_cases(small_launches):
    empty = np.zeros((0, 4), np.float32)
    assert kcuda.nms(to_dev(empty), to_dev(np.zeros(0, np.float32)), 0.5).size == 0
    one = np.array([[0, 0, 1, 1]], np.float32)
    np.testing.assert_array_equal(kcuda.nms(to_dev(one), to_dev(np.ones(1, np.float32)), 0.5),
                                  [0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_focal_loss_anchor_classes_into_one_image_of_a_batch(small_launches, rng, dtype):
    """``out=``: the gradient goes into one image of the batch gradient, as retina_loss uses it;
    the CPU twin (kernels.cpu) agrees, and both agree with the reference loops."""
    N, R, K = 2, 11, 3
    logits = (3 * rng.standard_normal((N, R, K))).astype(dtype)
    anchor_class = rng.integers(0, K, R).astype(np.int64)
    anchor_class[[0, 5]] = BELOW_LOW_THRESHOLD
    anchor_class[[3]] = BETWEEN_THRESHOLDS
    want_grad = np.full_like(logits, 7.0)
    want, _ = cpu.focal_loss_anchor_classes(logits[1], anchor_class, 0.25, 2.0, 0.125,
                                            out=want_grad[1])
    d_grad = to_dev(np.full_like(logits, 7.0))
    got, view = kcuda.focal_loss_anchor_classes(to_dev(logits[1]), to_dev(anchor_class), 0.25,
                                                2.0, 0.125, out=d_grad[1])
    assert view.shape == (R, K)
    assert got == pytest.approx(want, rel=1e-12)
    got_grad = host(d_grad)
    assert (got_grad[0] == 7.0).all()  # the other image is untouched
    assert_close(got_grad, want_grad, dtype)
    ref, ref_grad = reference.focal_loss_anchor_classes(logits[1], anchor_class, 0.25, 2.0, 0.125)
    assert want == pytest.approx(ref, rel=1e-10)
    assert_close(want_grad[1], ref_grad, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [1 / 9, 0.0])
def test_box_loss_rows(small_launches, rng, dtype, beta):
    """The box loss over the foreground rows of one image (beta 0: L1), its gradient divided by
    the normaliser and written into those rows only."""
    R = 17
    rows = np.array([0, 3, 4, 9, 15, 16], np.int64)  # 24 values: every launched thread works
    pred = rng.normal(0, 0.3, (R, 4)).astype(dtype)
    target = (pred[rows] + rng.uniform(-0.3, 0.3, (len(rows), 4))).astype(dtype)  # both sides
    target[1, 2] = pred[rows[1], 2]  # a zero difference: gradient 0
    divisor = 12
    want_grad = np.full_like(pred, 5.0)
    want = cpu.box_loss_rows(pred, rows, target, beta, divisor, want_grad)
    d_grad = to_dev(np.full_like(pred, 5.0))
    got = kcuda.box_loss_rows(to_dev(pred), to_dev(rows), to_dev(target), beta, divisor, d_grad)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    got_grad = host(d_grad)
    others = np.setdiff1d(np.arange(R), rows)
    assert (got_grad[others] == 5.0).all()
    np.testing.assert_array_equal(got_grad, want_grad)  # the same float operations
    ref_grad = np.full_like(pred, 5.0)
    ref = reference.box_loss_rows(pred, rows, target, beta, divisor, ref_grad)
    assert want == pytest.approx(ref, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert_close(want_grad, ref_grad, dtype)
    empty = np.zeros(0, np.int64)
    assert kcuda.box_loss_rows(to_dev(pred), to_dev(empty), to_dev(np.zeros((0, 4), dtype)),
                               beta, divisor, d_grad) == 0.0
