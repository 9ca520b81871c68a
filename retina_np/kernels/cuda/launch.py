"""Allocation and launch helpers shared by the CUDA kernel modules.

Every device allocation, host-to-device copy and kernel launch of the CUDA backend goes
through ``empty``, ``to_device`` and ``launch`` here, and they hand it to the current
``Target``: numba.cuda's (``NUMBA``) unless a caller swaps in another for a while with
``with target(...)``. The PTX check (``tests/cuda/ptx_check.py``) does that to compile each
launched kernel for a real GPU instead of running it, on host arrays.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import cuda

from retina_np.kernels.cuda import config


class Target(NamedTuple):
    """Where the CUDA backend allocates, copies and launches."""

    empty: Callable  # (shape, dtype) -> a new uninitialised array
    to_device: Callable  # host array -> a device copy
    launch: Callable  # (kernel, grid, block, *args) -> None


def _launch_on_device(kernel, grid, block, *args) -> None:
    kernel[grid, block](*args)


NUMBA = Target(
    empty=lambda shape, dtype: cuda.device_array(shape, dtype=np.dtype(dtype)),
    to_device=lambda a: cuda.to_device(np.ascontiguousarray(a)),
    launch=_launch_on_device,
)
_target = NUMBA


@contextlib.contextmanager
def target(replacement: Target):
    """Send the block's allocations, copies and launches to ``replacement``, then restore."""
    global _target
    before, _target = _target, replacement
    try:
        yield replacement
    finally:
        _target = before


def empty(shape, dtype):
    """A new, uninitialised device array."""
    return _target.empty(shape, dtype)


def to_device(a):
    """A device copy of a host array (made C-contiguous first)."""
    return _target.to_device(a)


def launch(kernel, grid, block, *args) -> None:
    """kernel[grid, block](*args)."""
    _target.launch(kernel, grid, block, *args)


def blocks_1d(n: int, threads: int | None = None) -> int:
    """Blocks for a grid-stride loop over n items: enough to cover n, at most
    ``cuda_max_blocks_1d``."""
    threads_1d, max_blocks = config.grid_1d()
    threads = threads_1d if threads is None else threads
    return max(1, min(max_blocks, math.ceil(n / threads)))


def launch_1d(kernel, n: int, *args) -> None:
    """Launch a grid-stride kernel over n items (nothing to do for n == 0)."""
    if n > 0:
        threads, _ = config.grid_1d()
        launch(kernel, blocks_1d(n, threads), threads, *args)


def flat(a):
    """A 1-D view of a C-contiguous device array."""
    return a.reshape(a.size)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
