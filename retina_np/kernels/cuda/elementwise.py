"""CUDA elementwise kernels: ReLU, add, max pooling, nearest upsampling, and ``cast`` (a
converting copy, CUDA-only: the other kernels' float64 sums back to the input dtype).

One thread per output element in a grid-stride loop (``for i in range(start, n, stride)``),
so one launch of at most ``cuda_max_blocks_1d`` blocks covers any size. The backwards are
*gathers* (max pooling's, when told its window): the thread of an input element sums the
gradients of the outputs that read it, in the same (oh, ow) order as the CPU loops. No
atomics, so results are deterministic and equal to the CPU's bit for bit where the arithmetic
is the same.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from retina_np.kernels.cuda import launch as cl
from retina_np.kernels.cuda.optim import fill_


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


# ----------------------------------------------------------------------------- conversion
@cuda.jit
def _cast_kernel(src, dst):
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[i] = src[i]


def cast(a, dtype):
    """A copy of device array a converted to dtype."""
    out = cl.empty(a.shape, dtype)
    cl.launch_1d(_cast_kernel, a.size, cl.flat(a), cl.flat(out))
    return out
