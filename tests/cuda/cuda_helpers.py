"""Helpers of the CUDA tests (a plain module: tests/cuda has no __init__.py on purpose, since
a package named ``cuda`` would hide NVIDIA's ``cuda`` namespace package, cuda.bindings, that
numba-cuda imports on a real GPU)."""

import numpy as np


def to_dev(a):
    """A device copy of a host array."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host()


def assert_close(actual, expected, dtype=np.float32, scale=1.0):
    """Elementwise agreement at the dtype's precision (sums of a few dozen terms)."""
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
