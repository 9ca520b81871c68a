"""Array utilities for the optimizer and gradient accumulation on the CPU: new arrays, in-place
updates (each returns its first argument), SGD's and AdamW's steps, and the squared gradient
norm. Same names and signatures as ``kernels/cuda/optim.py``."""

from __future__ import annotations

import numpy as np
from numba import njit


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
    """torch's SGD step in place: buf = momentum * buf + (grad + wd * param); param -= lr * buf."""
    t = param.dtype.type
    _sgd_update(param.reshape(-1), grad.reshape(-1), buf.reshape(-1), t(lr), t(momentum),
                t(weight_decay))
    return param


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
    _adamw_update(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), t(lr),
                  t(beta1), t(beta2), t(1 - beta1), t(1 - beta2), t(eps), t(weight_decay),
                  t(1 - beta1**step), t(1 - beta2**step))
    return param




def empty_like(a):
    """A new, uninitialised array of a's shape and dtype."""
    return np.empty_like(a)


@njit(cache=True, nogil=True)
def _sum_squares(a):
    """(a * a).sum() of a flat array in float64, as four interleaved partial sums."""
    s0 = s1 = s2 = s3 = 0.0
    end4 = a.size // 4 * 4
    for i in range(0, end4, 4):
        v0, v1 = np.float64(a[i]), np.float64(a[i + 1])  # float() would keep float32
        v2, v3 = np.float64(a[i + 2]), np.float64(a[i + 3])
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
    for i in range(end4, a.size):
        v = np.float64(a[i])
        s0 += v * v
    return (s0 + s1) + (s2 + s3)


def sum_squares(arrays):
    """The sum of a * a over every element of every array in ``arrays``, accumulated in float64
    -> a Python float (the squared global norm of the gradients)."""
    return float(sum(_sum_squares(a.reshape(-1)) for a in arrays))


