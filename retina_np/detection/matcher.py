"""Matching anchors to ground-truth boxes.

Each anchor takes the ground-truth box it overlaps most and is labelled by that IoU:

    IoU >= high (0.5)        foreground, matched to that box
    low <= IoU < high        ignored (BETWEEN_THRESHOLDS): too ambiguous to call either way
    IoU < low (0.4)          background (BELOW_LOW_THRESHOLD)

With ``allow_low_quality_matches`` every ground-truth box also claims the anchors with which
it has its highest IoU (ties included), even below ``high``; otherwise a small or oddly
shaped box that no anchor covers well would never be trained on. This is torchvision's and
detectron2's ``Matcher``, including one subtlety: a claimed anchor is matched to *its own*
best box, which is the claiming box unless another box overlaps the anchor even more.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Sentinels of the (R,) match vector (a value >= 0 is the matched ground-truth index); they
# live with the kernels, which read them, and are re-exported here where they are made.
from retina_np.kernels.cpu.detection import _box_iou_kernel
from retina_np.kernels.sentinels import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS

# The paper's thresholds (section 4, "Training"): foreground at IoU >= 0.5, background < 0.4.
DEFAULT_FG_IOU_THRESH = 0.5
DEFAULT_BG_IOU_THRESH = 0.4


@njit(cache=True, nogil=True, error_model="numpy")
def _match_kernel(iou, high, low, allow_low_quality_matches):
    """The matcher loops; see :func:`match_anchors` for the contract."""
    num_gt, num_anchors = iou.shape
    best_gt = np.zeros(num_anchors, dtype=np.int64)  # (R,) argmax over gt, first on ties
    best_iou = iou[0].copy()  # (R,)
    for m in range(1, num_gt):
        row = iou[m]
        for r in range(num_anchors):
            # Selects rather than an if-block, so that LLVM vectorises the loop.
            better = row[r] > best_iou[r]
            best_gt[r] = m if better else best_gt[r]
            best_iou[r] = max(row[r], best_iou[r])

    matches = np.empty(num_anchors, dtype=np.int64)  # (R,)
    for r in range(num_anchors):
        v = best_iou[r]
        if v >= high:
            matches[r] = best_gt[r]
        elif v >= low:
            matches[r] = BETWEEN_THRESHOLDS
        else:
            matches[r] = BELOW_LOW_THRESHOLD

    if allow_low_quality_matches:
        for m in range(num_gt):
            row = iou[m]
            highest = row[0]
            for r in range(1, num_anchors):
                highest = max(highest, row[r])
            for r in range(num_anchors):
                if row[r] == highest:  # every tie
                    matches[r] = best_gt[r]
    return matches


def match_anchors(
    iou: np.ndarray,
    high: float = DEFAULT_FG_IOU_THRESH,
    low: float = DEFAULT_BG_IOU_THRESH,
    allow_low_quality_matches: bool = True,
) -> np.ndarray:
    """Assign each anchor a ground-truth index or a sentinel.

    Args:
        iou (ndarray[M, R]): IoU of each ground-truth box with each anchor,
            ``box_iou(gt_boxes, anchors)``.
        high (float): IoU at or above which an anchor is foreground.
        low (float): IoU below which an anchor is background; ``low <= high``.
        allow_low_quality_matches (bool): let each box also claim its best anchors.

    Returns:
        ndarray[R] int64: matched ground-truth index (>= 0), ``BELOW_LOW_THRESHOLD`` or
        ``BETWEEN_THRESHOLDS``. With M == 0 every anchor is ``BELOW_LOW_THRESHOLD``.
    """
    if low > high:
        raise ValueError(f"low threshold {low} must not exceed high threshold {high}")
    iou = np.asarray(iou)
    if iou.ndim != 2:
        raise ValueError(f"iou must be (M, R), got shape {iou.shape}")
    num_gt, num_anchors = iou.shape
    if num_gt == 0 or num_anchors == 0:
        return np.full(num_anchors, BELOW_LOW_THRESHOLD, dtype=np.int64)
    if not np.issubdtype(iou.dtype, np.floating):
        iou = iou.astype(np.float64)
    # Thresholds in the IoU dtype, as torch compares a float32 tensor with a Python float:
    # an IoU of exactly float32(0.4) must fall on the same side as it does there.
    scalar = iou.dtype.type
    return _match_kernel(
        np.ascontiguousarray(iou), scalar(high), scalar(low), bool(allow_low_quality_matches)
    )


@njit(cache=True, nogil=True, error_model="numpy")
def match_and_encode_kernel(boxes, labels, anchors, high, low, allow_low_quality_matches,
                            half, wx, wy):
    """One image's boxes (M, 4) and labels (M,) matched to the anchors (R, 4) in one call:
    the IoU, ``_match_kernel``, each foreground anchor's class and its box encoded, as
    ``retina_loss``'s matching (``detection/losses.py``, ``match_image_steps``) does it in
    NumPy calls, operation for operation in the anchors' dtype (half = 0.5 and the weights
    wx, wy in it too). -> (anchor_class (R,), foreground (F,), target deltas (F, 4)) with the
    size ratios gw / aw, gh / ah in place of dw, dh: their logarithm is left to NumPy's, which
    ``encode_boxes`` takes. One call instead of ~20 small NumPy calls an image (87 -> ~20 us
    with the validation around it; docs/performance.md, "The step's tail")."""
    num_gt, num_anchors = boxes.shape[0], anchors.shape[0]
    if num_gt == 0:
        matches = np.full(num_anchors, BELOW_LOW_THRESHOLD, np.int64)
    else:
        iou = np.empty((num_gt, num_anchors), anchors.dtype)  # (M, R)
        _box_iou_kernel(boxes, anchors, iou)
        matches = _match_kernel(iou, high, low, allow_low_quality_matches)  # (R,)
    foreground = np.flatnonzero(matches >= 0)  # (F,)
    anchor_class = matches.copy()  # sentinels kept
    deltas = np.empty((foreground.size, 4), anchors.dtype)
    for f in range(foreground.size):
        r = foreground[f]
        m = matches[r]
        anchor_class[r] = labels[m]
        aw, ah = anchors[r, 2] - anchors[r, 0], anchors[r, 3] - anchors[r, 1]
        gw, gh = boxes[m, 2] - boxes[m, 0], boxes[m, 3] - boxes[m, 1]
        ax, ay = anchors[r, 0] + half * aw, anchors[r, 1] + half * ah
        gx, gy = boxes[m, 0] + half * gw, boxes[m, 1] + half * gh
        deltas[f, 0] = wx * (gx - ax) / aw
        deltas[f, 1] = wy * (gy - ay) / ah
        deltas[f, 2] = gw / aw
        deltas[f, 3] = gh / ah
    return anchor_class, foreground, deltas
