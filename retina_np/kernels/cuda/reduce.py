"""CUDA reductions, a CUDA-only step that the kernels share: per-channel sums (``conv.py``'s
bias gradient, ``norm.py``'s batch and group statistics and backwards) and whole-array sums to
one number (``optim.py``'s ``sum_squares``, the losses of ``loss.py``). The CPU kernels write
these sums as plain loops inside each kernel.

Each is a sum over (n, h, w) for every channel c of an (N, C, H, W) array: M = N*H*W values
that lie in N runs of H*W contiguous elements. The reduction runs in two deterministic passes:

1. a grid of (C, S) blocks: block (c, s) sums the s-th of S equal chunks of channel c, each
   thread a strided part of it in a float64 register, then the block adds its threads'
   values with a tree in shared memory and writes one partial sum;
2. one thread per channel adds its S partial sums in order.

S is chosen so that C*S is about ``cuda_reduce_target_blocks`` (many channels: one chunk each; few
channels with large maps: many), but never so many that a thread gets fewer than
``cuda_reduce_min_per_thread`` values. No atomics: the same input gives the same bits every run.
Sums are accumulated in float64, as the CPU kernels do.

A sum to one Python number (a loss, a squared norm) is one grid-stride pass: each thread adds
its elements in a float64 register, each block adds its threads' values with the same shared
memory tree and writes one partial sum, and the host adds the partial sums (at most
``cuda_max_blocks_1d``) in order.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from retina_np.kernels.cuda import config
from retina_np.kernels.cuda import launch as cl

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
    threads, min_per_thread, target_blocks = config.reduce_config()
    most = max(1, M // (threads * min_per_thread))
    return max(1, min(most, math.ceil(target_blocks / C)))


def channel_sums(a, b, centre, scale, mode, divisor=1.0):
    """(sum0 / divisor, sum1 / divisor) per channel of a (N, C, H, W), both (C,) float64.

    b, centre and scale are read by SUM_AND_DOT_XHAT (centre also by SUM_SQUARED_DEVIATION);
    a mode that does not read one takes any array in its place (``stand_in``).
    """
    N, C, H, W = a.shape
    M = N * H * W
    threads, _, _ = config.reduce_config()
    S = _chunks(C, M)
    chunk = cl.ceil_div(M, S)
    out0, out1 = cl.empty(C, np.float64), cl.empty(C, np.float64)
    if M == 0:  # nothing to launch over: zero partial sums, from the host
        partials = cl.to_device(np.zeros((2, C, S), np.float64))
    else:
        partials = cl.empty((2, C, S), np.float64)
        cl.launch(_partials_kernel(threads), (C, S), threads, cl.flat(a), cl.flat(b), centre,
                  scale, mode, C, H * W, chunk, partials)
    cl.launch_1d(_finish_kernel, C, partials, float(divisor), out0, out1)
    return out0, out1


def stand_in(a):
    """A device array to pass for the per-channel arguments that a mode does not read."""
    return cl.flat(a)


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
    threads, _, _ = config.reduce_config()
    if n == 0:
        return 0.0
    blocks = cl.blocks_1d(n, threads)
    partial = cl.empty(blocks, np.float64)
    cl.launch(kernel_for_threads(threads), blocks, threads, *args, partial)
    return float(np.sum(partial.copy_to_host()))


