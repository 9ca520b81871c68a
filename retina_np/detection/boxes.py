"""Box geometry: area, IoU, clipping, the box coder (encode / decode) and target checks.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels with width ``x2 - x1`` (no ``+ 1``), the
convention of torchvision and detectron2. Every function accepts float32 and float64 and
returns the dtype it was given; empty ``(0, 4)`` inputs give empty outputs.

The box coder turns a ground-truth box into the regression target of an anchor and back:

    dx = (gx - ax) / aw     dy = (gy - ay) / ah     (gx, gy: centres, x1 + 0.5 * w)
    dw = log(gw / aw)       dh = log(gh / ah)

each multiplied by a weight (1, 1, 1, 1 for RetinaNet). Decoding inverts this, clamping
``dw`` and ``dh`` first so that an untrained head cannot ask ``exp`` for a box wider than
1000 / 16 times its anchor.

The IoU and decoding loops are kernels (``kernels/cpu/detection.py``, and their CUDA twins);
the functions here check and convert the arguments and call them through ``retina_np.backend``.
"""

from __future__ import annotations

import math

import numpy as np

from retina_np import backend

# An anchor may grow at most 1000/16 times (62.5x) in width or height when decoded: the
# largest sensible box (~1000 px) over the smallest anchor stride (16 px in the original
# Detectron). Without the clamp exp(dw) overflows float32 for dw > 88.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# RetinaNet regresses raw deltas: no per-coordinate scaling of the targets.
DEFAULT_BOX_CODER_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def _as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """A float (N, 4) array view of ``boxes`` (integers are promoted to float32)."""
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        if boxes.size == 0:
            return boxes.reshape(0, 4)
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box.

    Args:
        boxes (ndarray[N, 4]): ``x1, y1, x2, y2``.

    Returns:
        ndarray[N]: ``(x2 - x1) * (y2 - y1)``, in the dtype of ``boxes``.
    """
    boxes = _as_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    ``|a & b| / (|a| + |b| - |a & b|)``, the intersection's width and height clipped at 0; the
    kernel (``kernels/cpu/detection.py``) follows torchvision's ``box_iou`` operation for
    operation, so float32 results agree bit for bit.

    Args:
        boxes1 (ndarray[N, 4]): ``x1, y1, x2, y2``.
        boxes2 (ndarray[M, 4]): ``x1, y1, x2, y2``.

    Returns:
        ndarray[N, M]: IoU in [0, 1], in the common float dtype of the inputs. Pairs whose
        union is empty (two zero-area boxes) get 0.
    """
    boxes1, boxes2 = _as_boxes(boxes1, "boxes1"), _as_boxes(boxes2, "boxes2")
    dtype = np.result_type(boxes1.dtype, boxes2.dtype)
    a = np.ascontiguousarray(boxes1, dtype=dtype)
    b = np.ascontiguousarray(boxes2, dtype=dtype)
    return backend.kernels_for(a, b).box_iou(a, b)  # (N, M)


def clip_boxes(boxes: np.ndarray, image_hw) -> np.ndarray:
    """Clip boxes to the image: x into [0, W], y into [0, H].

    Args:
        boxes (ndarray[N, 4]): ``x1, y1, x2, y2``.
        image_hw (tuple[int, int]): image height and width.

    Returns:
        ndarray[N, 4]: a clipped copy, same dtype.
    """
    boxes = _as_boxes(boxes)
    height, width = image_hw
    out = np.empty_like(boxes)
    np.clip(boxes[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def _centres_and_sizes(boxes: np.ndarray):
    """``(cx, cy, w, h)`` columns of ``boxes`` (N, 4), each (N,); centre = x1 + 0.5 * w."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def encode_boxes(gt_boxes: np.ndarray, anchors: np.ndarray, weights=DEFAULT_BOX_CODER_WEIGHTS):
    """Regression targets that turn each anchor into its ground-truth box.

    Args:
        gt_boxes (ndarray[N, 4]): the box matched to each anchor.
        anchors (ndarray[N, 4]): the anchors, row for row.
        weights (tuple[float, float, float, float]): multipliers of ``dx, dy, dw, dh``.

    Returns:
        ndarray[N, 4]: ``dx, dy, dw, dh`` in the dtype of ``gt_boxes`` (the inverse of
        :func:`decode_boxes` for ``dw, dh`` below the clamp).
    """
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
    anchors = _as_boxes(anchors, "anchors").astype(gt_boxes.dtype, copy=False)
    if gt_boxes.shape != anchors.shape:
        raise ValueError(f"gt_boxes {gt_boxes.shape} and anchors {anchors.shape} must pair up")
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = _centres_and_sizes(anchors)
    gx, gy, gw, gh = _centres_and_sizes(gt_boxes)
    deltas = np.empty_like(gt_boxes)  # (N, 4)
    deltas[:, 0] = wx * (gx - ax) / aw
    deltas[:, 1] = wy * (gy - ay) / ah
    deltas[:, 2] = ww * np.log(gw / aw)
    deltas[:, 3] = wh * np.log(gh / ah)
    return deltas


def decode_boxes(
    deltas: np.ndarray,
    anchors: np.ndarray,
    weights=DEFAULT_BOX_CODER_WEIGHTS,
    scale_clamp: float = _DEFAULT_SCALE_CLAMP,
):
    """Apply regression deltas to anchors (the inverse of :func:`encode_boxes`).

    Args:
        deltas (ndarray[N, 4]): ``dx, dy, dw, dh`` per anchor.
        anchors (ndarray[N, 4]): the anchors, row for row.
        weights (tuple[float, float, float, float]): the weights used by the encoder.
        scale_clamp (float): ``dw / ww`` and ``dh / wh`` are clamped to at most this before
            ``exp`` (default ``log(1000 / 16)``).

    Returns:
        ndarray[N, 4]: ``x1, y1, x2, y2`` in the dtype of ``deltas``.
    """
    deltas = _as_boxes(deltas, "deltas")
    anchors = _as_boxes(anchors, "anchors").astype(deltas.dtype, copy=False)
    if deltas.shape != anchors.shape:
        raise ValueError(f"deltas {deltas.shape} and anchors {anchors.shape} must pair up")
    # centre += (d / weight) * size, size *= exp(min(d / weight, clamp)), in the dtype of deltas
    return backend.kernels_for(deltas, anchors).decode_boxes(deltas, anchors, weights,
                                                             scale_clamp)


def validate_boxes(boxes, labels, num_classes: int | None = None, image_index: int = 0) -> None:
    """Check one image's targets; raise ``ValueError`` naming the image and the box.

    A target box must be finite with ``x2 > x1`` and ``y2 > y1`` (a degenerate box has no
    centre-size encoding), and its label an integer in ``0 .. num_classes - 1``. Zero boxes
    are fine.

    Args:
        boxes (ndarray[M, 4]): ground-truth boxes of the image.
        labels (ndarray[M]): their class indices.
        num_classes (int | None): K; ``None`` checks only that labels are >= 0.
        image_index (int): position of the image in its batch, for the message.
    """
    where = f"image {image_index}"
    boxes = np.asarray(boxes)
    labels = np.asarray(labels)
    if boxes.size == 0 and labels.size == 0:
        return
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (M, 4), got {boxes.shape}")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"{where}: labels must have shape ({boxes.shape[0]},) to match the boxes, "
            f"got {labels.shape}"
        )
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{where}: box {i} has a NaN or infinite coordinate: {boxes[i].tolist()}")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        i = int(np.flatnonzero(degenerate)[0])
        raise ValueError(
            f"{where}: box {i} is degenerate (needs x2 > x1 and y2 > y1): {boxes[i].tolist()}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise ValueError(f"{where}: label {i} is not an integer: {labels[i]!r}")
    upper = np.inf if num_classes is None else num_classes
    bad = (labels < 0) | (labels >= upper)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = "0 or more" if num_classes is None else f"0..{num_classes - 1}"
        raise ValueError(f"{where}: label {i} is {labels[i]!r}, outside {allowed}")
