"""Postprocessing: contract, a direct reference implementation, torchvision's
postprocess_detections."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np.detection import batched_nms, clip_boxes, decode_boxes, generate_anchors, postprocess

# logit(0.05) = -2.944: the score threshold in logit space.
_LOGIT_THRESH = np.log(0.05 / 0.95)


def head_outputs(rng, image_hw, feature_hws, num_classes, dtype, above_fraction=0.05):
    """Anchors and head outputs whose scores are tie-free: the logits above the threshold are
    a shuffled grid with gaps of >= 2e-5 (far more than a float32 sigmoid's rounding), the
    rest lie clearly below it."""
    sizes = (32, 64, 128, 256, 512)[: len(feature_hws)]
    anchors = generate_anchors(image_hw, feature_hws, sizes=sizes, dtype=dtype)
    level_sizes = [h * w * 9 for h, w in feature_hws]
    num_anchors = len(anchors)
    cls_logits = rng.uniform(-8, _LOGIT_THRESH - 0.01, (num_anchors, num_classes))
    above = rng.random((num_anchors, num_classes)) < above_fraction
    grid = np.linspace(_LOGIT_THRESH + 0.01, 3.0, 100_000)
    cls_logits[above] = rng.choice(grid, size=above.sum(), replace=False)
    box_deltas = rng.normal(0, 0.4, (num_anchors, 4))
    return cls_logits.astype(dtype), box_deltas.astype(dtype), anchors, level_sizes


def postprocess_reference(cls_logits, box_deltas, anchors, level_sizes, image_hw, score_thresh,
                          topk, nms_thresh, detections):
    """The steps written out directly: sigmoid everything, threshold, sort, keep top-k."""
    num_classes = cls_logits.shape[1]
    boxes, scores, labels = [], [], []
    start = 0
    for size in level_sizes:
        level = 1 / (1 + np.exp(-cls_logits[start : start + size].astype(np.float64)))
        flat = level.reshape(-1)
        idx = np.flatnonzero(flat > score_thresh)
        idx = idx[np.argsort(-flat[idx], kind="stable")][:topk]
        anchor_idx = start + idx // num_classes
        boxes.append(clip_boxes(decode_boxes(box_deltas[anchor_idx], anchors[anchor_idx]),
                                image_hw))
        scores.append(flat[idx].astype(cls_logits.dtype))
        labels.append(idx % num_classes)
        start += size
    boxes, scores, labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections]
    return boxes[keep], scores[keep], labels[keep]


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([(0.05, 50, 0.5, 20), (0.3, 1000, 0.6, 100), (0.05, 5, 0.5, 7)]),
)
def test_equals_reference_and_keeps_contract(seed, dtype, params):
    score_thresh, topk, nms_thresh, detections = params
    rng = np.random.default_rng(seed)
    image_hw = (64, 96)
    cls_logits, box_deltas, anchors, level_sizes = head_outputs(
        rng, image_hw, [(8, 12), (4, 6), (2, 3)], num_classes=4, dtype=dtype
    )
    result = postprocess(cls_logits, box_deltas, anchors, level_sizes, image_hw, score_thresh,
                         topk, nms_thresh, detections)
    boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
    assert boxes.dtype == dtype and scores.dtype == dtype and labels.dtype == np.int64
    assert len(boxes) == len(scores) == len(labels) <= detections
    assert np.all(np.diff(scores) <= 0) and np.all(scores > score_thresh)
    assert np.all((labels >= 0) & (labels < 4))
    assert np.all(boxes[:, 0::2] >= 0) and np.all(boxes[:, 0::2] <= image_hw[1])
    assert np.all(boxes[:, 1::2] >= 0) and np.all(boxes[:, 1::2] <= image_hw[0])

    ref_boxes, ref_scores, ref_labels = postprocess_reference(
        cls_logits, box_deltas, anchors, level_sizes, image_hw, score_thresh, topk, nms_thresh,
        detections,
    )
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_array_equal(boxes, ref_boxes)


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([(0.05, 50, 0.5, 300), (0.05, 7, 0.7, 100), (0.3, 200, 0.5, 100)]),
)
def test_tied_scores_are_taken_by_flat_index(seed, dtype, params):
    # Saturated sigmoids and flat backgrounds give many equal logits: the top-k cut then falls
    # among ties, and the docstring promises the lowest flat indices win, as a stable sort.
    score_thresh, topk, nms_thresh, detections = params
    rng = np.random.default_rng(seed)
    image_hw = (64, 96)
    cls_logits, box_deltas, anchors, level_sizes = head_outputs(
        rng, image_hw, [(8, 12), (4, 6), (2, 3)], num_classes=4, dtype=dtype
    )
    cls_logits = rng.choice(np.array([-5.0, 0.0, 1.5, 4.0], dtype), cls_logits.shape)
    result = postprocess(cls_logits, box_deltas, anchors, level_sizes, image_hw, score_thresh,
                         topk, nms_thresh, detections)
    ref_boxes, ref_scores, ref_labels = postprocess_reference(
        cls_logits, box_deltas, anchors, level_sizes, image_hw, score_thresh, topk, nms_thresh,
        detections,
    )
    np.testing.assert_array_equal(result["labels"], ref_labels)
    np.testing.assert_array_equal(result["boxes"], ref_boxes)
    np.testing.assert_allclose(result["scores"], ref_scores,
                               rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_top_k_among_equal_scores_keeps_the_lowest_flat_indices():
    anchors = generate_anchors((64, 64), [(8, 8)], sizes=(16,))  # 576 anchors
    cls_logits = np.zeros((len(anchors), 3), np.float32)  # 1728 pairs, all scoring 0.5
    cls_logits[[7, 300], [2, 1]] = 1.0  # two better ones
    deltas = np.zeros((len(anchors), 4), np.float32)
    # No NMS (threshold 1) so that every candidate comes out: the top 10 are the two better
    # pairs, then the eight lowest flat indices among the ties.
    result = postprocess(cls_logits, deltas, anchors, [len(anchors)], (64, 64),
                         topk_candidates=10, nms_thresh=1.0, detections_per_img=10)
    flat = [7 * 3 + 2, 300 * 3 + 1] + list(range(8))
    np.testing.assert_array_equal(result["labels"], [f % 3 for f in flat])
    np.testing.assert_array_equal(result["boxes"], clip_boxes(anchors[[f // 3 for f in flat]],
                                                              (64, 64)))


def test_nothing_above_threshold_gives_empty_detections():
    anchors = generate_anchors((32, 32), [(4, 4)], sizes=(8,))
    result = postprocess(np.full((len(anchors), 3), -10, np.float32),
                         np.zeros((len(anchors), 4), np.float32), anchors, [len(anchors)],
                         (32, 32))
    assert result["boxes"].shape == (0, 4) and result["scores"].shape == (0,)
    assert result["labels"].dtype == np.int64
    with pytest.raises(ValueError, match="level_sizes"):
        postprocess(np.zeros((len(anchors), 3)), np.zeros((len(anchors), 4)), anchors, [5],
                    (32, 32))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_torchvision_postprocess_detections(dtype):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.retinanet import RetinaNet

    num_classes, image_hw = 20, (256, 320)
    feature_hws = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    model = RetinaNet(backbone, num_classes, score_thresh=0.05, nms_thresh=0.5,
                      detections_per_img=100, topk_candidates=1000)
    rng = np.random.default_rng(11)
    cls_logits, box_deltas, anchors, level_sizes = head_outputs(
        rng, image_hw, feature_hws, num_classes, dtype
    )
    # P3 has 32*40*9*20 = 230k (anchor, class) pairs, ~11k above 0.05: top-k matters there.
    split = np.cumsum(level_sizes)[:-1]
    expected = model.postprocess_detections(
        {"cls_logits": [torch.from_numpy(c)[None] for c in np.split(cls_logits, split)],
         "bbox_regression": [torch.from_numpy(d)[None] for d in np.split(box_deltas, split)]},
        [[torch.from_numpy(a) for a in np.split(anchors, split)]],
        [image_hw],
    )[0]
    result = postprocess(cls_logits, box_deltas, anchors, level_sizes, image_hw)
    assert len(result["labels"]) == 100
    np.testing.assert_array_equal(result["labels"], expected["labels"].numpy())
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(result["scores"], expected["scores"].numpy(), rtol=rtol)
    np.testing.assert_allclose(result["boxes"], expected["boxes"].numpy(), rtol=rtol, atol=1e-4)
