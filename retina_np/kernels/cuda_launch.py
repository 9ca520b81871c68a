"""Allocation and launch helpers shared by the ``cuda_*.py`` kernel modules.

Every device allocation, host-to-device copy and kernel launch of the CUDA backend goes
through the three functions here, so that a test can watch or replace them in one place (the
PTX check in ``tests/cuda/test_ptx.py`` compiles each launched kernel for a real GPU instead of
running it). Call them as ``cuda_launch.empty(...)``, never imported by name, for the same
reason.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from retina_np.kernels import cuda_config


def empty(shape, dtype):
    """A new, uninitialised device array."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def to_device(a):
    """A device copy of a host array (made C-contiguous first)."""
    return cuda.to_device(np.ascontiguousarray(a))


def launch(kernel, grid, block, *args) -> None:
    """kernel[grid, block](*args)."""
    kernel[grid, block](*args)


def blocks_1d(n: int, threads: int | None = None) -> int:
    """Blocks for a grid-stride loop over n items: enough to cover n, at most MAX_BLOCKS_1D."""
    threads = cuda_config.THREADS_1D if threads is None else threads
    return max(1, min(cuda_config.MAX_BLOCKS_1D, math.ceil(n / threads)))


def launch_1d(kernel, n: int, *args) -> None:
    """Launch a grid-stride kernel over n items (nothing to do for n == 0)."""
    if n > 0:
        launch(kernel, blocks_1d(n), cuda_config.THREADS_1D, *args)


def flat(a):
    """A 1-D view of a C-contiguous device array."""
    return a.reshape(a.size)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
