"""From head outputs to detections: score, select, decode, clip, suppress.

For one image, as in the paper (section 5, "Inference") and torchvision's
``RetinaNet.postprocess_detections``:

1. per pyramid level, the score of every (anchor, class) pair is ``sigmoid(logit)``;
   keep the pairs scoring above ``score_thresh`` (0.05), then the best
   ``topk_candidates`` (1000) of those;
2. decode the kept pairs' anchors with their box deltas and clip them to the image;
3. merge the levels and run NMS per class (IoU 0.5);
4. keep the best ``detections_per_img`` (100).

Step 1 is the expensive one (R * K ~ 10^7 logits for an 800x800 image and 91 classes). The
sigmoid is monotonic, so the threshold is first applied to the logits themselves -- one
comparison per pair -- and the sigmoid is computed only for the few survivors.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from retina_np.detection.boxes import DEFAULT_BOX_CODER_WEIGHTS, clip_boxes, decode_boxes
from retina_np.detection.nms import batched_nms

# Section 5 of the paper: "we only decode box predictions from at most 1k top-scoring
# predictions per FPN level, after thresholding detector confidence at 0.05".
DEFAULT_SCORE_THRESH = 0.05
DEFAULT_TOPK_CANDIDATES = 1000
# "... and non-maximum suppression with a threshold of 0.5 is applied".
DEFAULT_NMS_THRESH = 0.5
# COCO evaluation looks at no more than 100 detections per image.
DEFAULT_DETECTIONS_PER_IMG = 100

# The logit pre-filter sits this far below logit(score_thresh), far more than the rounding
# error of a float32 sigmoid, so that it never drops a pair whose score passes the threshold.
_LOGIT_MARGIN = 1e-3


@njit(cache=True, nogil=True, error_model="numpy")
def _logits_above(flat_logits, cut):
    """Indices (int64, ascending) of the logits strictly above ``cut``.

    Two passes, count then fill, so that no buffer the size of the input is allocated;
    both are simple loops over contiguous memory.
    """
    count = 0
    for i in range(flat_logits.shape[0]):
        count += flat_logits[i] > cut
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(flat_logits.shape[0]):
        if flat_logits[i] > cut:
            out[pos] = i
            pos += 1
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in the dtype of ``x`` (the pre-filter keeps x > logit(0.05), so
    ``exp(-x)`` cannot overflow here)."""
    return 1 / (1 + np.exp(-x))


def _top_candidates(logits_level: np.ndarray, score_thresh: float, topk: int):
    """Step 1 for one level: the best ``topk`` (anchor, class) pairs scoring > threshold.

    Args:
        logits_level (ndarray[R_l, K]): classification logits of the level.

    Returns:
        tuple[ndarray, ndarray]: scores (by descending score, ties by flat index) and their
        flat indices ``anchor * K + class`` into the level, both (n,) with n <= topk.
    """
    flat = logits_level.reshape(-1)  # (R_l*K,)
    thresh = flat.dtype.type(score_thresh)
    if score_thresh <= 0:
        idx = np.arange(flat.size, dtype=np.int64)
    elif score_thresh >= 1:
        return np.zeros(0, dtype=flat.dtype), np.zeros(0, dtype=np.int64)
    else:
        cut = math.log(score_thresh / (1 - score_thresh)) - _LOGIT_MARGIN
        idx = _logits_above(flat, flat.dtype.type(cut))  # (c,) a superset of the survivors
    scores = _sigmoid(flat[idx])
    passed = scores > thresh
    scores, idx = scores[passed], idx[passed]
    if scores.size > topk:
        # The k-th best score in linear time (partition), then everything above it and, of the
        # scores tied with it, those with the lowest flat indices (idx is ascending). An
        # argpartition would pick among such ties arbitrarily.
        kth = -np.partition(-scores, topk - 1)[topk - 1]
        chosen = scores > kth
        tied = np.flatnonzero(scores == kth)
        chosen[tied[: topk - np.count_nonzero(chosen)]] = True
        scores, idx = scores[chosen], idx[chosen]
    order = np.lexsort((idx, -scores))  # descending score, then ascending index
    return scores[order], idx[order]


def postprocess(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    anchors: np.ndarray,
    level_sizes,
    image_hw,
    score_thresh: float = DEFAULT_SCORE_THRESH,
    topk_candidates: int = DEFAULT_TOPK_CANDIDATES,
    nms_thresh: float = DEFAULT_NMS_THRESH,
    detections_per_img: int = DEFAULT_DETECTIONS_PER_IMG,
    box_coder_weights=DEFAULT_BOX_CODER_WEIGHTS,
) -> dict:
    """Detections of one image from its head outputs.

    Args:
        cls_logits (ndarray[R, K]): classification logits.
        box_deltas (ndarray[R, 4]): box regression deltas.
        anchors (ndarray[R, 4]): the anchors, in the same order.
        level_sizes (Sequence[int]): number of anchors R_l of each level (sums to R).
        image_hw (tuple[int, int]): height and width the boxes are clipped to.
        score_thresh (float): keep (anchor, class) pairs with sigmoid score above this.
        topk_candidates (int): at most this many pairs per level are decoded.
        nms_thresh (float): IoU threshold of the per-class NMS.
        detections_per_img (int): at most this many detections are returned.
        box_coder_weights (tuple[float, float, float, float]): those the deltas were trained
            with (``decode_boxes``).

    Returns:
        dict: ``"boxes"`` (ndarray[D, 4], dtype of ``box_deltas``: float32 for the model),
        ``"scores"`` (ndarray[D], descending, dtype of ``cls_logits``), ``"labels"``
        (ndarray[D] int64).
    """
    cls_logits = np.ascontiguousarray(cls_logits)
    box_deltas = np.asarray(box_deltas)
    anchors = np.asarray(anchors)
    num_anchors, num_classes = cls_logits.shape
    if box_deltas.shape != (num_anchors, 4) or anchors.shape != (num_anchors, 4):
        raise ValueError(
            f"cls_logits {cls_logits.shape}, box_deltas {box_deltas.shape} and anchors "
            f"{anchors.shape} must all have R = {num_anchors} rows"
        )
    if sum(level_sizes) != num_anchors:
        raise ValueError(f"level_sizes {list(level_sizes)} do not add up to R = {num_anchors}")

    all_boxes, all_scores, all_labels = [], [], []
    start = 0
    for size in level_sizes:
        scores, flat_idx = _top_candidates(
            cls_logits[start : start + size], score_thresh, topk_candidates
        )
        anchor_idx = start + flat_idx // num_classes  # (n,) into the image's anchors
        boxes = decode_boxes(box_deltas[anchor_idx], anchors[anchor_idx],
                             box_coder_weights)  # (n, 4)
        all_boxes.append(clip_boxes(boxes, image_hw))
        all_scores.append(scores)
        all_labels.append(flat_idx % num_classes)
        start += size

    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), box_deltas.dtype)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0, cls_logits.dtype)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    keep = batched_nms(boxes, scores, labels, nms_thresh, max_keep=detections_per_img)  # (D,)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
