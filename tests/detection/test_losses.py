"""Losses: focal loss limits and stability, analytic gradients vs finite differences,
retina_loss normalisation and validation, torchvision oracles."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np.detection import (
    box_iou,
    encode_boxes,
    generate_anchors,
    l1_loss,
    match_anchors,
    retina_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from retina_np.kernels.cpu import loss as loss_kernels

# Central differences in float64: truncation error ~ h^2 * f''' and rounding error
# ~ 1e-16 * |f| / h are both ~1e-10 here, far below the 1e-6 the check allows.
_FD_STEP = 1e-6
_MAX_REL_ERROR = 1e-6


def numerical_gradient(f, x, step=_FD_STEP):
    """Central finite differences of the scalar function ``f`` at ``x`` (float64)."""
    grad = np.zeros_like(x)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + step
        plus = f(x)
        flat[i] = original - step
        minus = f(x)
        flat[i] = original
        flat_grad[i] = (plus - minus) / (2 * step)
    return grad


def relative_error(analytic, numeric):
    """Largest gradient error relative to the largest gradient entry."""
    scale = max(np.abs(analytic).max(), np.abs(numeric).max())
    assert scale > 0, "a gradient check needs a non-zero gradient"
    return np.abs(analytic - numeric).max() / scale


def bce_with_logits(x, t):
    return np.logaddexp(0.0, x) - t * x


# ------------------------------------------------------------------------------ focal loss


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_focal_with_gamma_0_and_no_alpha_is_bce(seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 5, (7, 5)).astype(dtype)
    t = rng.integers(0, 2, (7, 5)).astype(dtype)
    for alpha in (None, -1):
        loss, grad = sigmoid_focal_loss(x, t, alpha=alpha, gamma=0.0)
        assert grad.dtype == dtype and grad.shape == x.shape
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(loss, bce_with_logits(x64, t).sum(), rtol=1e-12)
        np.testing.assert_allclose(grad, 1 / (1 + np.exp(-x64)) - t, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_focal_is_finite_for_extreme_logits(gamma, alpha, dtype):
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0] * 2, dtype)
    t = np.array([0.0] * 5 + [1.0] * 5, dtype)
    loss, grad = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # Confidently wrong costs about |x| times the weight; confidently right costs ~0.
    a_neg = 0.75 if alpha is not None else 1.0
    per_element, _ = zip(*(sigmoid_focal_loss(x[i : i + 1], t[i : i + 1], alpha, gamma)
                           for i in range(len(x))))
    np.testing.assert_allclose(per_element[4], a_neg * 100.0, rtol=1e-6)
    assert per_element[0] < 1e-40
    # The gradient points the right way: up for positives, down for negatives.
    assert np.all(grad[5:7] < 0) and np.all(grad[3:5] > 0)


def test_focal_down_weights_easy_examples():
    x = np.array([-4.0, 4.0])  # easy negative, easy positive
    t = np.array([0.0, 1.0])
    focal, _ = sigmoid_focal_loss(x, t, alpha=None, gamma=2.0)
    ce, _ = sigmoid_focal_loss(x, t, alpha=None, gamma=0.0)
    p_wrong = 1 / (1 + np.exp(4.0))
    np.testing.assert_allclose(focal, ce * p_wrong**2, rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.7, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [0.25, None])
def test_focal_gradient_matches_finite_differences(gamma, alpha):
    rng = np.random.default_rng(int(gamma * 10) + (alpha is None))
    x = rng.uniform(-3, 3, (6, 4))
    hard = rng.integers(0, 2, (6, 4)).astype(np.float64)
    soft = rng.uniform(0, 1, (6, 4))  # the formula holds for soft targets too
    for t in (hard, soft):
        _, grad = sigmoid_focal_loss(x, t, alpha, gamma)
        numeric = numerical_gradient(lambda z, t=t: sigmoid_focal_loss(z, t, alpha, gamma)[0], x)
        assert relative_error(grad, numeric) <= _MAX_REL_ERROR


def test_focal_parallel_path_equals_serial_path():
    # 300 x 300 logits run split across threads; 30-row slices (9000 logits) run serially.
    rng = np.random.default_rng(12)
    x = rng.normal(0, 4, (300, 300))
    t = (rng.random((300, 300)) < 0.1).astype(np.float64)
    assert x.size >= loss_kernels._PARALLEL_MIN_LOGITS > 30 * 300
    loss, grad = sigmoid_focal_loss(x, t)
    pieces = [sigmoid_focal_loss(x[i : i + 30], t[i : i + 30]) for i in range(0, 300, 30)]
    np.testing.assert_allclose(loss, sum(p[0] for p in pieces), rtol=1e-13)
    np.testing.assert_array_equal(grad, np.concatenate([p[1] for p in pieces]))


@pytest.mark.torch
def test_focal_equals_torchvision():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 4, (300, 20))
    t = (rng.random((300, 20)) < 0.1).astype(np.float64)
    for alpha, torch_alpha in [(0.25, 0.25), (None, -1), (0.6, 0.6)]:
        for gamma in (0.0, 1.5, 2.0):
            xt = torch.from_numpy(x.copy()).requires_grad_()
            expected = ops.sigmoid_focal_loss(xt, torch.from_numpy(t), torch_alpha, gamma,
                                              reduction="sum")
            expected.backward()
            loss, grad = sigmoid_focal_loss(x, t, alpha, gamma)
            np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------------------------- box losses


def away_from(values, points, margin):
    """Push entries of ``values`` that lie within ``margin`` of any of ``points`` away."""
    for p in points:
        close = np.abs(values - p) < margin
        values = np.where(close, p + np.where(values >= p, margin, -margin), values)
    return values


def test_smooth_l1_and_l1_values_and_gradients():
    rng = np.random.default_rng(4)
    target = rng.normal(0, 1, (10, 4))
    beta = 1 / 9
    diff = away_from(rng.normal(0, 0.3, (10, 4)), [-beta, beta], 0.01)
    pred = target + diff
    loss, grad = smooth_l1_loss(pred, target, beta)
    ad = np.abs(diff)
    np.testing.assert_allclose(loss, np.where(ad < beta, 0.5 * ad**2 / beta, ad - beta / 2).sum())
    numeric = numerical_gradient(lambda p: smooth_l1_loss(p, target, beta)[0], pred.copy())
    assert relative_error(grad, numeric) <= _MAX_REL_ERROR

    pred = target + away_from(rng.normal(0, 0.3, (10, 4)), [0.0], 0.01)
    loss, grad = l1_loss(pred, target)
    np.testing.assert_allclose(loss, np.abs(pred - target).sum())
    numeric = numerical_gradient(lambda p: l1_loss(p, target)[0], pred.copy())
    assert relative_error(grad, numeric) <= _MAX_REL_ERROR
    # beta = 0 is L1; float32 stays float32.
    assert smooth_l1_loss(pred, target, 0.0)[0] == loss
    assert smooth_l1_loss(pred.astype(np.float32), target, beta)[1].dtype == np.float32


@pytest.mark.torch
def test_smooth_l1_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    pred, target = rng.normal(0, 0.3, (50, 4)), rng.normal(0, 0.3, (50, 4))
    for beta in (1 / 9, 1.0):
        pt = torch.from_numpy(pred.copy()).requires_grad_()
        expected = torch.nn.functional.smooth_l1_loss(pt, torch.from_numpy(target),
                                                      reduction="sum", beta=beta)
        expected.backward()
        loss, grad = smooth_l1_loss(pred, target, beta)
        np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ retina loss


def small_problem(rng, dtype=np.float64, num_classes=3):
    """Anchors of a 64x64 image (R = 9 * (4*4 + 2*2) = 180); targets of two images, the
    second without boxes."""
    anchors = generate_anchors((64, 64), [(4, 4), (2, 2)], sizes=(16, 32), dtype=dtype)
    targets = [
        {"boxes": np.array([[4, 6, 30, 28], [30, 20, 60, 62], [2, 40, 14, 60]], dtype),
         "labels": np.array([0, 2, 1])},
        {"boxes": np.zeros((0, 4), dtype), "labels": np.zeros(0, np.int64)},
    ]
    num_anchors = len(anchors)
    cls_logits = rng.uniform(-3, 1, (2, num_anchors, num_classes)).astype(dtype)
    box_deltas = rng.normal(0, 0.3, (2, num_anchors, 4)).astype(dtype)
    return cls_logits, box_deltas, anchors, targets


def test_retina_loss_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    beta = 1 / 9
    # Image 0 has three boxes, image 1 none (all background, normalised by 1).
    cls_logits, box_deltas, anchors, targets = small_problem(rng)
    # Keep the foreground deltas away from the smooth-L1 kink at |d| = beta and the L1 kink
    # at 0 (the matching does not depend on the head outputs: assignments stay fixed).
    matches = match_anchors(box_iou(targets[0]["boxes"], anchors))
    fg = np.flatnonzero(matches >= 0)
    encoded = encode_boxes(targets[0]["boxes"][matches[fg]], anchors[fg])
    box_deltas[0, fg] = encoded + away_from(box_deltas[0, fg] - encoded, [-beta, 0, beta], 0.01)

    def total(c, d, box_loss):
        return retina_loss(c, d, anchors, targets, box_loss=box_loss, beta=beta)[0]["total"]

    for box_loss in ("smooth_l1", "l1"):
        losses, d_cls, d_box = retina_loss(cls_logits, box_deltas, anchors, targets,
                                           box_loss=box_loss, beta=beta)
        assert losses["num_foreground"] > 0 and losses["box_regression"] > 0
        numeric_box = numerical_gradient(lambda d, kind=box_loss: total(cls_logits, d, kind),
                                         box_deltas.copy())
        assert relative_error(d_box, numeric_box) <= _MAX_REL_ERROR
    # The classification gradient does not depend on the box loss.
    numeric_cls = numerical_gradient(lambda c: total(c, box_deltas, "l1"), cls_logits.copy())
    assert relative_error(d_cls, numeric_cls) <= _MAX_REL_ERROR


def test_retina_loss_normalisation_and_ignored_anchors():
    rng = np.random.default_rng(7)
    cls_logits, box_deltas, anchors, targets = small_problem(rng)
    losses, d_cls, d_box = retina_loss(cls_logits, box_deltas, anchors, targets)
    assert set(losses) == {"classification", "box_regression", "total", "num_foreground"}
    assert all(type(v) is float for v in losses.values())
    assert losses["total"] == losses["classification"] + losses["box_regression"]

    matches = match_anchors(box_iou(targets[0]["boxes"], anchors))
    fg = matches >= 0
    assert losses["num_foreground"] == fg.sum()
    # Image 0 by hand: one-hot targets, ignored anchors dropped, / num_fg, / batch of 2.
    onehot = np.zeros_like(cls_logits[0])
    onehot[np.flatnonzero(fg), targets[0]["labels"][matches[fg]]] = 1
    valid = matches != -2
    cls0, _ = sigmoid_focal_loss(cls_logits[0][valid], onehot[valid])
    # Image 1 has no boxes: every anchor background, normalised by max(1, 0) = 1.
    cls1, _ = sigmoid_focal_loss(cls_logits[1], np.zeros_like(cls_logits[1]))
    np.testing.assert_allclose(losses["classification"], (cls0 / fg.sum() + cls1) / 2, rtol=1e-12)
    encoded = encode_boxes(targets[0]["boxes"][matches[fg]], anchors[fg])
    box0, _ = smooth_l1_loss(box_deltas[0][fg], encoded, 1 / 9)
    np.testing.assert_allclose(losses["box_regression"], box0 / fg.sum() / 2, rtol=1e-12)
    assert np.all(d_cls[0][matches == -2] == 0) and (matches == -2).any()
    assert np.all(d_box[0][~fg] == 0) and np.all(d_box[1] == 0)


def test_retina_loss_float32():
    rng = np.random.default_rng(8)
    c64, d64, anchors, targets = small_problem(rng)
    l64, g64, b64 = retina_loss(c64, d64, anchors, targets)
    l32, g32, b32 = retina_loss(c64.astype(np.float32), d64.astype(np.float32),
                                anchors.astype(np.float32), targets)
    assert g32.dtype == np.float32 and b32.dtype == np.float32
    np.testing.assert_allclose(l32["total"], l64["total"], rtol=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_retina_loss_images_in_any_map_equal_one_by_one(dtype):
    """``map_images`` may run the images in any order or at once (retina_np/schedule.py runs
    the two halves of the batch side by side): the same bits, and each image counts once."""
    rng = np.random.default_rng(10)
    _, _, anchors, (boxes, empty) = small_problem(rng, dtype)
    moved = {"boxes": boxes["boxes"][:2] + 3, "labels": np.array([1, 0])}
    targets = [boxes, empty, moved, boxes, empty]
    cls_logits = rng.uniform(-3, 1, (5, len(anchors), 3)).astype(dtype)
    box_deltas = rng.normal(0, 0.3, (5, len(anchors), 4)).astype(dtype)

    def backwards(image_loss, images):  # the last image first; results in image order
        return [image_loss(b) for b in reversed(images)][::-1]

    one_by_one = retina_loss(cls_logits, box_deltas, anchors, targets)
    reordered = retina_loss(cls_logits, box_deltas, anchors, targets, map_images=backwards)
    assert reordered[0] == one_by_one[0]
    np.testing.assert_array_equal(reordered[1], one_by_one[1])
    np.testing.assert_array_equal(reordered[2], one_by_one[2])
    # the batch's loss is the mean of the images' own losses
    alone = [retina_loss(cls_logits[b:b + 1], box_deltas[b:b + 1], anchors, targets[b:b + 1])
             for b in range(5)]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(one_by_one[0]["total"], np.mean([a[0]["total"] for a in alone]),
                               rtol=tol)
    for i in (1, 2):
        np.testing.assert_allclose(one_by_one[i], np.concatenate([a[i] for a in alone]) / 5,
                                   rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"boxes": [[5, 5, 5, 9]], "labels": [0]}, "image 1: box 0 is degenerate"),
        ({"boxes": [[1, 1, 4, 4], [5, 5, 9, np.inf]], "labels": [0, 0]}, "image 1: box 1"),
        ({"boxes": [[1, 1, 4, 4], [np.nan, 5, 9, 9]], "labels": [0, 0]}, "image 1: box 1"),
        ({"boxes": [[1, 1, 4, 4]], "labels": [3]}, "image 1: label 0"),
    ],
)
def test_retina_loss_rejects_bad_targets(bad, message):
    rng = np.random.default_rng(9)
    cls_logits, box_deltas, anchors, targets = small_problem(rng)
    targets[1] = {"boxes": np.array(bad["boxes"], np.float64), "labels": np.array(bad["labels"])}
    with pytest.raises(ValueError, match=message):
        retina_loss(cls_logits, box_deltas, anchors, targets)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_retina_loss_equals_torchvision_compute_loss(dtype):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.retinanet import RetinaNet

    # R * K = 3024 * 25 logits: above _PARALLEL_MIN_LOGITS, the multi-threaded path.
    num_classes = 25
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    model = RetinaNet(backbone, num_classes=num_classes).to(torch.float64 if dtype == np.float64
                                                             else torch.float32)
    rng = np.random.default_rng(10)
    anchors = generate_anchors((128, 128), [(16, 16), (8, 8), (4, 4)], sizes=(16, 32, 64),
                               dtype=dtype)
    targets = []
    for m in (4, 0, 1):
        xy = rng.uniform(0, 90, (m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (m, 2))], 1).astype(dtype)
        targets.append({"boxes": boxes, "labels": rng.integers(0, num_classes, m)})
    batch, num_anchors = len(targets), len(anchors)
    cls_logits = rng.normal(-2, 2, (batch, num_anchors, num_classes)).astype(dtype)
    box_deltas = rng.normal(0, 0.5, (batch, num_anchors, 4)).astype(dtype)

    # torchvision's box loss is l1 by default; its smooth_l1 uses beta = 1.
    for loss_type, beta in (("l1", None), ("smooth_l1", 1.0)):
        model.head.regression_head._loss_type = loss_type
        tc = torch.from_numpy(cls_logits.copy()).requires_grad_()
        tb = torch.from_numpy(box_deltas.copy()).requires_grad_()
        expected = model.compute_loss(
            [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])}
             for t in targets],
            {"cls_logits": tc, "bbox_regression": tb},
            [torch.from_numpy(anchors)] * batch,
        )
        (expected["classification"] + expected["bbox_regression"]).backward()
        losses, d_cls, d_box = retina_loss(cls_logits, box_deltas, anchors, targets,
                                           box_loss=loss_type, beta=beta or 0.0)
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(losses["classification"],
                                   expected["classification"].item(), rtol=rtol)
        np.testing.assert_allclose(losses["box_regression"],
                                   expected["bbox_regression"].item(), rtol=rtol)
        atol = 1e-16 if dtype == np.float64 else 1e-9
        np.testing.assert_allclose(d_cls, tc.grad.numpy(), rtol=rtol * 10, atol=atol)
        np.testing.assert_allclose(d_box, tb.grad.numpy(), rtol=rtol * 10, atol=atol)


@given(st.integers(0, 2**32 - 1), st.integers(0, 6), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.sampled_from([(0.5, 0.4), (0.6, 0.6), (0.3, 0.1)]))
def test_match_image_kernel_gives_the_bits_of_the_numpy_steps(seed, boxes, dtype, low_quality,
                                                               thresholds):
    """``match_image`` (one kernel) equals ``match_image_steps`` (box_iou, match_anchors,
    encode_boxes) bit for bit: no boxes, boxes that tie (a repeated box), boxes between the
    anchors' sizes, any thresholds, with and without the low-quality matches."""
    from retina_np.detection.losses import match_image, match_image_steps

    rng = np.random.default_rng(seed)
    anchors = generate_anchors((64, 64), [(4, 4), (2, 2)], sizes=(16, 32), dtype=dtype)
    corner = rng.uniform(0, 48, (boxes, 2))
    size = rng.uniform(3, 40, (boxes, 2))
    drawn = np.concatenate([corner, corner + size], axis=1)
    if boxes > 2:
        drawn[-1] = drawn[0]  # the same box twice: its anchors' IoU ties
    target = {"boxes": drawn, "labels": rng.integers(0, 3, boxes)}
    weights = (10.0, 10.0, 5.0, 5.0) if seed % 2 else (1.0, 1.0, 1.0, 1.0)
    fast = match_image(target, anchors, 3, 0, *thresholds, low_quality, weights)
    steps = match_image_steps(target, anchors, 3, 0, *thresholds, low_quality, weights)
    for name, a, b in zip(fast._fields, fast, steps):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match="must not exceed"):
        match_image(target, anchors, 3, 0, 0.3, 0.5)
