"""Array utilities for the optimizer and gradient accumulation on the CPU: new arrays, in-place
updates (each returns its first argument), SGD's and AdamW's steps, and the squared gradient
norm. Same names and signatures as ``kernels/cuda/optim.py``."""

from __future__ import annotations

import numpy as np
from numba import njit

from retina_np.kernels import threads
from retina_np.kernels.tunables import current


def zeros_like(a):
    """A new zero array of a's shape and dtype."""
    return np.zeros_like(a)


def fill_(a, value):
    a[...] = value
    return a


def scale_(a, s):
    a *= a.dtype.type(s)
    return a


def add_inplace_(a, b):
    a += b
    return a


@njit(cache=True, nogil=True)
def _sgd_update(p, g, v, lr, momentum, weight_decay):
    for i in range(p.size):
        vi = v[i] * momentum + (g[i] + p[i] * weight_decay)
        v[i] = vi
        p[i] = p[i] - vi * lr


def sgd_update_(param, grad, buf, lr, momentum, weight_decay):
    """torch's SGD step in place: buf = momentum * buf + (grad + wd * param); param -= lr * buf.

    Large arrays (an optimizer's flat parameters, nn/flat.py) are shared among the threads
    of the budget, each element updated as alone (``_elementwise``)."""
    t = param.dtype.type
    _elementwise(_sgd_update, (param.reshape(-1), grad.reshape(-1), buf.reshape(-1)),
                 (t(lr), t(momentum), t(weight_decay)))
    return param


def _elementwise(kernel, arrays, scalars):
    """``kernel(*arrays, *scalars)`` for an elementwise kernel of flat arrays of one size, on
    consecutive ranges of them side by side where the threads' budget has several threads."""
    n = arrays[0].shape[0]
    if n < current().serial_max_elements:  # one parameter's: one thread anyway
        kernel(*arrays, *scalars)
        return
    with threads.budget(n) as budget:
        threads.over_channels(lambda lo, hi: kernel(*(a[lo:hi] for a in arrays), *scalars), n,
                              budget)


@njit(cache=True, nogil=True, error_model="numpy")  # see adamw_update_
def _adamw_update(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps,
                  weight_decay, bias1, bias2):
    for i in range(p.size):
        mi = beta1 * m[i] + one_minus_beta1 * g[i]  # running mean of the gradient
        vi = beta2 * v[i] + one_minus_beta2 * g[i] * g[i]  # running mean of its square
        m[i], v[i] = mi, vi
        p[i] = p[i] - lr * (weight_decay * p[i] + (mi / bias1) / (np.sqrt(vi / bias2) + eps))


def adamw_update_(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """torch.optim.AdamW's step ``step`` (1, 2, ...) in place: m, v = moving averages of grad
    and grad**2; param -= lr * (wd * param + m_hat / (sqrt(v_hat) + eps)) with the
    bias-corrected m_hat = m / (1 - beta1**step), v_hat = v / (1 - beta2**step).

    Every scalar, 1 - beta included, is rounded to the parameter's dtype first, so that a
    float32 model updates in float32 arithmetic (``1 - beta1`` inside the kernel is float64
    and pulled the loop into float64), and the kernel uses numpy's error model (a division by
    zero gives inf instead of raising; here no divisor can be zero), without which numba
    checks each division and the loop does not vectorise (docs/performance-history.md,
    "Kernel notes"); the same bits in float64.
    """
    t = param.dtype.type
    _elementwise(_adamw_update, (param.reshape(-1), grad.reshape(-1), m.reshape(-1),
                                 v.reshape(-1)),
                 (t(lr), t(beta1), t(beta2), t(1 - beta1), t(1 - beta2), t(eps), t(weight_decay),
                  t(1 - beta1**step), t(1 - beta2**step)))
    return param


def empty_like(a):
    """A new, uninitialised array of a's shape and dtype."""
    return np.empty_like(a)


# The squares are added into lanes (lane k takes every LANES-th value): elementwise float64
# additions over the lanes, a loop LLVM vectorises, where one chain of additions (or four)
# waits for each addition before the next; the lanes are added at the end, in a fixed order
# (as batch norm's sums, cpu/norm.py). The shapes preset's 841k gradients: 0.49 -> 0.19 ms.
LANES = 64


@njit(cache=True, nogil=True)
def _sum_squares(a):
    """(a * a).sum() of a flat array in float64."""
    lanes = np.zeros(LANES)
    for i0 in range(0, a.size, LANES):
        seg = a[i0:i0 + LANES]  # a unit-step slice indexed from 0: the loop vectorises
        for k in range(seg.shape[0]):
            v = np.float64(seg[k])  # float() would keep float32
            lanes[k] += v * v
    total = 0.0
    for k in range(LANES):
        total += lanes[k]
    return total


def sum_squares(arrays):
    """The sum of a * a over every element of every array in ``arrays``, accumulated in float64
    -> a Python float (the squared global norm of the gradients)."""
    return float(sum(_sum_squares(a.reshape(-1)) for a in arrays))


@njit(cache=True, nogil=True)
def _sum_squares_runs(a, bounds):
    total = 0.0
    for r in range(bounds.shape[0]):
        total += _sum_squares(a[bounds[r, 0]:bounds[r, 1]])
    return total


def sum_squares_runs(a, bounds):
    """``sum_squares`` of the runs a[start:stop] of a flat array, (start, stop) the rows of
    bounds (P, 2), in one call: the same sums, added in the same order, so the same bits as
    ``sum_squares`` of the arrays those runs are (an optimizer's flat gradients, nn/flat.py)."""
    return float(_sum_squares_runs(a, bounds))


