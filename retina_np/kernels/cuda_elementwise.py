"""CUDA elementwise kernels: ReLU, add, batch-norm apply and statistics (one thread per
channel), max pooling, nearest upsampling, the heads' channels-to-rows layout, and the
in-place utilities of the optimiser and the layers.

One thread per output element in a grid-stride loop (``for i in range(start, n, stride)``),
so one launch of at most ``MAX_BLOCKS_1D`` blocks covers any size. Every backward here is a
*gather*: the thread of an input element sums the gradients of the outputs that read it, in
the same (oh, ow) order as the CPU loops. No atomics, so results are deterministic and equal
to the CPU's bit for bit where the arithmetic is the same.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from retina_np.kernels import cuda_launch as cl


# ----------------------------------------------------------------------------- elementwise
@cuda.jit
def _relu_forward_kernel(x, y):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        if x[i] > 0:
            y[i] = x[i]
        else:  # also for NaN, as the CPU kernel
            y[i] = 0


def relu_forward(x):
    """x (any shape) -> max(x, 0)."""
    y = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_relu_forward_kernel, x.size, cl.flat(x), cl.flat(y))
    return y


@cuda.jit
def _relu_backward_kernel(dy, y, dx):
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        if y[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = 0


def relu_backward(dy, y):
    """dy, y (same shape) -> dx = dy where y > 0, else 0."""
    dx = cl.empty(dy.shape, dy.dtype)
    cl.launch_1d(_relu_backward_kernel, dy.size, cl.flat(dy), cl.flat(y), cl.flat(dx))
    return dx


@cuda.jit
def _add_kernel(a, b, y):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        y[i] = a[i] + b[i]


def add_forward(a, b):
    """a, b (same shape) -> a + b."""
    y = cl.empty(a.shape, a.dtype)
    cl.launch_1d(_add_kernel, a.size, cl.flat(a), cl.flat(b), cl.flat(y))
    return y


# ----------------------------------------------------------------------------- batch norm
@cuda.jit
def _batchnorm_apply_kernel(x, mean, invstd, gamma, beta, C, HW, y):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        c = (i // HW) % C
        scale = invstd[c] * gamma[c]
        shift = beta[c] - mean[c] * scale  # the CPU kernel's order of operations
        y[i] = x[i] * scale + shift


def batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False):
    """x (N, C, H, W), per-channel (C,) vectors -> y = (x - mean) * invstd * gamma + beta;
    relu: max(y, 0), as a second launch."""
    N, C, H, W = x.shape
    y = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_batchnorm_apply_kernel, x.size, cl.flat(x), mean, invstd, gamma, beta,
                 C, H * W, cl.flat(y))
    return relu_forward(y) if relu else y


@cuda.jit
def _batchnorm_update_stats_kernel(mean, var, count, running_mean, running_var, momentum, eps,
                                   invstd):
    bessel = count / (count - 1)
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        v = float(var[c])
        invstd[c] = 1.0 / math.sqrt(v + eps)
        running_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * float(mean[c])
        running_var[c] = (1 - momentum) * float(running_var[c]) + momentum * (v * bessel)


def batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps):
    """Batch mean, biased var (C,) of count >= 2 values -> invstd (C,); updates the running
    statistics in place (torch's rule, unbiased variance), in float64 as the CPU twin."""
    invstd = cl.empty(mean.shape, mean.dtype)
    cl.launch_1d(_batchnorm_update_stats_kernel, mean.size, mean, var, int(count), running_mean,
                 running_var, float(momentum), float(eps), invstd)
    return invstd


@cuda.jit
def _batchnorm_eval_stats_kernel(running_mean, running_var, eps, mean, invstd):
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        mean[c] = running_mean[c]
        invstd[c] = 1.0 / math.sqrt(float(running_var[c]) + eps)


def batchnorm2d_eval_stats(running_mean, running_var, eps):
    """Running statistics (C,) -> a copy of the mean, invstd = 1 / sqrt(running_var + eps)."""
    mean = cl.empty(running_mean.shape, running_mean.dtype)
    invstd = cl.empty(running_mean.shape, running_mean.dtype)
    cl.launch_1d(_batchnorm_eval_stats_kernel, mean.size, running_mean, running_var, float(eps),
                 mean, invstd)
    return mean, invstd


# ----------------------------------------------------------------------------- max pooling
@cuda.jit
def _maxpool_forward_kernel(x, k, stride, padding, y, argmax):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % Wo
        oh = (i // Wo) % Ho
        c = (i // (Wo * Ho)) % C
        n = i // (Wo * Ho * C)
        h_lo, h_hi = max(0, oh * stride - padding), min(H, oh * stride - padding + k)
        w_lo, w_hi = max(0, ow * stride - padding), min(W, ow * stride - padding + k)
        # padding <= k // 2 (checked by ops) puts at least one real pixel in every window
        best = x[n, c, h_lo, w_lo]
        best_at = h_lo * W + w_lo
        for h in range(h_lo, h_hi):
            for w in range(w_lo, w_hi):
                if x[n, c, h, w] > best:  # strict: ties keep the first maximum
                    best = x[n, c, h, w]
                    best_at = h * W + w
        y[n, c, oh, ow] = best
        argmax[n, c, oh, ow] = best_at


def maxpool2d_forward(x, k, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64 as h*W + w (first max)."""
    N, C, H, W = x.shape
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    y = cl.empty((N, C, Ho, Wo), x.dtype)
    argmax = cl.empty((N, C, Ho, Wo), np.int64)
    cl.launch_1d(_maxpool_forward_kernel, y.size, x, k, stride, padding, y, argmax)
    return y, argmax


@cuda.jit
def _maxpool_backward_scatter_kernel(dy, argmax, plane_in, plane_out, dx):
    # dy, argmax flat (N*C*Ho*Wo,); dx flat (N*C*H*W,), zero on entry
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        nc = i // plane_out
        cuda.atomic.add(dx, nc * plane_in + argmax[i], dy[i])


@cuda.jit
def _maxpool_backward_gather_kernel(dy, argmax, k, stride, padding, dx):
    N, C, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        # the windows that contain row h: oh*s - p <= h <= oh*s - p + k - 1
        oh_lo = max(0, -((k - 1 - h - padding) // stride))  # ceil((h + p - k + 1) / s)
        oh_hi = min(Ho - 1, (h + padding) // stride)
        ow_lo = max(0, -((k - 1 - w - padding) // stride))
        ow_hi = min(Wo - 1, (w + padding) // stride)
        me = h * W + w
        total = 0.0
        for oh in range(oh_lo, oh_hi + 1):  # the CPU kernel's (oh, ow) order
            for ow in range(ow_lo, ow_hi + 1):
                if argmax[n, c, oh, ow] == me:
                    total += dy[n, c, oh, ow]
        dx[n, c, h, w] = total


def maxpool2d_backward(dy, argmax, H, W, *, window=None):
    """dy, argmax (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's maximum.

    The contract's arguments do not say where the windows were, so by default every output
    scatters its gradient with an atomic add: a pixel that is the maximum of 3 or more
    windows (possible where windows overlap) sums them in an arbitrary order, which can
    change the last bit from run to run. With ``window=(k, stride, padding)`` each input
    pixel instead gathers from the few windows that contain it, in the CPU's order, with no
    atomics: deterministic (summed in float64, then rounded).
    """
    N, C, Ho, Wo = dy.shape
    dx = cl.empty((N, C, H, W), dy.dtype)
    if window is not None:
        k, stride, padding = (int(v) for v in window)
        cl.launch_1d(_maxpool_backward_gather_kernel, dx.size, dy, argmax, k, stride, padding,
                     dx)
        return dx
    fill_(dx, 0.0)
    cl.launch_1d(_maxpool_backward_scatter_kernel, dy.size, cl.flat(dy), cl.flat(argmax),
                 H * W, Ho * Wo, cl.flat(dx))
    return dx


# ----------------------------------------------------------------------------- upsampling
@cuda.jit
def _upsample_forward_kernel(x, y):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % Wo
        oh = (i // Wo) % Ho
        c = (i // (Wo * Ho)) % C
        n = i // (Wo * Ho * C)
        y[n, c, oh, ow] = x[n, c, oh * H // Ho, ow * W // Wo]


def upsample_nearest_forward(x, Ho, Wo):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), y[.., oh, ow] = x[.., oh*H//Ho, ow*W//Wo]."""
    N, C, H, W = x.shape
    y = cl.empty((N, C, Ho, Wo), x.dtype)
    cl.launch_1d(_upsample_forward_kernel, y.size, x, y)
    return y


@cuda.jit
def _upsample_backward_kernel(dy, dx):
    N, C, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        # oh*H//Ho == h  <=>  h*Ho <= oh*H < (h+1)*Ho  <=>  ceil(h*Ho/H) <= oh < ceil((h+1)*Ho/H)
        oh_lo, oh_hi = (h * Ho + H - 1) // H, ((h + 1) * Ho + H - 1) // H
        ow_lo, ow_hi = (w * Wo + W - 1) // W, ((w + 1) * Wo + W - 1) // W
        total = 0.0
        for oh in range(oh_lo, oh_hi):
            for ow in range(ow_lo, ow_hi):
                total += dy[n, c, oh, ow]
        dx[n, c, h, w] = total


def upsample_nearest_backward(dy, H, W):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each source pixel sums the outputs it was copied to.

    A gather (one thread per source pixel, over the block of outputs that copied it, summed in
    float64): no atomics, deterministic.
    """
    N, C, Ho, Wo = dy.shape
    dx = cl.empty((N, C, H, W), dy.dtype)
    cl.launch_1d(_upsample_backward_kernel, dx.size, dy, dx)
    return dx


# ----------------------------------------------------------------------------- head layout
@cuda.jit
def _level_to_rows_kernel(x, row0, rows):
    # x (N, A*P, H, W) of one level -> its block of rows[:, row0:row0 + H*W*A, :] (N, R, P)
    N, C, H, W = x.shape
    P = rows.shape[2]
    A = C // P
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        # i walks the block in its (n, y, x, a, p) order: neighbouring threads write
        # neighbouring elements
        p = i % P
        a = (i // P) % A
        w = (i // (P * A)) % W
        h = (i // (P * A * W)) % H
        n = i // (P * A * W * H)
        rows[n, row0 + (h * W + w) * A + a, p] = x[n, a * P + p, h, w]


def levels_to_rows(levels, per_anchor):
    """Head outputs of the pyramid levels -> one row per anchor.

    levels: list of (N, A*P, H, W) -> rows (N, R, P), R = sum of H*W*A; rows run level, y, x,
    anchor, and channel a*P + p of pixel (y, x) becomes column p of row (y*W + x)*A + a of its
    level's block. One launch per level, each writing its block of rows.
    """
    n = levels[0].shape[0]
    counts = [x.shape[2] * x.shape[3] * (x.shape[1] // per_anchor) for x in levels]
    rows = cl.empty((n, sum(counts), per_anchor), levels[0].dtype)
    row0 = 0
    for x, count in zip(levels, counts):
        cl.launch_1d(_level_to_rows_kernel, x.size, x, row0, rows)
        row0 += count
    return rows


@cuda.jit
def _rows_to_level_kernel(rows, row0, x):
    # the inverse: x (N, A*P, H, W) <- rows[:, row0:row0 + H*W*A, :]
    N, C, H, W = x.shape
    P = rows.shape[2]
    A = C // P
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        a = c // P
        x[n, c, h, w] = rows[n, row0 + (h * W + w) * A + a, c - a * P]


def rows_to_levels(rows, level_hw, per_anchor):
    """The inverse of ``levels_to_rows``: rows (N, R, P) -> list of (N, A*P, H, W), one per
    (H, W) in level_hw (A = R / sum of H*W)."""
    n = rows.shape[0]
    a = rows.shape[1] // sum(h * w for h, w in level_hw)
    levels, row0 = [], 0
    for h, w in level_hw:
        x = cl.empty((n, a * per_anchor, h, w), rows.dtype)
        cl.launch_1d(_rows_to_level_kernel, x.size, rows, row0, x)
        levels.append(x)
        row0 += h * w * a
    return levels


# ----------------------------------------------------------------------------- utilities
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
    """torch.optim.AdamW's step ``step`` (1, 2, ...) in place; see kernels/cpu.py. Every
    scalar is rounded to the parameter's dtype, so float32 runs in float32 arithmetic."""
    t = param.dtype.type
    cl.launch_1d(_adamw_kernel, param.size, cl.flat(param), cl.flat(grad), cl.flat(m),
                 cl.flat(v), t(lr), t(beta1), t(beta2), t(1 - beta1), t(1 - beta2), t(eps),
                 t(weight_decay), t(1 - beta1**step), t(1 - beta2**step))
    return param


@cuda.jit
def _cast_kernel(src, dst):
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[i] = src[i]


def cast(a, dtype):
    """A copy of device array a converted to dtype."""
    out = cl.empty(a.shape, dtype)
    cl.launch_1d(_cast_kernel, a.size, cl.flat(a), cl.flat(out))
    return out
