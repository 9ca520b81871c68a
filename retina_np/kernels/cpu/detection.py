"""The detection kernels on the CPU: pairwise box IoU, box decoding and greedy non-maximum
suppression, with the names and signatures of their CUDA twins (``kernels/cuda/detection.py``).

``retina_np.detection`` (``boxes.py``, ``nms.py``) explains them and checks and converts the
arguments: these take C-contiguous float arrays of one dtype, and every number as an argument.

NMS is torchvision's CPU algorithm, made faster:

* sort once (stable, so equal scores keep their input order) and copy the coordinates into
  four contiguous arrays in that order, with the areas precomputed;
* when a box is kept, test every later box against it in one branch-free loop that LLVM
  vectorises (already-suppressed boxes are re-tested harmlessly, which is cheaper than a
  branch per box);
* stop as soon as ``max_keep`` boxes are kept: the kept boxes come out in score order, so
  a caller that wants only the best D (postprocessing) need not suppress the rest.

``batched_nms`` groups the boxes by label (keeping score order inside each group) and
suppresses each group on its own, instead of offsetting the coordinates by class, which would
cost float32 precision and compare boxes across classes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# "No limit" for max_keep inside the kernels.
_KEEP_ALL = -1


# ----------------------------------------------------------------------------- IoU
# error_model="numpy": x / 0 gives inf or NaN instead of raising.
@njit(cache=True, nogil=True, error_model="numpy")
def _box_iou_kernel(a, b, out):
    """IoU of every box of ``a`` with every box of ``b``, written into ``out`` (N, M).

    The inner loop runs over ``b`` (the long axis when ``b`` holds the anchors), whose
    coordinates are first copied into four contiguous arrays so that LLVM can vectorise it.
    The arithmetic follows torchvision's ``box_iou`` operation for operation, so float32
    results agree bit for bit.
    """
    n = a.shape[0]
    m = b.shape[0]
    zero = out.dtype.type(0)
    bx1 = np.ascontiguousarray(b[:, 0])
    by1 = np.ascontiguousarray(b[:, 1])
    bx2 = np.ascontiguousarray(b[:, 2])
    by2 = np.ascontiguousarray(b[:, 3])
    area_b = (bx2 - bx1) * (by2 - by1)  # (M,)
    for i in range(n):
        ax1, ay1, ax2, ay2 = a[i, 0], a[i, 1], a[i, 2], a[i, 3]
        area_a = (ax2 - ax1) * (ay2 - ay1)
        for j in range(m):
            w = min(ax2, bx2[j]) - max(ax1, bx1[j])
            h = min(ay2, by2[j]) - max(ay1, by1[j])
            w = max(w, zero)
            h = max(h, zero)
            inter = w * h
            union = area_a + area_b[j] - inter
            # Two zero-area boxes have no overlap to speak of: IoU 0, not 0 / 0.
            out[i, j] = inter / union if union > zero else zero


def box_iou(boxes1, boxes2):
    """IoU of every pair: boxes1 (N, 4), boxes2 (M, 4) of one dtype -> (N, M), 0 for an empty
    union."""
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype)  # (N, M)
    if out.size:
        _box_iou_kernel(boxes1, boxes2, out)
    return out


# ----------------------------------------------------------------------------- decoding
def decode_boxes(deltas, anchors, weights, scale_clamp):
    """Apply deltas (N, 4) to anchors (N, 4) of one dtype -> boxes (N, 4) ``x1, y1, x2, y2``:
    centre += (d / weight) * size, size *= exp(min(d / weight, scale_clamp))."""
    wx, wy, ww, wh = weights
    aw = anchors[:, 2] - anchors[:, 0]
    ah = anchors[:, 3] - anchors[:, 1]
    ax = anchors[:, 0] + 0.5 * aw
    ay = anchors[:, 1] + 0.5 * ah
    dw = np.minimum(deltas[:, 2] / ww, scale_clamp)
    dh = np.minimum(deltas[:, 3] / wh, scale_clamp)
    ctr_x = (deltas[:, 0] / wx) * aw + ax
    ctr_y = (deltas[:, 1] / wy) * ah + ay
    half_w = 0.5 * (np.exp(dw) * aw)
    half_h = 0.5 * (np.exp(dh) * ah)
    boxes = np.empty_like(deltas)  # (N, 4)
    boxes[:, 0] = ctr_x - half_w
    boxes[:, 1] = ctr_y - half_h
    boxes[:, 2] = ctr_x + half_w
    boxes[:, 3] = ctr_y + half_h
    return boxes


# ----------------------------------------------------------------------------- NMS
@njit(cache=True, nogil=True, error_model="numpy")
def _nms_sorted(x1, y1, x2, y2, iou_threshold, max_keep, keep):
    """Greedy NMS on boxes already in descending score order.

    Args:
        x1, y1, x2, y2 (ndarray[N]): contiguous coordinates, best score first.
        iou_threshold (scalar of the box dtype): suppress when IoU > this.
        max_keep (int): stop after this many kept boxes (``_KEEP_ALL``: no limit).
        keep (ndarray[N] uint8): output, 1 for kept positions (must start at 0).

    Returns:
        int: number of kept boxes.
    """
    n = x1.shape[0]
    zero = x1.dtype.type(0)
    areas = (x2 - x1) * (y2 - y1)  # (N,)
    # int32 flags rather than bytes: the OR below then runs at the width of the float32
    # lanes, the fastest variant measured.
    suppressed = np.zeros(n, dtype=np.int32)  # (N,)
    num_kept = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[i] = 1
        num_kept += 1
        if num_kept == max_keep:
            break
        ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], areas[i]
        # Views of the boxes after i, indexed from 0: Numba then knows no index is negative
        # (no wraparound test per access) and LLVM vectorises the loop, ~5x faster.
        later_x1, later_y1, later_x2, later_y2 = x1[i + 1 :], y1[i + 1 :], x2[i + 1 :], y2[i + 1 :]
        later_areas, later_suppressed = areas[i + 1 :], suppressed[i + 1 :]
        for j in range(later_x1.shape[0]):
            w = max(min(ix2, later_x2[j]) - max(ix1, later_x1[j]), zero)
            h = max(min(iy2, later_y2[j]) - max(iy1, later_y1[j]), zero)
            inter = w * h
            iou = inter / (iarea + later_areas[j] - inter)  # 0 / 0 = NaN: never suppresses
            later_suppressed[j] |= iou > iou_threshold
    return num_kept


@njit(cache=True, nogil=True, error_model="numpy")
def _nms_kernel(boxes, scores, iou_threshold, max_keep):
    """Sort, gather, suppress; returns the kept input indices in score order."""
    order = np.argsort(-scores, kind="mergesort")  # (N,) stable: ties keep input order
    x1 = boxes[order, 0].copy()
    y1 = boxes[order, 1].copy()
    x2 = boxes[order, 2].copy()
    y2 = boxes[order, 3].copy()
    keep = np.zeros(order.shape[0], dtype=np.uint8)
    _nms_sorted(x1, y1, x2, y2, iou_threshold, max_keep, keep)
    return order[keep == 1]


@njit(cache=True, nogil=True, error_model="numpy")
def _batched_nms_kernel(boxes, scores, labels, iou_threshold, max_keep):
    """Per-label NMS; returns the kept input indices in score order."""
    n = scores.shape[0]
    by_score = np.argsort(-scores, kind="mergesort")  # (N,)
    # Stable sort by label of the score-sorted list: each class is one contiguous run,
    # still in descending score order.
    by_class = by_score[np.argsort(labels[by_score], kind="mergesort")]  # (N,)
    x1 = boxes[by_class, 0].copy()
    y1 = boxes[by_class, 1].copy()
    x2 = boxes[by_class, 2].copy()
    y2 = boxes[by_class, 3].copy()
    keep = np.zeros(n, dtype=np.uint8)  # (N,) over by_class positions
    start = 0
    while start < n:
        label = labels[by_class[start]]
        stop = start + 1
        while stop < n and labels[by_class[stop]] == label:
            stop += 1
        # Slices of contiguous arrays are contiguous views: no copies per class.
        _nms_sorted(x1[start:stop], y1[start:stop], x2[start:stop], y2[start:stop],
                    iou_threshold, max_keep, keep[start:stop])
        start = stop
    kept_input = np.zeros(n, dtype=np.bool_)  # (N,) over input indices
    for pos in range(n):
        if keep[pos]:
            kept_input[by_class[pos]] = True
    result = np.empty(n, dtype=np.int64)
    count = 0
    for idx in by_score:  # emit in global score order
        if kept_input[idx]:
            result[count] = idx
            count += 1
            if count == max_keep:
                break
    return result[:count]


def _threshold_for(dtype, iou_threshold: float):
    """The threshold as a scalar of the box dtype, with the same decisions as the float64 one.

    torchvision compares the float32 IoU with a float64 threshold. Comparing two float32
    numbers is cheaper and vectorises better, and for a float32 ``v`` the test ``v > t`` is
    the same as ``v > f`` with ``f`` the largest float32 not above ``t``.
    """
    f = dtype.type(iou_threshold)
    if float(f) > float(iou_threshold):  # Python floats: an exact comparison
        f = np.nextafter(f, dtype.type(-np.inf))
    return f


def nms(boxes, scores, iou_threshold, max_keep=None):
    """Greedy NMS of boxes (N, 4) and scores (N,) of one dtype -> kept indices (int64), by
    descending score (ties in input order); at most ``max_keep`` of them (None: no limit)."""
    limit = _KEEP_ALL if max_keep is None else int(max_keep)
    if boxes.shape[0] == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64)
    return _nms_kernel(boxes, scores, _threshold_for(boxes.dtype, iou_threshold), limit)


def batched_nms(boxes, scores, labels, iou_threshold, max_keep=None):
    """NMS within each label (labels (N,) int64): boxes of different labels never suppress
    each other; kept indices (int64) by descending score, at most ``max_keep``."""
    limit = _KEEP_ALL if max_keep is None else int(max_keep)
    if boxes.shape[0] == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64)
    return _batched_nms_kernel(boxes, scores, labels, _threshold_for(boxes.dtype, iou_threshold),
                               limit)
