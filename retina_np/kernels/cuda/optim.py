"""CUDA in-place utilities of the optimiser and the layers: allocation like an array, fill,
scale, accumulate, the SGD and AdamW steps, and the squared norm of the gradients.

One thread per element in a grid-stride loop, as in ``elementwise.py``; each in-place function
returns its first argument. ``sum_squares`` adds in float64 in each block (``reduce.py``'s
``block_sum_to``) and copies the per-block partial sums, a few hundred numbers, to the host.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from retina_np.kernels.cuda import config
from retina_np.kernels.cuda import launch as cl
from retina_np.kernels.cuda.reduce import block_sum_to


@cuda.jit
def _fill_kernel(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


def fill_(a, value):
    """a[...] = value, in place; returns a."""
    cl.launch_1d(_fill_kernel, a.size, cl.flat(a), float(value))
    return a


def empty_like(a):
    """A new, uninitialised device array of a's shape and dtype."""
    return cl.empty(a.shape, a.dtype)


def zeros_like(a):
    """A new device array of a's shape and dtype, filled with zeros."""
    return fill_(cl.empty(a.shape, a.dtype), 0.0)


@cuda.jit
def _scale_kernel(a, s):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = a[i] * s


def scale_(a, s):
    """a *= s, in place (s rounded to a's dtype first, as numpy does); returns a."""
    cl.launch_1d(_scale_kernel, a.size, cl.flat(a), a.dtype.type(s))
    return a


@cuda.jit
def _add_inplace_kernel(a, b):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] += b[i]


def add_inplace_(a, b):
    """a += b, in place (same shape and dtype); returns a."""
    cl.launch_1d(_add_inplace_kernel, a.size, cl.flat(a), cl.flat(b))
    return a


@cuda.jit
def _sgd_kernel(param, grad, buf, lr, momentum, weight_decay):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p = param[i]
        v = buf[i] * momentum + (grad[i] + p * weight_decay)
        buf[i] = v
        param[i] = p - v * lr


def sgd_update_(param, grad, buf, lr, momentum, weight_decay):
    """torch.optim.SGD's step, in place: buf = momentum*buf + (grad + wd*param); param -= lr*buf.

    The scalars are rounded to the parameter's dtype and the arithmetic runs in it (as
    torch's float32 kernels do).
    """
    t = param.dtype.type
    cl.launch_1d(_sgd_kernel, param.size, cl.flat(param), cl.flat(grad), cl.flat(buf),
                 t(lr), t(momentum), t(weight_decay))
    return param


@cuda.jit
def _adamw_kernel(param, grad, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps,
                  weight_decay, bias1, bias2):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = grad[i]
        mi = beta1 * m[i] + one_minus_beta1 * g
        vi = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = mi
        v[i] = vi
        p = param[i]
        param[i] = p - lr * (weight_decay * p + (mi / bias1) / (math.sqrt(vi / bias2) + eps))


def adamw_update_(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """torch.optim.AdamW's step ``step`` (1, 2, ...) in place; see kernels/cpu/optim.py. Every
    scalar is rounded to the parameter's dtype, so float32 runs in float32 arithmetic."""
    t = param.dtype.type
    cl.launch_1d(_adamw_kernel, param.size, cl.flat(param), cl.flat(grad), cl.flat(m),
                 cl.flat(v), t(lr), t(beta1), t(beta2), t(1 - beta1), t(1 - beta2), t(eps),
                 t(weight_decay), t(1 - beta1**step), t(1 - beta2**step))
    return param


# ----------------------------------------------------------------------------- gradient norm
@functools.cache
def _sum_squares_kernel(threads: int):
    @cuda.jit
    def kernel(a, partial):
        sh = cuda.shared.array(threads, float64)
        total = 0.0
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            v = float64(a[i])
            total += v * v
        block_sum_to(partial, sh, total, threads)

    return kernel


def sum_squares(arrays):
    """The sum of a * a over every element of every array in ``arrays``, accumulated in float64
    -> a Python float (the squared global norm of the gradients).

    One launch per array, each writing its per-block partial sums into its own part of one
    buffer, and one copy to the host for all of them.
    """
    threads, _, _ = config.reduce_config()
    blocks = [cl.blocks_1d(a.size, threads) if a.size else 0 for a in arrays]
    partial = cl.empty(max(1, sum(blocks)), np.float64)
    start = 0
    for a, count in zip(arrays, blocks):
        if count:
            cl.launch(_sum_squares_kernel(threads), count, threads, cl.flat(a),
                      partial[start:start + count])
        start += count
    return float(np.sum(partial.copy_to_host()[:start]))
