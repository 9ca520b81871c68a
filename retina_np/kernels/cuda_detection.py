"""CUDA twins of the detection kernels: focal loss, smooth-L1 / L1 (also over the foreground
rows of one image, ``box_loss_rows``), pairwise IoU, box decoding and non-maximum suppression.

The CPU versions live in ``retina_np.detection`` (``losses.py``, ``boxes.py``, ``nms.py``);
these take numba.cuda device arrays and follow the same formulas operation for operation. The
focal loss does not even copy its formula: its device function is the CPU's
``_focal_element`` Python source, compiled a second time for the GPU.

Loss kernels return ``(loss, gradient)`` like the CPU functions: the gradient is a device
array, the loss a Python float: each block adds its elements' losses in float64 in shared
memory, and the host adds the per-block partial sums (a few hundred numbers) in order
(``cuda_reduce.launch_and_sum``).

NMS uses the bitmask algorithm (torchvision's CUDA ``nms``); see :func:`nms` for why.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda, float64, njit, uint64

from retina_np.detection.boxes import DEFAULT_BOX_CODER_WEIGHTS
from retina_np.detection.losses import (
    DEFAULT_FOCAL_ALPHA,
    DEFAULT_FOCAL_GAMMA,
    DEFAULT_SMOOTH_L1_BETA,
    _alpha_for_kernel,
    _focal_element,
)
from retina_np.detection.matcher import BETWEEN_THRESHOLDS
from retina_np.kernels import cuda_config
from retina_np.kernels import cuda_launch as cl
from retina_np.kernels.cuda_reduce import block_sum_to, launch_and_sum

_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)  # detection.boxes' clamp of dw, dh

# The CPU's focal-loss element (float64 maths from exp(-|x|)), compiled for the device.
_focal_element_device = cuda.jit(device=True)(_focal_element.py_func)


# ----------------------------------------------------------------------------- focal loss
@functools.cache
def _focal_anchor_classes_kernel(threads: int):
    @cuda.jit
    def kernel(logits, anchor_class, K, alpha, gamma, grad_scale, dlogits, partial):
        # logits, dlogits flat (R*K,); anchor_class (R,)
        sh = cuda.shared.array(threads, float64)
        total = 0.0
        for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
            r = i // K
            cls = anchor_class[r]
            if cls == BETWEEN_THRESHOLDS:  # ignored anchor: no loss, no gradient
                dlogits[i] = 0
                continue
            t = 1.0 if i - r * K == cls else 0.0
            loss, grad = _focal_element_device(float64(logits[i]), t, alpha, gamma)
            total += loss
            dlogits[i] = grad * grad_scale
        block_sum_to(partial, sh, total, threads)

    return kernel


def focal_loss_anchor_classes(logits, anchor_class, alpha=DEFAULT_FOCAL_ALPHA,
                              gamma=DEFAULT_FOCAL_GAMMA, grad_scale=1.0, out=None):
    """Focal loss of one image from per-anchor classes (the CPU's _focal_loss_anchor_classes).

    Args:
        logits (device[R, K]): classification logits, float32 or float64.
        anchor_class (device[R] int64): class k >= 0 of a foreground anchor (target 1 at k,
            0 elsewhere), BELOW_LOW_THRESHOLD (all targets 0) or BETWEEN_THRESHOLDS (ignored).
        alpha (float | None), gamma (float): as in ``detection.sigmoid_focal_loss``.
        grad_scale (float): the gradient is returned multiplied by this.
        out (device[R, K] | None): where to write the gradient (e.g. one image of a batch's
            gradient); a new array when None.

    Returns:
        tuple[float, device[R, K]]: the unscaled loss sum and grad_scale * d loss / d logits.
    """
    R, K = logits.shape
    dlogits = cl.empty((R, K), logits.dtype) if out is None else out
    total = launch_and_sum(
        _focal_anchor_classes_kernel, logits.size, cl.flat(logits), anchor_class, K,
        _alpha_for_kernel(alpha), float(gamma), float(grad_scale), cl.flat(dlogits))
    return total, dlogits


@functools.cache
def _focal_dense_kernel(threads: int):
    @cuda.jit
    def kernel(logits, targets, alpha, gamma, dlogits, partial):
        sh = cuda.shared.array(threads, float64)
        total = 0.0
        for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
            loss, grad = _focal_element_device(float64(logits[i]), float64(targets[i]), alpha,
                                               gamma)
            total += loss
            dlogits[i] = grad
        block_sum_to(partial, sh, total, threads)

    return kernel


def sigmoid_focal_loss(logits, targets, alpha=DEFAULT_FOCAL_ALPHA, gamma=DEFAULT_FOCAL_GAMMA):
    """Summed sigmoid focal loss over dense targets in [0, 1] (same shape as logits).

    Returns:
        tuple[float, device[...]]: the loss sum and d loss / d logits, shaped like logits.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    dlogits = cl.empty(logits.shape, logits.dtype)
    total = launch_and_sum(
        _focal_dense_kernel, logits.size, cl.flat(logits), cl.flat(targets),
        _alpha_for_kernel(alpha), float(gamma), cl.flat(dlogits))
    return total, dlogits


# ----------------------------------------------------------------------------- box losses
@functools.cache
def _smooth_l1_kernel(threads: int):
    @cuda.jit
    def kernel(pred, target, beta, dpred, partial):
        # beta == 0 is L1: the gradient sign(d), 0 at d == 0
        sh = cuda.shared.array(threads, float64)
        total = 0.0
        for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
            d = pred[i] - target[i]  # in the input dtype, as numpy
            a = abs(d)
            if a < beta:
                total += float64(0.5) * float64(d) * float64(d) / float64(beta)
                dpred[i] = d / beta
            else:
                total += float64(a) - float64(0.5) * float64(beta)
                if d > 0:
                    dpred[i] = 1
                elif d < 0:
                    dpred[i] = -1
                else:
                    dpred[i] = 0
        block_sum_to(partial, sh, total, threads)

    return kernel


def smooth_l1_loss(pred, target, beta=DEFAULT_SMOOTH_L1_BETA):
    """Summed smooth-L1 loss and its gradient d loss / d pred (a device array like pred).

    loss = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta, d = pred - target; beta = 0 is L1.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    dpred = cl.empty(pred.shape, pred.dtype)
    total = launch_and_sum(_smooth_l1_kernel, pred.size, cl.flat(pred), cl.flat(target),
                                  pred.dtype.type(beta), cl.flat(dpred))
    return total, dpred


def l1_loss(pred, target):
    """Summed L1 loss sum |pred - target| and its gradient sign(pred - target) (0 at 0)."""
    return smooth_l1_loss(pred, target, 0.0)


@functools.cache
def _box_loss_rows_kernel(threads: int, dtype: str):
    ONE, ZERO = np.dtype(dtype).type(1), np.dtype(dtype).type(0)

    @cuda.jit
    def kernel(pred, rows, target, beta, divisor, dpred, partial):
        # pred, dpred (R, 4); rows (F,); target (F, 4); one thread per (f, coordinate)
        sh = cuda.shared.array(threads, float64)
        total = 0.0
        for i in range(cuda.grid(1), target.size, cuda.gridsize(1)):
            f = i // 4
            c = i - 4 * f
            r = rows[f]
            d = pred[r, c] - target[f, c]  # in the input dtype, as numpy
            a = abs(d)
            if a < beta:
                total += float64(0.5) * float64(d) * float64(d) / float64(beta)
                g = d / beta
            else:  # beta == 0 (L1) always lands here: the gradient sign(d), 0 at d == 0
                total += float64(a) - float64(0.5) * float64(beta)
                g = ONE if d > 0 else (-ONE if d < 0 else ZERO)
            dpred[r, c] = g / divisor  # the CPU's d / (norm * batch), in the input dtype
        block_sum_to(partial, sh, total, threads)

    return kernel


def box_loss_rows(pred, rows, target, beta, divisor, dpred):
    """Smooth-L1 (beta > 0) or L1 (beta == 0) box loss of the given rows of one image.

    Args:
        pred (device[R, 4]): predicted deltas of one image.
        rows (device[F] int64): the foreground anchors, distinct.
        target (device[F, 4]): their encoded ground-truth deltas (pred's dtype).
        beta (float): the smooth-L1 switch point, >= 0.
        divisor (float): the gradient is written divided by this (the loss normaliser).
        dpred (device[R, 4]): output; dpred[rows] = d loss / d pred[rows] / divisor, the other
            rows are left as they are.

    Returns:
        float: the loss summed over the F rows (not divided).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    t = pred.dtype.type
    name = np.dtype(pred.dtype).name
    return launch_and_sum(lambda threads: _box_loss_rows_kernel(threads, name), target.size,
                          pred, rows, target, t(beta), t(divisor), dpred)


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
        t = cuda_config.IOU_TILE
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


def decode_boxes(deltas, anchors, weights=DEFAULT_BOX_CODER_WEIGHTS,
                 scale_clamp=_DEFAULT_SCALE_CLAMP):
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
    tile = cuda_config.NMS_TILE
    if not 1 <= tile <= 64:
        raise ValueError(f"NMS_TILE must be in 1..64 (bits of a uint64), got {tile}")
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
