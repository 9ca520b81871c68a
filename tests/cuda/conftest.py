"""The CUDA kernels against their CPU twins, on the CUDA simulator or a real GPU.

Run as its own pytest process, with the simulator chosen before numba is imported:

    NUMBA_ENABLE_CUDASIM=1 pytest -q tests/cuda

The simulator runs every GPU thread as a Python thread, so the inputs are tiny and the launch
settings (the ``cuda_*`` fields of ``kernels.options``, explained in ``kernels/cuda/config.py``)
are shrunk (fixture ``small_launches``, used by every test here): tiles of a few elements and
blocks of a few threads, so that even tiny inputs need several blocks, ragged edge tiles,
grid-stride loops and multi-block reductions.
"""

import os
import sys

import pytest

ON_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu_available() -> bool:
    if ON_SIMULATOR:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - depends on the machine
        return False


SKIP_REASON = None
if not ON_SIMULATOR and not _gpu_available():
    SKIP_REASON = (
        "tests/cuda need the CUDA simulator or a GPU: run "
        "'NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda' (numba.cuda found no usable GPU)"
    )


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.cudasim)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session", autouse=True)
def _fast_thread_switching():
    """The simulator's threads wait on each other at every syncthreads and thread start;
    Python's default 5 ms GIL switch interval makes that 3-10x slower than it needs to be."""
    if not ON_SIMULATOR:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


# Tiny launch settings: the cuda_* fields of kernels.options (kernels/cuda/config.py).
SMALL_LAUNCHES = {
    "cuda_threads_1d": 8,
    "cuda_max_blocks_1d": 3,  # 24 threads in all: arrays of more elements loop (grid-stride)
    "cuda_reduce_threads": 4,
    "cuda_reduce_min_per_thread": 1,
    "cuda_reduce_target_blocks": 16,  # several chunks (blocks) per channel
    "cuda_gemm_tile_m": 8,
    "cuda_gemm_tile_n": 8,
    "cuda_gemm_tile_k": 4,
    "cuda_gemm_thread_m": 2,
    "cuda_gemm_thread_n": 2,
    "cuda_split_k_min": 1 << 30,  # no split-K unless a test asks for it
    "cuda_split_k_target_blocks": 1,
    "cuda_nms_tile": 8,
    "cuda_iou_tile": 4,
}


@pytest.fixture(autouse=True)
def small_launches():
    """Every launch setting shrunk for the test (a test changes more with ``options(...)``
    inside); yields the options in force."""
    from retina_np.kernels import options

    with options(**SMALL_LAUNCHES) as shrunk:
        yield shrunk


@pytest.fixture(scope="session", autouse=True)
def _atomic_shared_allocation():
    """The simulator gives each block's threads one shared array per source line, but its
    lookup (``get``, then create and store) is not locked: two threads that both miss create
    two arrays, and the block then computes with private "shared" memory. The short switch
    interval above makes that likely; serialise the lookup so every thread gets the same array.
    """
    if not ON_SIMULATOR:
        yield
        return
    import threading

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def locked_array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory: no lookup to race
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # the simulator's key
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = locked_array
    yield
    kernelapi.FakeCUDAShared.array = original
