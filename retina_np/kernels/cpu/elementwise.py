"""Elementwise kernels, max pooling and nearest upsampling on the CPU, forward and backward."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from retina_np.kernels import threads


# ----------------------------------------------------------------------------- elementwise
# One thread: these stream memory, a second core gave them nothing measurable, and a
# parallel=True function costs two to four times as long to compile.
@njit(cache=True, nogil=True)
def relu_forward(x):
    """x (any shape) -> max(x, 0)."""
    xf = x.reshape(-1)
    y = np.empty_like(xf)
    for i in range(xf.size):
        y[i] = xf[i] if xf[i] > 0 else 0
    return y.reshape(x.shape)


@njit(cache=True, nogil=True)
def relu_backward(dy, y):
    """dy, y (same shape) -> dx = dy where y > 0, else 0."""
    dyf, yf = dy.reshape(-1), y.reshape(-1)
    dx = np.empty_like(dyf)
    for i in range(dyf.size):
        dx[i] = dyf[i] if yf[i] > 0 else 0
    return dx.reshape(dy.shape)


@njit(cache=True, nogil=True)
def add_forward(a, b):
    """a, b (same shape) -> a + b."""
    af, bf = a.reshape(-1), b.reshape(-1)
    y = np.empty_like(af)
    for i in range(af.size):
        y[i] = af[i] + bf[i]
    return y.reshape(a.shape)


# ----------------------------------------------------------------------------- max pooling
def maxpool2d_forward(x, k, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64 as h*W + w (first max).

    Needs padding <= k // 2, so that every window holds at least one real input pixel.
    """
    with threads.budget(x.size):
        return _maxpool2d_forward(x, k, stride, padding)


@njit(parallel=True, cache=True, nogil=True)
def _maxpool2d_forward(x, k, stride, padding):
    """``maxpool2d_forward`` on the threads in force."""
    N, C, H, W = x.shape
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    y = np.empty((N * C, Ho * Wo), x.dtype)
    argmax = np.empty((N * C, Ho * Wo), np.int64)
    xf = x.reshape(N * C, H * W)
    for nc in prange(N * C):
        plane, y_row, a_row = xf[nc], y[nc], argmax[nc]
        for oh in range(Ho):
            h_lo, h_hi = max(0, oh * stride - padding), min(H, oh * stride - padding + k)
            for ow in range(Wo):
                w_lo, w_hi = max(0, ow * stride - padding), min(W, ow * stride - padding + k)
                # the padding is -inf, never a maximum: only real pixels are compared
                best_at = h_lo * W + w_lo
                best = plane[best_at]
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        v = plane[h * W + w]
                        # selects, not a branch: which pixel is largest is unpredictable
                        take = v > best
                        best = v if take else best
                        best_at = h * W + w if take else best_at
                y_row[oh * Wo + ow] = best
                a_row[oh * Wo + ow] = best_at
    return y.reshape(N, C, Ho, Wo), argmax.reshape(N, C, Ho, Wo)


@njit(cache=True, nogil=True)
def maxpool2d_backward(dy, argmax, H, W):
    """dy, argmax (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's maximum."""
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N * C, H * W), dy.dtype)
    dyf, af = dy.reshape(N * C, Ho * Wo), argmax.reshape(N * C, Ho * Wo)
    for nc in range(N * C):
        for o in range(Ho * Wo):
            dx[nc, af[nc, o]] += dyf[nc, o]
    return dx.reshape(N, C, H, W)


# ----------------------------------------------------------------------------- upsampling
@njit(cache=True, nogil=True)
def upsample_nearest_forward(x, Ho, Wo):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), y[.., oh, ow] = x[.., oh*H//Ho, ow*W//Wo]."""
    N, C, H, W = x.shape
    src_h = np.arange(Ho) * H // Ho  # floor(oh * H / Ho) in exact integer arithmetic
    src_w = np.arange(Wo) * W // Wo
    y = np.empty((N, C, Ho, Wo), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                src, out = x[n, c, src_h[oh]], y[n, c, oh]
                for ow in range(Wo):
                    out[ow] = src[src_w[ow]]
    return y


@njit(cache=True, nogil=True)
def upsample_nearest_backward(dy, H, W):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each source pixel sums the outputs it was copied to."""
    N, C, Ho, Wo = dy.shape
    src_h = np.arange(Ho) * H // Ho
    src_w = np.arange(Wo) * W // Wo
    dx = np.zeros((N, C, H, W), dy.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                src, out = dy[n, c, oh], dx[n, c, src_h[oh]]
                for ow in range(Wo):
                    out[src_w[ow]] += src[ow]
    return dx


