"""Elementwise kernels, max pooling and nearest upsampling on the CPU, forward and backward."""

from __future__ import annotations

import numpy as np
from numba import njit

from retina_np.kernels.cpu.im2col import plane_phases


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
# Each window compares its pixels in row-major order with ">", so that the first maximum wins
# (as the reference's loops). Written window by window those are short scalar loops (1.4 ms on
# the stem's output, one thread). Instead each tap (i, j) is one long, vectorised pass over all
# of a plane's windows: the plane is cut into its stride x stride phases with -inf outside it
# (``im2col.plane_phases``, as a strided convolution's input), in which tap (i, j) of window
# (oh, ow) is entry (oh + i // s, ow + j // s) of phase (i % s, j % s); the windows are laid
# out in rows as long as a phase's, so that a tap reads one unit-step run, and the few extra
# windows per row are dropped at the end (0.45 ms; docs/performance-history.md "Kernel
# notes"). -inf is never larger than the running maximum, so only real pixels are taken. One
# thread, as the elementwise kernels: as a parallel loop it took twice as long to compile.
@njit(cache=True, nogil=True)
def maxpool2d_forward(x, k, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64 as h*W + w (first max).

    Needs padding <= k // 2, so that every window holds at least one real input pixel.
    """
    N, C, H, W = x.shape
    s, p = stride, padding
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    Hs, Ws = Ho + (k - 1) // s, Wo + (k - 1) // s  # the rows and columns of a phase the taps read
    y = np.empty((N * C, Ho * Wo), x.dtype)
    argmax = np.empty((N * C, Ho * Wo), np.int64)
    # one spare row in each phase: the run of the last tap overhangs the last row
    ph = np.empty((s, s, Hs + 1, Ws), x.dtype)
    best = np.empty(Ho * Ws, x.dtype)
    at = np.empty(Ho * Ws, np.int32)  # the maximum's offset i*W + j in its window
    xf = x.reshape(N * C, H * W)
    for nc in range(N * C):
        plane = xf[nc]
        plane_phases(plane, H, W, s, p, -np.inf, ph)
        # every window starts from its top-left pixel ...
        first = ph[0, 0].reshape(-1)
        for e in range(best.shape[0]):
            best[e] = first[e]
            at[e] = 0
        # ... or, on the top and left borders, from its first real pixel
        for oh in range(Ho):
            for ow in range(Wo):
                if oh * s - p >= 0 and ow * s - p >= 0:
                    break  # the rest of this row's windows start inside the plane
                i, j = max(0, p - oh * s), max(0, p - ow * s)
                best[oh * Ws + ow] = plane[(oh * s - p + i) * W + ow * s - p + j]
                at[oh * Ws + ow] = i * W + j
        for i in range(k):
            for j in range(k):
                start = (i // s) * Ws + j // s
                src = ph[i % s, j % s].reshape(-1)[start:start + best.shape[0]]
                offset = i * W + j
                for e in range(best.shape[0]):
                    # selects, not a branch: which pixel is largest is unpredictable
                    take = src[e] > best[e]
                    best[e] = src[e] if take else best[e]
                    at[e] = offset if take else at[e]
        for oh in range(Ho):
            corner = (oh * s - p) * W - p  # where window (oh, 0)'s offsets count from
            b, a = best[oh * Ws:oh * Ws + Wo], at[oh * Ws:oh * Ws + Wo]
            y_row, a_row = y[nc, oh * Wo:(oh + 1) * Wo], argmax[nc, oh * Wo:(oh + 1) * Wo]
            for ow in range(Wo):
                y_row[ow] = b[ow]
                a_row[ow] = corner + ow * s + a[ow]
    return y.reshape(N, C, Ho, Wo), argmax.reshape(N, C, Ho, Wo)


@njit(cache=True, nogil=True)
def maxpool2d_backward(dy, argmax, H, W):
    """dy, argmax (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's maximum."""
    N, C, Ho, Wo = dy.shape
    dx = np.empty((N * C, H * W), dy.dtype)
    dyf, af = dy.reshape(N * C, Ho * Wo), argmax.reshape(N * C, Ho * Wo)
    for nc in range(N * C):
        plane, d, a = dx[nc], dyf[nc], af[nc]
        for i in range(H * W):  # zeroed plane by plane, which then stays in L1 while added to
            plane[i] = 0
        for o in range(Ho * Wo):
            plane[a[o]] += d[o]
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


