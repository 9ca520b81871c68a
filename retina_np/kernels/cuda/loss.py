"""CUDA loss kernels: the sigmoid focal loss (dense, or of one image from per-anchor classes)
and the smooth-L1 / L1 box loss (dense, or over the foreground rows of one image,
``box_loss_rows``).

The CPU twins are in ``kernels/cpu/loss.py``, where the formulas are explained; these take
numba.cuda device arrays and follow them operation for operation. The focal loss does not even
copy its formula: its device function is the CPU's ``_focal_element`` Python source, compiled a
second time for the GPU.

They return ``(loss, gradient)`` like the CPU functions: the gradient is a device array, the
loss a Python float: each block adds its elements' losses in float64 in shared memory, and the
host adds the per-block partial sums (a few hundred numbers) in order
(``reduce.launch_and_sum``).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float64

from retina_np.kernels.cpu.loss import _alpha_for_kernel, _focal_element
from retina_np.kernels.cuda import launch as cl
from retina_np.kernels.cuda.reduce import block_sum_to, launch_and_sum
from retina_np.kernels.sentinels import BETWEEN_THRESHOLDS

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


def focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale=1.0, out=None):
    """Focal loss of one image from per-anchor classes (the CPU's focal_loss_anchor_classes).

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


def sigmoid_focal_loss(logits, targets, alpha, gamma):
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


def smooth_l1_loss(pred, target, beta):
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
