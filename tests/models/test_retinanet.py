import math

import numpy as np
import pytest

from retina_np.gradcheck import gradcheck
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.models.heads import to_rows


def test_output_shapes_match_anchors(tiny_model, rng):
    for hw in [(64, 64), (70, 45)]:
        x = rng.normal(size=(2, 3, *hw)).astype(np.float32)
        cls, box = tiny_model.eval()(x)
        anchors = tiny_model.anchors(hw)
        assert cls.shape == (2, anchors.shape[0], 2)
        assert box.shape == (2, anchors.shape[0], 4)
        assert cls.dtype == np.float32


def test_bad_input_shape(tiny_model):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny_model(np.zeros((3, 64, 64), np.float32))


def test_resnet50_fpn_parameter_names_and_shapes():
    model = RetinaNet(RetinaNetConfig.resnet50_fpn(91))
    state = model.state_dict()
    expected = {
        "backbone.body.conv1.weight": (64, 3, 7, 7),
        "backbone.body.bn1.running_var": (64,),
        "backbone.body.layer1.0.conv1.weight": (64, 64, 1, 1),
        "backbone.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.body.layer2.0.conv2.weight": (128, 128, 3, 3),
        "backbone.body.layer4.2.bn3.weight": (2048,),
        "backbone.fpn.inner_blocks.0.0.weight": (256, 512, 1, 1),
        "backbone.fpn.inner_blocks.2.0.bias": (256,),
        "backbone.fpn.layer_blocks.0.0.weight": (256, 256, 3, 3),
        "backbone.fpn.extra_blocks.p6.weight": (256, 256, 3, 3),
        "backbone.fpn.extra_blocks.p7.bias": (256,),
        "head.classification_head.conv.0.0.weight": (256, 256, 3, 3),
        "head.classification_head.conv.3.0.bias": (256,),
        "head.classification_head.cls_logits.weight": (9 * 91, 256, 3, 3),
        "head.regression_head.bbox_reg.bias": (36,),
    }
    for name, shape in expected.items():
        assert state[name].shape == shape, name


def test_prior_probability_init(rng):
    config = RetinaNetConfig.tiny(3)
    model = RetinaNet(config, seed=1).eval()
    cls, _ = model(rng.normal(size=(2, 3, 64, 64)).astype(np.float32))
    p = 1 / (1 + np.exp(-cls))
    assert abs(p.mean() - config.prior_prob) < 0.002
    np.testing.assert_allclose(
        model.head.classification_head.cls_logits.bias.data, -math.log(99), rtol=1e-6
    )


def test_initial_focal_loss_near_analytic_expectation(rng, make_targets):
    """With every probability at pi, the loss is known in closed form (paper, section 3.3)."""
    config = RetinaNetConfig.tiny(3)
    model = RetinaNet(config, seed=2).train()
    x = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    targets = make_targets(rng, 1, (64, 64), 3)
    cls, box = model(x)
    losses, _, _ = model.loss(cls, box, targets, (64, 64))
    model.clear_caches()
    from retina_np.detection import box_iou, match_anchors

    matched = match_anchors(box_iou(targets[0]["boxes"], model.anchors((64, 64))))
    n_fg, n_bg = int((matched >= 0).sum()), int((matched == -1).sum())
    pi, a, g, k = config.prior_prob, config.focal_alpha, config.focal_gamma, 3
    fg_term = a * (1 - pi) ** g * -math.log(pi)
    bg_term = (1 - a) * pi**g * -math.log(1 - pi)
    expected = (n_fg * (fg_term + (k - 1) * bg_term) + n_bg * k * bg_term) / max(1, n_fg)
    assert losses["classification"] == pytest.approx(expected, rel=0.1)


def test_head_rows_follow_anchor_order():
    """A signal planted at (level, y, x, anchor a, class k) comes out at the row whose anchor
    is centred at (x, y) * stride with the a-th cell anchor's shape."""
    config = RetinaNetConfig.tiny(2)
    model = RetinaNet(config, seed=0).eval()
    hw = (96, 64)
    sizes = model.feature_sizes(hw)
    anchors = model.anchors(hw)
    A, K, C = config.num_anchors, config.num_classes, config.fpn_channels
    head = model.head.classification_head
    for conv_relu in head.conv:  # make every subnet conv the identity on positive inputs
        conv = conv_relu[0]
        conv.weight.data[...] = 0
        conv.bias.data[...] = 0
        conv.weight.data[np.arange(C), np.arange(C), 1, 1] = 1
    level, y, x, a, k = 1, 3, 1, 5, 1
    head.cls_logits.weight.data[...] = 0
    head.cls_logits.bias.data[...] = 0
    head.cls_logits.weight.data[a * K + k, 0, 1, 1] = 1
    levels = [np.zeros((1, C, h, w), np.float32) for h, w in sizes]
    levels[level][0, 0, y, x] = 1
    rows = head(levels)[0]  # (R, K)
    r, kk = np.unravel_index(np.argmax(rows), rows.shape)
    assert kk == k and rows[r, k] == 1 and np.count_nonzero(rows) == 1
    offset = sum(h * w * A for h, w in sizes[:level])
    assert r == offset + (y * sizes[level][1] + x) * A + a
    stride = hw[0] // sizes[level][0]
    cx, cy = (anchors[r, 0] + anchors[r, 2]) / 2, (anchors[r, 1] + anchors[r, 3]) / 2
    assert (cx, cy) == (x * stride, y * stride)
    first = anchors[offset + a]  # the same anchor shape at (0, 0)
    np.testing.assert_allclose(anchors[r] - [cx, cy, cx, cy], first, atol=1e-5)


def test_to_rows_layout():
    x = np.arange(2 * 6 * 2 * 3).reshape(2, 6, 2, 3)  # A=3, P=2
    rows = to_rows(x, 2)
    assert rows.shape == (2, 2 * 3 * 3, 2)
    n, y, xx, a, p = 1, 1, 2, 2, 1
    assert rows[n, (y * 3 + xx) * 3 + a, p] == x[n, a * 2 + p, y, xx]


@pytest.mark.parametrize("p6_from", ["p5", "c5"])
def test_whole_model_gradient_check_float64(rng, p6_from, make_targets):
    """Every parameter tensor, a random subset of entries, against central differences of
    the full RetinaNet loss; BatchNorm in training mode."""
    config = RetinaNetConfig.tiny(2)
    config.p6_from = p6_from
    # Anchors scaled to the 64 px input and one large box per image, so that P6 and P7 have
    # foreground anchors too: otherwise their gradients are so small that the float64
    # rounding noise of the summed loss (~1e-13 absolute, divided by 2 eps) dominates them.
    # For the same reason the head init is 0.1 rather than the paper's 0.01, which shrinks
    # gradients ~10x per head layer; the maths checked is the same.
    config.anchor_sizes = (4, 8, 16, 32, 64)
    config.head_init_std = 0.1
    model = RetinaNet(config, seed=3).astype(np.float64).train()
    # Move the class bias off the prior so the focal gradient is not tiny everywhere.
    model.head.classification_head.cls_logits.bias.data[...] = -1.0
    x = rng.normal(size=(2, 3, 64, 64))
    targets = make_targets(rng, 2, (64, 64), 2)
    for t in targets:
        t["boxes"] = np.concatenate([t["boxes"], [[2, 3, 62, 60]]]).astype(np.float32)
        t["labels"] = np.append(t["labels"], 1)

    def loss_fn():
        cls, box = model(x)
        losses, d_cls, d_box = model.loss(cls, box, targets, (64, 64))
        return losses["total"], d_cls, d_box

    model.zero_grad()
    _, d_cls, d_box = loss_fn()
    model.backward(d_cls, d_box)
    params = dict(model.named_parameters())
    analytic = {name: p.grad.copy() for name, p in params.items()}

    def f(_inputs):
        value = loss_fn()[0]
        model.clear_caches()
        return value

    report = gradcheck(
        f, {n: p.data for n, p in params.items()}, analytic, eps=1e-5, num_samples=4, seed=0
    )
    assert report.worst <= 1e-5, str(report)


def test_forward_without_backward_leaves_no_stale_state(tiny_model, rng, make_targets):
    """A training-mode forward with no backward (e.g. a skipped non-finite step) must not
    break the next step."""
    from retina_np.optim import SGD
    from retina_np.train import train_step

    model = tiny_model.train()
    x = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    model(x)
    model.clear_caches()
    model(x[:1])
    targets = make_targets(rng, 2, (64, 64), 2)
    losses = train_step(model, SGD(model.named_parameters(), lr=0.0), x, targets, lr=0.0)
    assert math.isfinite(losses["total"])
    assert all(not m._caches for m in model.modules())


def test_the_configs_matching_and_box_coding_reach_loss_and_detect(rng):
    """``allow_low_quality_matches`` and ``box_coder_weights`` change what they should; the
    defaults give the numbers of ``retina_loss`` and ``postprocess`` with theirs."""
    import dataclasses

    from retina_np.detection import postprocess, retina_loss

    config = RetinaNetConfig.tiny(2)
    config.score_thresh = 0.0  # detections to decode (the prior keeps scores near 0.01)
    model = RetinaNet(config, seed=0).eval()
    images = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    cls, box = model(images)
    hw = images.shape[-2:]
    # a thin box that no anchor overlaps at IoU 0.5: foreground only as a low-quality match
    targets = [{"boxes": np.array([[10.0, 10.0, 13.0, 40.0]], np.float32),
                "labels": np.array([1])}]

    def loss(**fields):
        model.config = dataclasses.replace(config, **fields)
        return model.loss(cls, box, targets, hw)[0]

    def detect(**fields):
        model.config = dataclasses.replace(config, **fields)
        return model.detect(images)[0]

    default = loss()
    assert default == retina_loss(cls, box, model.anchors(hw), targets)[0]
    assert default["num_foreground"] > 0
    assert loss(allow_low_quality_matches=False)["num_foreground"] == 0
    weighted = loss(box_coder_weights=(10.0, 10.0, 5.0, 5.0))
    assert weighted["classification"] == default["classification"]
    assert weighted["box_regression"] != default["box_regression"]

    dets = detect()
    anchors, counts = model._anchors_and_counts(hw)
    want = postprocess(cls[0], box[0], anchors, counts, tuple(hw), score_thresh=0.0)
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(dets[key], want[key])
    other = detect(box_coder_weights=(10.0, 10.0, 5.0, 5.0))
    assert other["boxes"].shape != dets["boxes"].shape or not np.allclose(other["boxes"],
                                                                          dets["boxes"])


def test_detect_clips_each_image_of_a_batch_to_its_own_size(rng):
    """Images of different sizes padded into one batch: each one's boxes are clipped to its
    own size (not the padded one, nor another image's), and otherwise left as postprocess
    gives them."""
    from retina_np.data import normalize, pad_batch
    from retina_np.detection import postprocess

    model = RetinaNet(RetinaNetConfig.tiny(2), seed=0).eval()
    # Every pair scores 0.5 and every box is e^1.5 times its anchor: boxes reach every border.
    model.head.classification_head.cls_logits.bias.data[...] = 0.0
    model.head.regression_head.bbox_reg.bias.data[...] = np.tile([0, 0, 1.5, 1.5], 9)
    sizes = [(40, 64), (64, 36), (64, 64)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    batch = pad_batch([normalize(im) for im in images], model.config.size_divisible)
    assert batch.shape == (3, 3, 64, 64)
    detections = model.detect(batch, sizes)
    cls, box = model(batch)
    anchors = model.anchors((64, 64))
    counts = [8 * 8 * 9, 4 * 4 * 9, 2 * 2 * 9, 9, 9]  # P3..P7 of a 64x64 batch, 9 anchors each
    c = model.config
    for i, ((h, w), det) in enumerate(zip(sizes, detections)):
        boxes = det["boxes"]
        assert len(boxes) > 0
        assert boxes[:, 0::2].min() == 0 and boxes[:, 0::2].max() == w, (i, boxes.max(0))
        assert boxes[:, 1::2].min() == 0 and boxes[:, 1::2].max() == h, (i, boxes.max(0))
        expected = postprocess(cls[i], box[i], anchors, counts, (h, w), c.score_thresh,
                               c.topk_candidates, c.nms_thresh, c.detections_per_img)
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(det[key], expected[key])
