"""CUDA reductions: per-channel sums (the bias gradient, batch statistics, the batch-norm
backward) and whole-array sums to one number (``sum_squares``; the loss kernels of
``cuda_detection.py`` use the same ``launch_and_sum``).

Each is a sum over (n, h, w) for every channel c of an (N, C, H, W) array: M = N*H*W values
that lie in N runs of H*W contiguous elements. The reduction runs in two deterministic passes:

1. a grid of (C, S) blocks: block (c, s) sums the s-th of S equal chunks of channel c, each
   thread a strided part of it in a float64 register, then the block adds its threads'
   values with a tree in shared memory and writes one partial sum;
2. one thread per channel adds its S partial sums in order.

S is chosen so that C*S is about ``REDUCE_TARGET_BLOCKS`` (many channels: one chunk each; few
channels with large maps: many), but never so many that a thread gets fewer than
``REDUCE_MIN_PER_THREAD`` values. No atomics: the same input gives the same bits every run.
Sums are accumulated in float64, as the CPU kernels do.

A sum to one Python number (a loss, a squared norm) is one grid-stride pass: each thread adds
its elements in a float64 register, each block adds its threads' values with the same shared
memory tree and writes one partial sum, and the host adds the partial sums (at most
``MAX_BLOCKS_1D``) in order.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from retina_np.kernels import cuda_config
from retina_np.kernels import cuda_launch as cl
from retina_np.kernels.cuda_elementwise import cast, fill_

# What the first pass sums per element (a, b are the two inputs, centre/scale per channel):
SUM = 0  # s0 += a
SUM_SQUARED_DEVIATION = 1  # s0 += (a - centre)^2
SUM_AND_DOT_XHAT = 2  # s0 += a; s1 += a * (b - centre) * scale    (dy and dy * xhat)


@functools.cache
def _partials_kernel(threads: int):
    """The first pass for blocks of ``threads`` threads (a shared array needs a constant size)."""

    @cuda.jit
    def partials_kernel(a, b, centre, scale, mode, C, HW, chunk, partials):
        # a, b: (N*C*HW,) flat; centre, scale: (C,); partials: (2, C, S) float64
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        t = cuda.threadIdx.x
        M = (a.size // (C * HW)) * HW  # values per channel
        lo = s * chunk
        hi = min(M, lo + chunk)
        acc0 = 0.0
        acc1 = 0.0
        j = lo + t  # the j-th value of channel c lives at (n*C + c)*HW + p, j = n*HW + p
        n = j // HW
        p = j - n * HW
        while j < hi:
            v = float64(a[(n * C + c) * HW + p])
            if mode == SUM:
                acc0 += v
            elif mode == SUM_SQUARED_DEVIATION:
                d = v - centre[c]
                acc0 += d * d
            else:
                acc0 += v
                acc1 += v * ((float64(b[(n * C + c) * HW + p]) - centre[c]) * scale[c])
            j += threads
            p += threads
            if p >= HW:  # a division only when the stride crosses into the next image
                q = p // HW
                n += q
                p -= q * HW
        sh0 = cuda.shared.array(threads, float64)
        sh1 = cuda.shared.array(threads, float64)
        sh0[t] = acc0
        sh1[t] = acc1
        cuda.syncthreads()
        step = threads // 2
        while step > 0:  # tree: threads [0, step) add the values of [step, 2*step)
            if t < step:
                sh0[t] += sh0[t + step]
                sh1[t] += sh1[t + step]
            cuda.syncthreads()
            step //= 2
        if t == 0:
            partials[0, c, s] = sh0[0]
            partials[1, c, s] = sh1[0]

    return partials_kernel


@cuda.jit
def _finish_kernel(partials, divisor, out0, out1):
    # one thread per channel: out_q[c] = sum_s partials[q, c, s] / divisor, in order
    C, S = partials.shape[1], partials.shape[2]
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        s0 = 0.0
        s1 = 0.0
        for s in range(S):
            s0 += partials[0, c, s]
            s1 += partials[1, c, s]
        out0[c] = s0 / divisor
        out1[c] = s1 / divisor


def _chunks(C: int, M: int) -> int:
    """Chunks per channel S (see the module docstring)."""
    threads = cuda_config.REDUCE_THREADS
    most = max(1, M // (threads * cuda_config.REDUCE_MIN_PER_THREAD))
    return max(1, min(most, math.ceil(cuda_config.REDUCE_TARGET_BLOCKS / C)))


def _channel_sums(a, b, centre, scale, mode, divisor=1.0):
    """(sum0 / divisor, sum1 / divisor) per channel of a (N, C, H, W), both (C,) float64."""
    N, C, H, W = a.shape
    M = N * H * W
    threads = cuda_config.REDUCE_THREADS
    if threads & (threads - 1):
        raise ValueError(f"REDUCE_THREADS must be a power of two, got {threads}")
    S = _chunks(C, M)
    chunk = cl.ceil_div(M, S)
    partials = cl.empty((2, C, S), np.float64)
    out0, out1 = cl.empty(C, np.float64), cl.empty(C, np.float64)
    if M == 0:
        fill_(partials, 0.0)
    else:
        cl.launch(_partials_kernel(threads), (C, S), threads, cl.flat(a), cl.flat(b), centre,
                  scale, mode, C, H * W, chunk, partials)
    cl.launch_1d(_finish_kernel, C, partials, float(divisor), out0, out1)
    return out0, out1


def bias_backward(dy):
    """dy (N, F, Ho, Wo) -> db (F,), summed in float64."""
    s0, _ = _channel_sums(dy, dy, _dummy(dy), _dummy(dy), SUM)
    return cast(s0, dy.dtype)


def _dummy(a):
    """A stand-in (C,) vector for the per-channel arguments a mode does not read."""
    return cl.flat(a)


def batchnorm2d_stats(x):
    """x (N, C, H, W) -> mean (C,), biased var (C,), accumulated in float64 (two passes)."""
    N, C, H, W = x.shape
    M = N * H * W
    mean64, _ = _channel_sums(x, x, _dummy(x), _dummy(x), SUM, M)
    var64, _ = _channel_sums(x, x, mean64, mean64, SUM_SQUARED_DEVIATION, M)
    return cast(mean64, x.dtype), cast(var64, x.dtype)


@cuda.jit
def _batchnorm_backward_dx_kernel(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, C, HW, M,
                                  dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        c = (i // HW) % C
        istd = invstd[c]
        k = gamma[c] * istd
        xhat = (x[i] - mean[c]) * istd
        dx[i] = k * (dy[i] - sum_dy[c] / M - xhat * (sum_dy_xhat[c] / M))


def batchnorm2d_backward(dy, x, mean, invstd, gamma):
    """Training-mode backward (batch statistics) -> dx (N, C, H, W), dgamma (C,), dbeta (C,).

    dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy * xhat)): the mean and the variance
    both depend on every x, which removes dy's mean and its component along xhat.
    """
    N, C, H, W = x.shape
    M = N * H * W
    sum_dy, sum_dy_xhat = _channel_sums(dy, x, mean, invstd, SUM_AND_DOT_XHAT)
    dx = cl.empty(x.shape, x.dtype)
    cl.launch_1d(_batchnorm_backward_dx_kernel, dx.size, cl.flat(dy), cl.flat(x), mean, invstd,
                 gamma, sum_dy, sum_dy_xhat, C, H * W, float(M), cl.flat(dx))
    return dx, cast(sum_dy_xhat, x.dtype), cast(sum_dy, x.dtype)


# ----------------------------------------------------------------------------- sums to one number
@cuda.jit(device=True)
def block_sum_to(partial, sh, value, threads):
    """Add ``value`` over the block (shared float64 tree); thread 0 writes partial[block]."""
    t = cuda.threadIdx.x
    sh[t] = value
    cuda.syncthreads()
    step = threads // 2
    while step > 0:
        if t < step:
            sh[t] += sh[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = sh[0]


def launch_and_sum(kernel_for_threads, n, *args):
    """Launch a grid-stride kernel over n items that ends in ``block_sum_to``; returns the sum
    of its per-block partial sums, a Python float (0.0 when n == 0)."""
    threads = cuda_config.REDUCE_THREADS
    if threads & (threads - 1):
        raise ValueError(f"REDUCE_THREADS must be a power of two, got {threads}")
    if n == 0:
        return 0.0
    blocks = cl.blocks_1d(n, threads)
    partial = cl.empty(blocks, np.float64)
    cl.launch(kernel_for_threads(threads), blocks, threads, *args, partial)
    return float(np.sum(partial.copy_to_host()))


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
    threads = cuda_config.REDUCE_THREADS
    if threads & (threads - 1):
        raise ValueError(f"REDUCE_THREADS must be a power of two, got {threads}")
    blocks = [cl.blocks_1d(a.size, threads) if a.size else 0 for a in arrays]
    partial = cl.empty(max(1, sum(blocks)), np.float64)
    start = 0
    for a, count in zip(arrays, blocks):
        if count:
            cl.launch(_sum_squares_kernel(threads), count, threads, cl.flat(a),
                      partial[start:start + count])
        start += count
    return float(np.sum(partial.copy_to_host()[:start]))
