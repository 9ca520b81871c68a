"""CUDA detection kernels: pairwise box IoU, box decoding and non-maximum suppression.

The CPU twins are in ``kernels/cpu/detection.py`` (explained in ``retina_np.detection``'s
``boxes.py`` and ``nms.py``); these take numba.cuda device arrays and follow the same formulas
operation for operation. NMS uses the bitmask algorithm (torchvision's CUDA ``nms``); see
:func:`nms` for why.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda, njit, uint64

from retina_np.kernels.cuda import config
from retina_np.kernels.cuda import launch as cl


# ----------------------------------------------------------------------------- boxes
@functools.cache
def _box_iou_kernel(dtype: str):
    ZERO = np.dtype(dtype).type(0)

    @cuda.jit
    def kernel(a, b, out):
        # one thread per pair (i, j); torchvision's box_iou operation for operation
        i, j = cuda.grid(2)
        if i < a.shape[0] and j < b.shape[0]:
            area_a = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
            area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
            w = max(min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]), ZERO)
            h = max(min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]), ZERO)
            inter = w * h
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > ZERO else ZERO

    return kernel


def box_iou(boxes1, boxes2):
    """IoU of every pair: boxes1 (N, 4), boxes2 (M, 4) device arrays -> (N, M), 0 for an empty
    union."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = cl.empty((n, m), boxes1.dtype)
    if out.size:
        t = config.iou_tile()
        # x walks boxes2 (the long axis, anchors), so a warp writes one contiguous row piece
        cl.launch(_box_iou_kernel(np.dtype(boxes1.dtype).name), (cl.ceil_div(n, t),
                  cl.ceil_div(m, t)), (t, t), boxes1, boxes2, out)
    return out


@functools.cache
def _decode_kernel(dtype: str):
    T = numba.from_dtype(np.dtype(dtype))
    HALF = np.dtype(dtype).type(0.5)

    @cuda.jit
    def kernel(deltas, anchors, wx, wy, ww, wh, clamp, boxes):
        for r in range(cuda.grid(1), deltas.shape[0], cuda.gridsize(1)):
            aw = anchors[r, 2] - anchors[r, 0]
            ah = anchors[r, 3] - anchors[r, 1]
            ax = anchors[r, 0] + HALF * aw
            ay = anchors[r, 1] + HALF * ah
            dw = min(deltas[r, 2] / T(ww), T(clamp))
            dh = min(deltas[r, 3] / T(wh), T(clamp))
            ctr_x = (deltas[r, 0] / T(wx)) * aw + ax
            ctr_y = (deltas[r, 1] / T(wy)) * ah + ay
            half_w = HALF * (T(math.exp(dw)) * aw)
            half_h = HALF * (T(math.exp(dh)) * ah)
            boxes[r, 0] = ctr_x - half_w
            boxes[r, 1] = ctr_y - half_h
            boxes[r, 2] = ctr_x + half_w
            boxes[r, 3] = ctr_y + half_h

    return kernel


def decode_boxes(deltas, anchors, weights, scale_clamp):
    """Apply deltas (N, 4) to anchors (N, 4) (device arrays, one dtype) -> boxes (N, 4).

    The same formula as ``detection.decode_boxes``: centre += d * size, size *= exp(min(d,
    clamp)), in the dtype of deltas.
    """
    boxes = cl.empty(deltas.shape, deltas.dtype)
    wx, wy, ww, wh = (float(v) for v in weights)
    cl.launch_1d(_decode_kernel(np.dtype(deltas.dtype).name), deltas.shape[0], deltas, anchors,
                 wx, wy, ww, wh, float(scale_clamp), boxes)
    return boxes


# ----------------------------------------------------------------------------- NMS
@functools.cache
def _nms_mask_kernel(tile: int, dtype: str):
    T = numba.from_dtype(np.dtype(dtype))
    ZERO = np.dtype(dtype).type(0)

    @cuda.jit
    def kernel(x1, y1, x2, y2, labels, use_labels, iou_threshold, mask):
        # boxes in descending score order; block (cx, cy) compares the boxes of row tile cy
        # with those of column tile cx and sets bit jj of mask[i, cx] when box cx*tile + jj
        # (later in the order) overlaps box i by IoU > threshold
        n = x1.shape[0]
        row, col = cuda.blockIdx.y, cuda.blockIdx.x
        if col < row:  # the lower triangle: earlier boxes are never suppressed by later ones
            return
        t = cuda.threadIdx.x
        sx1 = cuda.shared.array(tile, T)
        sy1 = cuda.shared.array(tile, T)
        sx2 = cuda.shared.array(tile, T)
        sy2 = cuda.shared.array(tile, T)
        slab = cuda.shared.array(tile, numba.int64)
        j = col * tile + t
        if j < n:
            sx1[t] = x1[j]
            sy1[t] = y1[j]
            sx2[t] = x2[j]
            sy2[t] = y2[j]
            if use_labels != 0:
                slab[t] = labels[j]
        cuda.syncthreads()
        i = row * tile + t
        if i < n:
            ix1, iy1, ix2, iy2 = x1[i], y1[i], x2[i], y2[i]
            iarea = (ix2 - ix1) * (iy2 - iy1)
            bits = uint64(0)
            start = t + 1 if row == col else 0
            for jj in range(start, min(tile, n - col * tile)):
                if use_labels != 0 and slab[jj] != labels[i]:
                    continue  # batched NMS: boxes of other classes never suppress
                w = max(min(ix2, sx2[jj]) - max(ix1, sx1[jj]), ZERO)
                h = max(min(iy2, sy2[jj]) - max(iy1, sy1[jj]), ZERO)
                inter = w * h
                union = iarea + (sx2[jj] - sx1[jj]) * (sy2[jj] - sy1[jj]) - inter
                # the CPU's inter / union in the box dtype vs the float64 threshold; an empty
                # union (two empty boxes) gives NaN there, which suppresses nothing
                if union > ZERO and inter / union > iou_threshold:
                    bits |= uint64(1) << uint64(jj)
            mask[i, col] = bits

    return kernel


@njit(cache=True)
def _nms_reduce(mask, n, tile, max_keep):
    """The sequential half of bitmask NMS, on the host: walk the boxes in score order and
    keep each one that no kept box has marked; returns the kept positions."""
    removed = np.zeros(mask.shape[1], dtype=np.uint64)
    keep = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        word, bit = i // tile, i % tile
        if (removed[word] >> np.uint64(bit)) & np.uint64(1):
            continue
        keep[count] = i
        count += 1
        if count == max_keep:
            break
        for w in range(word, mask.shape[1]):  # only words at or after i's were written
            removed[w] |= mask[i, w]
    return keep[:count]


def _nms(boxes, scores, labels, iou_threshold, max_keep):
    scores_h = scores.copy_to_host()
    n = scores_h.shape[0]
    if n == 0 or max_keep == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores_h, kind="mergesort")  # stable: ties keep input order
    boxes_h = boxes.copy_to_host()[order]
    coords = [cl.to_device(boxes_h[:, c]) for c in range(4)]
    use_labels = labels is not None
    labels_d = cl.to_device(
        labels.copy_to_host().astype(np.int64)[order] if use_labels else np.zeros(1, np.int64)
    )
    tile = config.nms_tile()
    blocks = cl.ceil_div(n, tile)
    mask = cl.empty((n, blocks), np.uint64)
    cl.launch(_nms_mask_kernel(tile, np.dtype(boxes.dtype).name), (blocks, blocks), tile,
              *coords, labels_d, int(use_labels), float(iou_threshold), mask)
    limit = -1 if max_keep is None else int(max_keep)
    kept = _nms_reduce(mask.copy_to_host(), n, tile, limit)
    return order[kept]


def nms(boxes, scores, iou_threshold, max_keep=None):
    """Greedy NMS of device boxes (N, 4) and scores (N,) -> kept indices (host int64 array),
    by descending score (ties in input order), the same as ``detection.nms``.

    Bitmask NMS, in two halves. On the device, block (cx, cy) of a (T, T) grid of 64-box tiles
    computes the IoU of each box of tile cy with every later box of tile cx and packs the
    "suppresses" decisions into one uint64 per (box, tile): all N^2/2 IoUs in parallel, the
    O(N^2) part of the work. On the host, one pass in score order keeps a box unless a kept
    box's bit marks it, OR-ing the kept box's words into a running mask: N * N/64 word
    operations, sequential but tiny. Chosen over "top-k on the device, NMS on the host"
    because that leaves every IoU to the CPU; and the greedy order -- which no parallel scheme
    reproduces without such a sequential pass -- stays exactly the CPU's, so the kept set is
    identical. Costs: a device-to-host copy of N * N/64 words (1000 boxes: 125 KB).
    """
    return _nms(boxes, scores, None, iou_threshold, max_keep)


def batched_nms(boxes, scores, labels, iou_threshold, max_keep=None):
    """NMS within each class (``detection.batched_nms``): only same-label pairs set mask bits,
    and one greedy pass in global score order equals per-class greedy passes merged by score.
    """
    return _nms(boxes, scores, labels, iou_threshold, max_keep)
