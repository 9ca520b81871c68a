"""CUDA normalisation: batch norm (statistics, running-statistics update, apply, backward) and
group norm, on device arrays.

The statistics and the backwards' sums are the per-channel sums of ``reduce.py``: two
deterministic passes ((channel, chunk) blocks summing in float64 with a shared-memory tree,
then one thread per channel adding its chunks in order), no atomics, the same bits every run,
float64 sums like the CPU kernels. The rest is one thread per element (apply, dx) or per
channel (the running statistics, invstd) in grid-stride loops.

Batch norm sums over (n, h, w) for every channel. Group norm runs the same sums on reshaped
views rather than written again. Group g of image n (channels g*Cg .. (g+1)*Cg - 1, Cg = C/G)
is one contiguous run of M = Cg*H*W values, and so is plane (n, c) of H*W values; a channel of
an (N', C', H', W') array, as the reduction sees it, is N' runs of H'*W' values. Hence

    x viewed as (1, N*G, 1, M)   -> per-group sums   (channel n*G + g), for mean and variance
    x viewed as (1, N*C, 1, H*W) -> per-plane sums   (channel n*C + c), for the backward

Group norm's forward: mean and biased variance per group (two reductions, as batch norm's
statistics), invstd per group, then one elementwise pass y = (x - mean) * invstd * gamma[c] +
beta[c]. Its backward: per plane sum(dy) and sum(dy * xhat) (one reduction, the batch-norm
backward's mode), then three small passes: per group the gamma-weighted means of those sums,
per channel dgamma and dbeta (a sum over the images), and per element
dx = invstd * (dy*gamma - mean(dxhat) - xhat * mean(dxhat * xhat)).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from retina_np.kernels.cuda import launch as cl
from retina_np.kernels.cuda.elementwise import cast, relu_backward, relu_forward
from retina_np.kernels.cuda.reduce import (
    SUM,
    SUM_AND_DOT_XHAT,
    SUM_SQUARED_DEVIATION,
    channel_sums,
    stand_in,
)


# ----------------------------------------------------------------------------- batch norm
def batchnorm2d_stats(x):
    """x (N, C, H, W) -> mean (C,), biased var (C,), accumulated in float64 (two passes)."""
    N, C, H, W = x.shape
    M = N * H * W
    mean64, _ = channel_sums(x, x, stand_in(x), stand_in(x), SUM, M)
    var64, _ = channel_sums(x, x, mean64, mean64, SUM_SQUARED_DEVIATION, M)
    return cast(mean64, x.dtype), cast(var64, x.dtype)


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
def _batchnorm_backward_dx_kernel(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, C, HW, M,
                                  dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        c = (i // HW) % C
        istd = invstd[c]
        k = gamma[c] * istd
        xhat = (x[i] - mean[c]) * istd
        dx[i] = k * (dy[i] - sum_dy[c] / M - xhat * (sum_dy_xhat[c] / M))


def batchnorm2d_backward(dy, x, mean, invstd, gamma, y=None):
    """Training-mode backward (batch statistics) -> dx (N, C, H, W), dgamma (C,), dbeta (C,).

    dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy * xhat)): the mean and the variance
    both depend on every x, which removes dy's mean and its component along xhat. y: the
    output of a forward with relu=True, or None: then dy counts only where y > 0 (the ReLU's
    backward, as a first launch).
    """
    if y is not None:
        dy = relu_backward(dy, y)
    N, C, H, W = x.shape
    M = N * H * W
    sum_dy, sum_dy_xhat = channel_sums(dy, x, mean, invstd, SUM_AND_DOT_XHAT)
    dx = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_batchnorm_backward_dx_kernel, dx.size, cl.flat(dy), cl.flat(x), mean, invstd,
                 gamma, sum_dy, sum_dy_xhat, C, H * W, float(M), cl.flat(dx))
    return dx, cast(sum_dy_xhat, x.dtype), cast(sum_dy, x.dtype)


# ----------------------------------------------------------------------------- group norm
@cuda.jit
def _invstd_kernel(var, eps, invstd):
    for i in range(cuda.grid(1), var.size, cuda.gridsize(1)):
        invstd[i] = 1.0 / math.sqrt(var[i] + eps)


@cuda.jit
def _groupnorm_apply_kernel(x, mean, invstd, gamma, beta, C, HW, Cg, y):
    # mean, invstd: (N*G,) float64; element i lies in plane n*C + c of group n*G + c // Cg
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        nc = i // HW
        c = nc % C
        ng = nc // Cg  # (n*C + c) // Cg = n*G + c // Cg, since C = G*Cg
        scale = invstd[ng] * gamma[c]
        y[i] = (x[i] - mean[ng]) * scale + beta[c]


def groupnorm_forward(x, gamma, beta, groups, eps, relu=False):
    """x (N, C, H, W), gamma, beta (C,) -> y (N, C, H, W), mean (N, G), invstd (N, G).

    Per (n, g): mean and biased variance over (c, h, w) of the group, in float64;
    y = (x - mean) * invstd * gamma[c] + beta[c], invstd = 1 / sqrt(var + eps); relu:
    max(y, 0), as a second launch.
    """
    N, C, H, W = x.shape
    Cg = C // groups
    M = Cg * H * W
    rows = x.reshape(1, N * groups, 1, M)  # one "channel" per (image, group)
    flat = cl.flat(x)  # stands in for the per-channel vectors that SUM does not read
    mean64, _ = channel_sums(rows, rows, flat, flat, SUM, M)
    var64, _ = channel_sums(rows, rows, mean64, mean64, SUM_SQUARED_DEVIATION, M)
    invstd64 = cl.empty(N * groups, np.float64)
    cl.launch_1d(_invstd_kernel, N * groups, var64, float(eps), invstd64)
    y = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_groupnorm_apply_kernel, x.size, flat, mean64, invstd64, gamma, beta, C,
                 H * W, Cg, cl.flat(y))
    mean, invstd = cast(mean64, x.dtype), cast(invstd64, x.dtype)
    y = relu_forward(y) if relu else y
    return y, mean.reshape(N, groups), invstd.reshape(N, groups)


@cuda.jit
def _per_plane_kernel(stat, Cg, out):
    # out[n*C + c] = stat[n*G + c // Cg]: a group's statistic for each of its planes
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = stat[i // Cg]


@cuda.jit
def _group_means_kernel(sum_dy, sum_dy_xhat, gamma, Cg, M, mean_dxhat, mean_dxhat_xhat):
    # one thread per (n, g): mean over the group of dxhat = dy*gamma[c] and of dxhat*xhat;
    # its planes are n*C + g*Cg + j = ng*Cg + j
    C = gamma.size
    for ng in range(cuda.grid(1), mean_dxhat.size, cuda.gridsize(1)):
        a = 0.0
        b = 0.0
        for j in range(Cg):
            c = (ng * Cg + j) % C
            a += float64(gamma[c]) * sum_dy[ng * Cg + j]
            b += float64(gamma[c]) * sum_dy_xhat[ng * Cg + j]
        mean_dxhat[ng] = a / M
        mean_dxhat_xhat[ng] = b / M


@cuda.jit
def _channel_grads_kernel(sum_dy, sum_dy_xhat, N, dgamma, dbeta):
    # one thread per channel: the sums of its N planes, over the images in order
    C = dgamma.size
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        s0 = 0.0
        s1 = 0.0
        for n in range(N):
            s0 += sum_dy[n * C + c]
            s1 += sum_dy_xhat[n * C + c]
        dbeta[c] = s0
        dgamma[c] = s1


@cuda.jit
def _groupnorm_dx_kernel(dy, x, mean, invstd, gamma, mean_dxhat, mean_dxhat_xhat, C, HW, Cg,
                         dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        nc = i // HW
        c = nc % C
        ng = nc // Cg
        istd = float64(invstd[ng])
        xhat = (x[i] - float64(mean[ng])) * istd
        dx[i] = istd * (dy[i] * float64(gamma[c]) - mean_dxhat[ng] - xhat * mean_dxhat_xhat[ng])


def groupnorm_backward(dy, x, mean, invstd, gamma, groups):
    """dy, x (N, C, H, W), mean, invstd (N, G), gamma (C,) -> dx, dgamma (C,), dbeta (C,).

    Per group, with dxhat = dy * gamma[c]:
    dx = invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), as batch norm's;
    dgamma[c] = sum over (n, h, w) of dy * xhat, dbeta[c] = sum of dy.
    """
    N, C, H, W = x.shape
    Cg = C // groups
    mean_g, invstd_g = cl.flat(mean), cl.flat(invstd)  # (N*G,)
    mean_p = cl.empty(N * C, np.float64)
    invstd_p = cl.empty(N * C, np.float64)
    cl.launch_1d(_per_plane_kernel, N * C, mean_g, Cg, mean_p)
    cl.launch_1d(_per_plane_kernel, N * C, invstd_g, Cg, invstd_p)
    # per plane (n, c): sum of dy and of dy * (x - mean) * invstd, (N*C,) float64 each
    sum_dy, sum_dy_xhat = channel_sums(dy.reshape(1, N * C, 1, H * W),
                                        x.reshape(1, N * C, 1, H * W), mean_p, invstd_p,
                                        SUM_AND_DOT_XHAT)
    mean_dxhat = cl.empty(N * groups, np.float64)
    mean_dxhat_xhat = cl.empty(N * groups, np.float64)
    cl.launch_1d(_group_means_kernel, N * groups, sum_dy, sum_dy_xhat, gamma, Cg,
                 float(Cg * H * W), mean_dxhat, mean_dxhat_xhat)
    dgamma, dbeta = cl.empty(C, x.dtype), cl.empty(C, x.dtype)
    cl.launch_1d(_channel_grads_kernel, C, sum_dy, sum_dy_xhat, N, dgamma, dbeta)
    dx = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_groupnorm_dx_kernel, dx.size, cl.flat(dy), cl.flat(x), mean_g, invstd_g,
                 gamma, mean_dxhat, mean_dxhat_xhat, C, H * W, Cg, cl.flat(dx))
    return dx, dgamma, dbeta
