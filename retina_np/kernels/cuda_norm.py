"""CUDA group normalisation: ``groupnorm_forward`` and ``groupnorm_backward`` on device arrays.

The statistics are the per-channel sums of ``cuda_reduce.py``, run on reshaped views rather
than written again. Group g of image n (channels g*Cg .. (g+1)*Cg - 1, Cg = C/G) is one
contiguous run of M = Cg*H*W values, and so is plane (n, c) of H*W values; a channel of an
(N', C', H', W') array, as the reduction sees it, is N' runs of H'*W' values. Hence

    x viewed as (1, N*G, 1, M)   -> per-group sums   (channel n*G + g), for mean and variance
    x viewed as (1, N*C, 1, H*W) -> per-plane sums   (channel n*C + c), for the backward

and both reductions keep their two deterministic passes ((channel, chunk) blocks summing in
float64 with a shared-memory tree, then one thread per channel adding its chunks in order):
no atomics, the same bits every run, float64 sums like the CPU kernels.

Forward: mean and biased variance per group (two reductions, as batch norm's statistics),
invstd per group, then one elementwise pass y = (x - mean) * invstd * gamma[c] + beta[c].
Backward: per plane sum(dy) and sum(dy * xhat) (one reduction, the batch-norm backward's
mode), then three small passes: per group the gamma-weighted means of those sums, per
channel dgamma and dbeta (a sum over the images), and per element
dx = invstd * (dy*gamma - mean(dxhat) - xhat * mean(dxhat * xhat)).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from retina_np.kernels import cuda_launch as cl
from retina_np.kernels.cuda_elementwise import cast, relu_forward
from retina_np.kernels.cuda_reduce import (
    SUM,
    SUM_AND_DOT_XHAT,
    SUM_SQUARED_DEVIATION,
    _channel_sums,
)


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
    mean64, _ = _channel_sums(rows, rows, flat, flat, SUM, M)
    var64, _ = _channel_sums(rows, rows, mean64, mean64, SUM_SQUARED_DEVIATION, M)
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
    sum_dy, sum_dy_xhat = _channel_sums(dy.reshape(1, N * C, 1, H * W),
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
