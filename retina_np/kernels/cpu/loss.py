"""The loss kernels on the CPU: the sigmoid focal loss and the smooth-L1 / L1 box loss, each with
its gradient, with the names and signatures of their CUDA twins (``kernels/cuda/loss.py``).

``retina_np.detection.losses`` explains the maths and checks the arguments, then calls these;
every number is an argument here (the paper's defaults are ``detection``'s). The focal loss of
a batch touches R * K ~ 10^7 logits, so its inner loop is a Numba kernel that reads the class
of each anchor instead of a dense one-hot target array; the CUDA twin compiles the very same
``_focal_element`` for the GPU.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from retina_np.kernels.sentinels import BETWEEN_THRESHOLDS

# Kernel-side encoding of "no alpha weighting" (alpha=None or alpha < 0 in the API).
_NO_ALPHA = -1.0


# ----------------------------------------------------------------------------- focal loss
@njit(cache=True, nogil=True, error_model="numpy")
def _focal_element(x, t, alpha, gamma):
    """Focal loss and its derivative for one logit ``x`` and target ``t`` (float64 math).

    See ``detection.sigmoid_focal_loss`` for the formulas. ``p = sigmoid(x)`` and
    ``q = 1 - p = sigmoid(-x)`` are both formed from ``exp(-|x|)``, which never overflows,
    so that neither suffers cancellation when the other is close to 1.
    """
    e = math.exp(-abs(x))
    if x >= 0.0:
        p = 1.0 / (1.0 + e)
        q = e / (1.0 + e)
    else:
        p = e / (1.0 + e)
        q = 1.0 / (1.0 + e)
    # Binary cross-entropy with logits, -t log p - (1 - t) log q, stably.
    ce = max(x, 0.0) - x * t + math.log1p(e)
    m = p * (1.0 - t) + q * t  # 1 - p_t: the probability given to the wrong answer
    if gamma == 0.0:
        mod = 1.0
        dmod = 0.0
    else:
        if gamma == 2.0:  # the default; m * m is much cheaper than pow
            mod = m * m
            m_pow = m
        else:
            mod = m**gamma
            m_pow = m ** (gamma - 1.0) if m > 0.0 else 0.0
        dmod = gamma * m_pow * p * q * (1.0 - 2.0 * t)  # d(m^gamma)/dx, dm/dx = p q (1 - 2t)
    a = 1.0 if alpha < 0.0 else alpha * t + (1.0 - alpha) * (1.0 - t)
    loss = a * ce * mod
    grad = a * ((p - t) * mod + ce * dmod)
    return loss, grad


# The focal loss of a batch runs over R * K ~ 10^7 logits with two transcendental functions
# each, so each loop below is written once, serially over a range, and launched either
# directly or split across the cores with prange. Below _PARALLEL_MIN_LOGITS logits a
# parallel launch costs more than it saves: waking the threads and the barrier take ~50 us,
# and milliseconds when another process holds one of the cores.
_PARALLEL_MIN_LOGITS = 1 << 16


@njit(cache=True, nogil=True, error_model="numpy")
def _focal_dense_range(logits, targets, alpha, gamma, dlogits, start, stop):
    """Focal loss summed over flat ``logits[start:stop]``; gradient into ``dlogits``."""
    total = 0.0
    for i in range(start, stop):
        loss, grad = _focal_element(np.float64(logits[i]), np.float64(targets[i]), alpha, gamma)
        total += loss
        dlogits[i] = grad
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _focal_anchor_range(logits, anchor_class, alpha, gamma, grad_scale, dlogits, start, stop):
    """Focal loss of anchors ``start:stop`` of one image, from per-anchor classes instead of
    a one-hot target array.

    Args:
        logits (ndarray[R, K]): classification logits.
        anchor_class (ndarray[R] int64): class k >= 0 of a foreground anchor (target 1 at k,
            0 elsewhere), ``BELOW_LOW_THRESHOLD`` (all targets 0) or ``BETWEEN_THRESHOLDS``
            (ignored: no loss, zero gradient).
        grad_scale (float): the gradient is written pre-multiplied by this.
        dlogits (ndarray[R, K]): output.

    Returns:
        float: the unscaled loss sum over those anchors.
    """
    num_classes = logits.shape[1]
    total = 0.0
    for r in range(start, stop):
        cls = anchor_class[r]
        if cls == BETWEEN_THRESHOLDS:
            for k in range(num_classes):
                dlogits[r, k] = 0.0
            continue
        for k in range(num_classes):
            t = 1.0 if k == cls else 0.0
            loss, grad = _focal_element(np.float64(logits[r, k]), t, alpha, gamma)
            total += loss
            dlogits[r, k] = grad * grad_scale
    return total


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _focal_dense_parallel(logits, targets, alpha, gamma, dlogits, num_chunks):
    """:func:`_focal_dense_range` over ``num_chunks`` equal chunks, one per prange step."""
    n = logits.shape[0]
    total = 0.0
    for c in prange(num_chunks):
        total += _focal_dense_range(logits, targets, alpha, gamma, dlogits,
                                    c * n // num_chunks, (c + 1) * n // num_chunks)
    return total


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _focal_anchor_parallel(logits, anchor_class, alpha, gamma, grad_scale, dlogits, num_chunks):
    """:func:`_focal_anchor_range` over ``num_chunks`` equal chunks of anchors."""
    n = logits.shape[0]
    total = 0.0
    for c in prange(num_chunks):
        total += _focal_anchor_range(logits, anchor_class, alpha, gamma, grad_scale, dlogits,
                                     c * n // num_chunks, (c + 1) * n // num_chunks)
    return total


def _num_chunks(num_logits: int) -> int:
    """1 (run serially) for small problems, else one chunk per Numba thread."""
    return 1 if num_logits < _PARALLEL_MIN_LOGITS else numba.get_num_threads()


def _focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale, dlogits):
    """Focal loss sum of one image (R, K) with its gradient, serial or parallel by size."""
    num_chunks = _num_chunks(logits.size)
    if num_chunks == 1:
        return _focal_anchor_range(logits, anchor_class, alpha, gamma, grad_scale, dlogits, 0,
                                   logits.shape[0])
    return _focal_anchor_parallel(logits, anchor_class, alpha, gamma, grad_scale, dlogits,
                                  num_chunks)


def _alpha_for_kernel(alpha) -> float:
    """``alpha`` as the kernels expect it: a float in [0, 1], or ``_NO_ALPHA``."""
    if alpha is None or alpha < 0:
        return _NO_ALPHA
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], or None / negative for no weighting: {alpha}")
    return float(alpha)


def focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale=1.0, out=None):
    """Focal loss of one image (R, K) from per-anchor classes (R,) -> (loss sum, gradient).

    The gradient, grad_scale * d loss / d logits, is written into ``out`` (R, K) when given;
    anchors marked ``BETWEEN_THRESHOLDS`` add nothing and get a zero gradient.
    """
    dlogits = np.empty_like(logits) if out is None else out
    total = _focal_loss_anchor_classes(logits, anchor_class, _alpha_for_kernel(alpha),
                                       float(gamma), grad_scale, dlogits)
    return total, dlogits


def sigmoid_focal_loss(logits, targets, alpha, gamma):
    """Summed focal loss over dense targets in [0, 1] -> (loss sum, d loss / d logits).

    logits: a float array of any shape; targets: the same shape, in logits' dtype.
    """
    flat = np.ascontiguousarray(logits).reshape(-1)
    flat_targets = np.ascontiguousarray(targets, dtype=flat.dtype).reshape(-1)
    dlogits = np.empty_like(flat)
    alpha_k, num_chunks = _alpha_for_kernel(alpha), _num_chunks(flat.size)
    if num_chunks == 1:
        total = _focal_dense_range(flat, flat_targets, alpha_k, float(gamma), dlogits, 0, flat.size)
    else:
        total = _focal_dense_parallel(flat, flat_targets, alpha_k, float(gamma), dlogits,
                                      num_chunks)
    return float(total), dlogits.reshape(np.shape(logits))


# ----------------------------------------------------------------------------- box losses
def smooth_l1_loss(pred, target, beta):
    """Summed smooth-L1 loss of pred against target (beta == 0: L1) -> (loss sum, d loss / d pred):
    0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, with d = pred - target."""
    if beta == 0:
        return l1_loss(pred, target)
    pred = np.asarray(pred)
    diff = pred - np.asarray(target, dtype=pred.dtype)
    abs_diff = np.abs(diff)
    quadratic = abs_diff < beta
    loss = np.where(quadratic, 0.5 * diff * diff / beta, abs_diff - 0.5 * beta)
    dpred = np.where(quadratic, diff / beta, np.sign(diff)).astype(pred.dtype, copy=False)
    return float(loss.sum(dtype=np.float64)), dpred


def l1_loss(pred, target):
    """Summed L1 loss sum |pred - target| and its gradient sign(pred - target) (0 at 0)."""
    pred = np.asarray(pred)
    diff = pred - np.asarray(target, dtype=pred.dtype)
    return float(np.abs(diff).sum(dtype=np.float64)), np.sign(diff).astype(pred.dtype, copy=False)


def box_loss_rows(pred, rows, target, beta, divisor, dpred):
    """Smooth-L1 (beta > 0) or L1 (beta == 0) loss of pred[rows] (F, 4) against target (F, 4);
    writes dpred[rows] = d loss / d pred[rows] / divisor and returns the loss sum."""
    total, d_rows = smooth_l1_loss(pred[rows], target, beta)
    dpred[rows] = d_rows / divisor
    return total
