"""Batch norm and group norm on the CPU, forward and backward.

Per-channel (batch norm) or per-(image, group) (group norm) sums in float64, the per-element
arithmetic in the input's dtype. The forwards take the ReLU that follows the norm
(``relu=True``: max(y, 0) in the same pass over the array), and batch norm's backward the
ReLU's backward (``y``: dy counts only where the output was positive, in the same passes).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from retina_np.kernels import threads
from retina_np.kernels.levels import Joint
from retina_np.kernels.tunables import current


# Per-channel values are read with np.float64(...): numba's float() keeps a float32 a float32.
# Sums in float64 are one long chain of dependent additions (each waits ~4 cycles for the
# last); four partial sums, added at the end, run four chains side by side (about twice as
# fast, docs/performance-history.md "Kernel notes"). The order is fixed, so the bits do not
# depend on the number of threads.
@njit(cache=True, nogil=True)
def _sum(a, lo, hi):
    """a[lo:hi].sum() in float64, as four interleaved partial sums."""
    s0 = s1 = s2 = s3 = 0.0
    end4 = lo + (hi - lo) // 4 * 4
    for i in range(lo, end4, 4):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
    for i in range(end4, hi):
        s0 += a[i]
    return (s0 + s1) + (s2 + s3)


# Batch norm sums whole channels (N*H*W values), group norm a group's channels, so both add
# into lanes instead of one chain: lane k takes every LANES-th value of a row, which makes the
# float64 additions elementwise over the lanes, a loop LLVM vectorises (a chain of partial
# sums it does not reorder without fastmath); the lanes are added at the end, in a fixed
# order. On the stem's output the statistics ran 3x faster (docs/performance-history.md
# "Kernel notes").
LANES = 256


@njit(cache=True, nogil=True)
def _add_row(row, lanes):
    """lanes[k] += row[i] in float64 for every i = k (mod len(lanes))."""
    L = lanes.shape[0]
    for i0 in range(0, row.shape[0], L):
        seg = row[i0:i0 + L]  # a unit-step slice indexed from 0: the loop vectorises
        for k in range(seg.shape[0]):
            lanes[k] += seg[k]


@njit(cache=True, nogil=True)
def _add_row_sq_dev(row, mu, lanes):
    """As ``_add_row``, adding (row[i] - mu) ** 2."""
    L = lanes.shape[0]
    for i0 in range(0, row.shape[0], L):
        seg = row[i0:i0 + L]
        for k in range(seg.shape[0]):
            d = np.float64(seg[k]) - mu
            lanes[k] += d * d


@njit(cache=True, nogil=True)
def _add_row_dy_xc(dy, x, y, relu, mu, lanes_dy, lanes_dy_xc):
    """As ``_add_row``, adding dy into lanes_dy and dy * (x - mu) into lanes_dy_xc; with relu,
    dy counts only where y > 0."""
    L = lanes_dy.shape[0]
    for i0 in range(0, dy.shape[0], L):
        d, xs, ys = dy[i0:i0 + L], x[i0:i0 + L], y[i0:i0 + L]
        for k in range(d.shape[0]):
            g = np.float64(d[k]) if not relu or ys[k] > 0 else 0.0
            lanes_dy[k] += g
            lanes_dy_xc[k] += g * (np.float64(xs[k]) - mu)


@njit(cache=True, nogil=True)
def _affine(src, m, a, b, relu, dst):
    """dst = (src - m) * a + b, and max(that, 0) with relu: a norm's output and the ReLU after
    it in one pass (the ReLU's own kernel would read and write the whole array again)."""
    if relu:
        for i in range(src.shape[0]):
            v = (src[i] - m) * a + b
            dst[i] = v if v > 0 else 0
    else:
        for i in range(src.shape[0]):
            dst[i] = (src[i] - m) * a + b


# The statistics and the backward run on one thread: vectorised, the stem's took 0.15 and 0.3
# ms, and as parallel loops they took 2-3x as long to compile (docs/performance-history.md).
@njit(cache=True, nogil=True)
def batchnorm2d_stats(x):
    """x (N, C, H, W) -> mean (C,), biased var (C,), accumulated in float64 (two passes)."""
    N, C, H, W = x.shape
    M = N * H * W
    mean = np.empty(C, x.dtype)
    var = np.empty(C, x.dtype)
    xf = x.reshape(N, C, H * W)
    lane = np.empty(min(LANES, H * W))
    for c in range(C):  # every image's channel c into the same lanes
        lane[:] = 0.0
        for n in range(N):
            _add_row(xf[n, c], lane)
        mu = _sum(lane, 0, lane.shape[0]) / M
        lane[:] = 0.0
        for n in range(N):
            _add_row_sq_dev(xf[n, c], mu, lane)
        mean[c] = mu
        var[c] = _sum(lane, 0, lane.shape[0]) / M
    return mean, var


@njit(cache=True, nogil=True)
def batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps):
    """Batch mean, biased var (C,) of count >= 2 values -> invstd (C,) = 1 / sqrt(var + eps).

    Updates the running statistics in place with torch's rule, the variance unbiased:
    running = (1 - momentum) * running + momentum * batch. All in float64, then rounded.
    """
    C = mean.shape[0]
    invstd = np.empty(C, mean.dtype)
    bessel = count / (count - 1)
    for c in range(C):
        v = float(var[c])
        invstd[c] = 1.0 / np.sqrt(v + eps)
        running_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * float(mean[c])
        running_var[c] = (1 - momentum) * float(running_var[c]) + momentum * (v * bessel)
    return invstd


@njit(cache=True, nogil=True)
def batchnorm2d_eval_stats(running_mean, running_var, eps):
    """Running statistics (C,) -> a copy of the mean (later training steps change it), invstd."""
    C = running_mean.shape[0]
    mean = np.empty(C, running_mean.dtype)
    invstd = np.empty(C, running_mean.dtype)
    for c in range(C):
        mean[c] = running_mean[c]
        invstd[c] = 1.0 / np.sqrt(float(running_var[c]) + eps)
    return mean, invstd


def batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False):
    """x (N, C, H, W), per-channel (C,) vectors -> y = (x - mean) * invstd * gamma + beta,
    and max(y, 0) with relu."""
    with threads.budget(x.size):
        return _batchnorm2d_forward(x, mean, invstd, gamma, beta, relu)


@njit(parallel=True, cache=True, nogil=True)
def _batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False):
    """``batchnorm2d_forward`` on the threads in force."""
    N, C, H, W = x.shape
    y = np.empty_like(x)
    xf, yf = x.reshape(N * C, H * W), y.reshape(N * C, H * W)
    to = x.dtype.type
    for nc in prange(N * C):
        c = nc % C
        # the coefficient in float64, rounded once; the elementwise part in x's dtype
        m, a, b = to(mean[c]), to(np.float64(invstd[c]) * np.float64(gamma[c])), to(beta[c])
        _affine(xf[nc], m, a, b, relu, yf[nc])
    return y


def batchnorm2d_backward(dy, x, mean, invstd, gamma, y=None):
    """Training-mode backward (batch statistics) -> dx (N, C, H, W), dgamma (C,), dbeta (C,).

    y: the output of a forward with relu=True, or None: dy then counts only where y > 0 (the
    ReLU's backward, read in the same passes instead of written out first)."""
    relu = y is not None
    return _batchnorm2d_backward(dy, x, y if relu else dy, relu, mean, invstd, gamma)


@njit(cache=True, nogil=True)
def _batchnorm2d_backward(dy, x, y, relu, mean, invstd, gamma):
    """``batchnorm2d_backward``; y is read only with relu."""
    N, C, H, W = x.shape
    M = N * H * W
    dx = np.empty_like(x)
    dgamma = np.empty(C, x.dtype)
    dbeta = np.empty(C, x.dtype)
    xf, dyf, dxf = x.reshape(N, C, H * W), dy.reshape(N, C, H * W), dx.reshape(N, C, H * W)
    yf = y.reshape(N, C, H * W)
    to = x.dtype.type
    lane_dy, lane_dy_xc = np.empty(min(LANES, H * W)), np.empty(min(LANES, H * W))
    for c in range(C):
        # float64 sums and products, as the statistics
        mu, istd = np.float64(mean[c]), np.float64(invstd[c])
        lane_dy[:] = 0.0
        lane_dy_xc[:] = 0.0
        for n in range(N):
            _add_row_dy_xc(dyf[n, c], xf[n, c], yf[n, c], relu, mu, lane_dy, lane_dy_xc)
        sum_dy = _sum(lane_dy, 0, lane_dy.shape[0])
        sum_dy_xhat = _sum(lane_dy_xc, 0, lane_dy.shape[0]) * istd
        # dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)): the mean and the variance
        # both depend on every x, which removes dy's mean and its component along xhat.
        scale, mean_dy, mean_dy_xhat = np.float64(gamma[c]) * istd, sum_dy / M, sum_dy_xhat / M
        # the coefficients rounded once to x's dtype, the elementwise part in it
        m, s, k, mdy, zero = to(mu), to(scale), to(istd * mean_dy_xhat), to(mean_dy), to(0)
        for n in range(N):
            src, d, out, dst = xf[n, c], dyf[n, c], yf[n, c], dxf[n, c]
            if relu:
                for i in range(H * W):
                    g = d[i] if out[i] > 0 else zero
                    dst[i] = (g - mdy - (src[i] - m) * k) * s
            else:
                for i in range(H * W):
                    dst[i] = (d[i] - mdy - (src[i] - m) * k) * s
        dgamma[c] = sum_dy_xhat
        dbeta[c] = sum_dy
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- group norm
# One kernel pair serves both layouts: x is seen as a 2-D array in which image n's channel c
# of a piece (one image, or one (level, image) of a Joint) is the run of HW values starting
# at row `row0 + c`, column `col0`, a row of a table ``pieces`` (P, 3) = (row0, col0, HW). An
# (N, C, H, W) input is x.reshape(N*C, H*W) with pieces (n*C, 0, H*W); a Joint (C, T) is
# itself, with pieces (0, first column of the level's image, H*W). Each task is one (piece,
# group), so no two tasks write the same element. As for batch norm, the sums are float64 and
# the per-channel coefficients are computed from them in float64 and rounded once to x's
# dtype; the per-element arithmetic runs in x's dtype, since a float32 vector holds twice as
# many lanes as a float64 one (twice as fast, docs/performance-history.md "Kernel notes").
#
# Waking the sleeping worker threads for a parallel loop costs ~45 us (OMP_WAIT_POLICY=
# PASSIVE, see retina_np/runtime.py), more than a whole group norm of a small pyramid level
# takes on one core. So the tasks are written once as a serial loop over a range of tasks, and
# inputs below ``options.groupnorm_parallel_min_elements`` run it directly, larger ones through
# a prange over them.


@functools.lru_cache(maxsize=64)
def _image_pieces(N, C, HW):
    """The pieces (N, 3) of an (N, C, H, W) input seen as (N*C, H*W): image n from row n*C
    (made once per shape, like ``_joint_pieces``; not to be written to)."""
    return np.array([(n * C, 0, HW) for n in range(N)], np.int64).reshape(-1, 3)


@functools.lru_cache(maxsize=64)
def _joint_pieces(n, hws):
    """The group-norm pieces of a Joint of n images with levels hws: every layer of the heads
    uses the same table, so it is made once (and must not be written to; marking it
    read-only would make Numba compile every kernel that reads it a second time)."""
    starts = Joint(None, n, hws).starts
    return np.array([(0, a + m * h * w, h * w) for (h, w), a in zip(hws, starts)
                     for m in range(n)], np.int64).reshape(-1, 3)


# A group's sums go into GROUP_LANES lanes, as batch norm's (its runs are shorter: the heads'
# pyramid levels, 256 values a channel down to 1): forward and backward 1.9x and 1.5x faster
# on the heads' input (docs/performance-history.md); a parallel loop runs GROUP_PARTS runs of
# tasks, each with its own lanes.
GROUP_LANES = 32
GROUP_PARTS = 64


@njit(cache=True, nogil=True)
def _few_sums(x, row0, a, HW, Cg, mu, squared):
    """The lanes' sum of a group of Cg rows x[row0 + j, a:a + HW] (of (x - mu)^2 with squared)
    for HW <= GROUP_LANES, without the lanes: value k of every row then has lane k to itself,
    lane k is its column's sum over the rows in order, and ``_sum`` adds lane k into partial
    sum k % 4 (the lanes past HW hold +0.0, which changes no sum): the same additions in the
    same order, so the same bits. On the heads' smallest pyramid levels (16, 4 and 1 values a
    channel) zeroing, filling and adding 32 lanes cost more than the values."""
    s0 = s1 = s2 = s3 = 0.0
    for k in range(HW):
        lane = 0.0
        for j in range(Cg):
            v = np.float64(x[row0 + j, a + k])
            if squared:
                v -= mu
                v *= v
            lane += v
        q = k % 4
        if q == 0:
            s0 += lane
        elif q == 1:
            s1 += lane
        elif q == 2:
            s2 += lane
        else:
            s3 += lane
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True)
def _few_sums_dy(dy, x, row, a, HW, mu):
    """``_add_row_dy_xc`` into fresh lanes then ``_sum`` of each (no ReLU), for HW <=
    GROUP_LANES, without the lanes (as ``_few_sums``): (sum of dy, sum of dy * (x - mu))."""
    s0 = s1 = s2 = s3 = 0.0
    t0 = t1 = t2 = t3 = 0.0
    for k in range(HW):
        g = np.float64(dy[row, a + k])
        gx = g * (np.float64(x[row, a + k]) - mu)
        q = k % 4
        if q == 0:
            s0 += g
            t0 += gx
        elif q == 1:
            s1 += g
            t1 += gx
        elif q == 2:
            s2 += g
            t2 += gx
        else:
            s3 += g
            t3 += gx
    return (s0 + s1) + (s2 + s3), (t0 + t1) + (t2 + t3)


@njit(cache=True, nogil=True)
def _groupnorm_task(task, groups, pieces):
    """Task number `task`: (piece, group, the piece's first row and column, its H*W); the
    groups inner, so that consecutive tasks read the same columns."""
    piece, g = task // groups, task % groups
    return piece, g, pieces[piece, 0], pieces[piece, 1], pieces[piece, 2]


@njit(cache=True, nogil=True)
def _groupnorm_forward_tasks(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd, start,
                             stop):
    """Tasks start:stop of (piece, group) of x (2-D, see above): y into y (x's shape), with
    the ReLU after it when relu; statistics into mean, invstd (pieces, G)."""
    groups, to = gamma.shape[0] // Cg, x.dtype.type
    lanes = np.empty(GROUP_LANES)
    for task in range(start, stop):
        piece, g, r, a, HW = _groupnorm_task(task, groups, pieces)
        M = Cg * HW
        if HW <= GROUP_LANES:  # a small level: the same sums without the lanes
            mu = _few_sums(x, r + g * Cg, a, HW, Cg, 0.0, False) / M
            istd = 1.0 / np.sqrt(_few_sums(x, r + g * Cg, a, HW, Cg, mu, True) / M + eps)
        else:
            lanes[:] = 0.0  # the group's channels into the same lanes
            for j in range(Cg):
                _add_row(x[r + g * Cg + j, a:a + HW], lanes)
            mu = _sum(lanes, 0, lanes.shape[0]) / M
            lanes[:] = 0.0
            for j in range(Cg):
                _add_row_sq_dev(x[r + g * Cg + j, a:a + HW], mu, lanes)
            istd = 1.0 / np.sqrt(_sum(lanes, 0, lanes.shape[0]) / M + eps)
        mean[piece, g] = mu
        invstd[piece, g] = istd
        m = to(mu)
        for j in range(Cg):  # y = (x - mu) * k + beta, k from the float64 statistics
            c = g * Cg + j
            k, b = to(istd * np.float64(gamma[c])), to(beta[c])
            if HW > GROUP_LANES:
                _affine(x[r + c, a:a + HW], m, k, b, relu, y[r + c, a:a + HW])
            else:  # a few values: a plain loop (the vectorised one's set-up costs more)
                for i in range(a, a + HW):
                    v = (x[r + c, i] - m) * k + b
                    y[r + c, i] = v if v > 0 or not relu else 0


@njit(parallel=True, cache=True, nogil=True)
def _groupnorm_forward_parallel(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd):
    tasks = pieces.shape[0] * (gamma.shape[0] // Cg)
    parts = min(tasks, GROUP_PARTS)
    for part in prange(parts):
        _groupnorm_forward_tasks(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd,
                                 tasks * part // parts, tasks * (part + 1) // parts)


def _groupnorm_forward_pieces(x, gamma, beta, groups, eps, pieces, relu):
    """y (x's shape), mean and invstd (pieces, G) of x (2-D) laid out by pieces."""
    y = np.empty_like(x)
    mean = np.empty((pieces.shape[0], groups), x.dtype)
    invstd = np.empty((pieces.shape[0], groups), x.dtype)
    args = (x, gamma, beta, gamma.shape[0] // groups, pieces, float(eps), bool(relu), y, mean,
            invstd)
    if x.size < current().groupnorm_parallel_min_elements:
        _groupnorm_forward_tasks(*args, 0, pieces.shape[0] * groups)
    else:
        _groupnorm_forward_parallel(*args)
    return y, mean, invstd


def groupnorm_forward(x, gamma, beta, groups, eps, relu=False):
    """x (N, C, H, W), gamma, beta (C,) -> y (N, C, H, W), mean (N, G), invstd (N, G).

    Per (n, g): mean and biased variance over (c, h, w) of the group (two float64 passes);
    y = (x - mean) * invstd * gamma[c] + beta[c], invstd = 1 / sqrt(var + eps); max(y, 0)
    with relu.
    """
    N, C, H, W = x.shape
    y, mean, invstd = _groupnorm_forward_pieces(x.reshape(N * C, H * W), gamma, beta, groups,
                                                eps, _image_pieces(N, C, H * W), relu)
    return y.reshape(x.shape), mean, invstd


@njit(cache=True, nogil=True)
def _groupnorm_backward_tasks(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy, sum_dy_xhat,
                              start, stop):
    """Tasks start:stop of (piece, group), as the forward's: dx into dx (x's shape), the
    per-channel sums into sum_dy, sum_dy_xhat (pieces, C)."""
    groups, to = gamma.shape[0] // Cg, x.dtype.type
    lanes_dy, lanes_dy_xc = np.empty(GROUP_LANES), np.empty(GROUP_LANES)
    for task in range(start, stop):
        piece, g, r, a, HW = _groupnorm_task(task, groups, pieces)
        M = Cg * HW
        mu, istd = np.float64(mean[piece, g]), np.float64(invstd[piece, g])
        sum_dxhat = 0.0
        sum_dxhat_xhat = 0.0
        for j in range(Cg):
            c = g * Cg + j
            if HW <= GROUP_LANES:  # a small level: the same sums without the lanes
                s0, s1 = _few_sums_dy(dy, x, r + c, a, HW, mu)
                s1 *= istd
            else:
                lanes_dy[:] = 0.0
                lanes_dy_xc[:] = 0.0
                d = dy[r + c, a:a + HW]
                _add_row_dy_xc(d, x[r + c, a:a + HW], d, False, mu, lanes_dy, lanes_dy_xc)
                s0 = _sum(lanes_dy, 0, lanes_dy.shape[0])
                s1 = _sum(lanes_dy_xc, 0, lanes_dy.shape[0]) * istd
            sum_dy[piece, c] = s0
            sum_dy_xhat[piece, c] = s1
            sum_dxhat += np.float64(gamma[c]) * s0
            sum_dxhat_xhat += np.float64(gamma[c]) * s1
        # dx = invstd * (dy * gamma - mean_dxhat - (x - mu) * invstd * mean_dxhat_xhat), the
        # coefficients from the float64 sums rounded once to x's dtype
        m, s, k = to(mu), to(istd), to(istd * (sum_dxhat_xhat / M))
        mdx = to(sum_dxhat / M)
        for j in range(Cg):
            c = g * Cg + j
            gc = gamma[c]
            src, d, dst = x[r + c, a:a + HW], dy[r + c, a:a + HW], dx[r + c, a:a + HW]
            for i in range(HW):
                dst[i] = (d[i] * gc - mdx - (src[i] - m) * k) * s


@njit(parallel=True, cache=True, nogil=True)
def _groupnorm_backward_parallel(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy,
                                 sum_dy_xhat):
    tasks = pieces.shape[0] * (gamma.shape[0] // Cg)
    parts = min(tasks, GROUP_PARTS)
    for part in prange(parts):
        _groupnorm_backward_tasks(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy,
                                  sum_dy_xhat, tasks * part // parts,
                                  tasks * (part + 1) // parts)


@njit(cache=True, nogil=True)
def _sum_over_images(sums, dtype_like):
    """(pieces, C) float64 -> (C,) in dtype_like's dtype, added over the pieces (images) in
    order: the same bits for any number of threads."""
    N, C = sums.shape
    out = np.empty(C, dtype_like.dtype)
    for c in range(C):
        s = 0.0
        for n in range(N):
            s += sums[n, c]
        out[c] = s
    return out


def _groupnorm_backward_pieces(dy, x, mean, invstd, gamma, groups, pieces):
    """dx (x's shape), dgamma (C,), dbeta (C,) of x, dy (2-D) laid out by pieces.

    Per group, with dxhat = dy * gamma[c]: dx = invstd * (dxhat - mean(dxhat) - xhat *
    mean(dxhat * xhat)), as batch norm's. Each task first sums dy and dy * xhat per channel of
    its piece (float64); those (pieces, C) sums give both the group means (weighted by gamma)
    and, added over the pieces afterwards, dbeta and dgamma.
    """
    C = gamma.shape[0]
    dx = np.empty_like(x)
    sum_dy = np.empty((pieces.shape[0], C))  # float64
    sum_dy_xhat = np.empty((pieces.shape[0], C))
    args = (dy, x, mean, invstd, gamma, C // groups, pieces, dx, sum_dy, sum_dy_xhat)
    if x.size < current().groupnorm_parallel_min_elements:
        _groupnorm_backward_tasks(*args, 0, pieces.shape[0] * groups)
    else:
        _groupnorm_backward_parallel(*args)
    return dx, _sum_over_images(sum_dy_xhat, x), _sum_over_images(sum_dy, x)


def groupnorm_backward(dy, x, mean, invstd, gamma, groups):
    """dy, x (N, C, H, W), mean, invstd (N, G), gamma (C,) -> dx, dgamma (C,), dbeta (C,)."""
    N, C, H, W = x.shape
    dx, dgamma, dbeta = _groupnorm_backward_pieces(
        dy.reshape(N * C, H * W), x.reshape(N * C, H * W), mean, invstd, gamma, groups,
        _image_pieces(N, C, H * W))
    return dx.reshape(x.shape), dgamma, dbeta


def groupnorm_forward_joint(xj, gamma, beta, groups, eps, relu=False):
    """``groupnorm_forward`` of every level of a Joint (C, T) at once -> (y Joint (C, T), mean
    and invstd (levels * N, G), one row per (level, image) in the Joint's order)."""
    y, mean, invstd = _groupnorm_forward_pieces(xj.data, gamma, beta, groups, eps,
                                                _joint_pieces(xj.n, xj.hws), relu)
    return xj.like(y), mean, invstd


def groupnorm_backward_joint(dyj, xj, mean, invstd, gamma, groups):
    """The backward of ``groupnorm_forward_joint``: (dx Joint (C, T), dgamma (C,), dbeta (C,))."""
    dx, dgamma, dbeta = _groupnorm_backward_pieces(dyj.data, xj.data, mean, invstd, gamma,
                                                   groups, _joint_pieces(xj.n, xj.hws))
    return xj.like(dx), dgamma, dbeta


