"""Non-maximum suppression: of several overlapping detections keep the best-scoring one.

Greedy NMS: visit the boxes from the highest score down; keep a box unless a box kept
before it overlaps it with IoU > ``iou_threshold``. A suppressed box never suppresses
anything, so the result is fully decided once the order is fixed.

The kernels (``kernels/cpu/detection.py``, ``_nms_sorted``: the same algorithm as
torchvision's CPU kernel, made faster; on a GPU the bitmask NMS of ``kernels/cuda/``) sort the
boxes once, stably, so that equal scores keep their input order, and stop as soon as
``max_keep`` boxes are kept: the kept boxes come out in score order, so a caller that wants
only the best D (postprocessing) need not suppress the rest.

:func:`batched_nms` runs NMS per class: the boxes are grouped by label (keeping score order
inside each group) and each group is suppressed on its own, instead of offsetting the
coordinates by class, which would cost float32 precision and compare boxes across classes.
The functions here check and convert the arguments and call the kernels through
``retina_np.backend``.
"""

from __future__ import annotations

import numpy as np

from retina_np import backend


def _check(boxes, scores, max_keep):
    """boxes (N, 4) and scores (N,) checked, C-contiguous in their common float dtype."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got {scores.shape}")
    dtype = np.result_type(boxes.dtype, scores.dtype, np.float32)
    if max_keep is not None and max_keep < 0:
        raise ValueError(f"max_keep must be >= 0 or None, got {max_keep}")
    return np.ascontiguousarray(boxes, dtype=dtype), np.ascontiguousarray(scores, dtype=dtype)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None):
    """Greedy non-maximum suppression.

    Args:
        boxes (ndarray[N, 4]): ``x1, y1, x2, y2``.
        scores (ndarray[N]): higher is better.
        iou_threshold (float): a box is dropped if it overlaps a kept, better-scoring box
            with IoU > this.
        max_keep (int | None): stop after this many kept boxes (the result is then the
            first ``max_keep`` of the full result).

    Returns:
        ndarray[K] int64: indices of the kept boxes, by descending score (ties in input
        order).
    """
    boxes, scores = _check(boxes, scores, max_keep)
    return backend.kernels_for(boxes, scores).nms(boxes, scores, iou_threshold, max_keep)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou_threshold: float,
    max_keep: int | None = None,
):
    """Non-maximum suppression within each class: boxes of different labels never suppress
    each other.

    Args:
        boxes (ndarray[N, 4]): ``x1, y1, x2, y2``.
        scores (ndarray[N]): higher is better.
        labels (ndarray[N]): integer class of each box.
        iou_threshold (float): IoU above which a lower-scoring box of the same class is dropped.
        max_keep (int | None): return at most this many (the best-scoring) kept boxes.

    Returns:
        ndarray[K] int64: indices of the kept boxes, by descending score (ties in input
        order).
    """
    boxes, scores = _check(boxes, scores, max_keep)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must be {scores.shape}, got {labels.shape}")
    return backend.kernels_for(boxes, scores, labels).batched_nms(boxes, scores, labels,
                                                                  iou_threshold, max_keep)
