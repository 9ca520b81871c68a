"""Independent pieces of CPU work run side by side, each on its own share of the cores.

Each GEMM and each ``prange`` loop splits its work over every core. In RetinaNet's heads
that is a poor fit: the 64-channel products on the small pyramid levels and the loops
around them are short, so the cores spend much of a step waking each other up and waiting
at the end of each call. The classification and box subnets share no data, so they can
run at the same time instead, each on its own core with one-thread GEMMs and loops:
``side_by_side(lambda: cls(levels), lambda: box(levels))``; and the backbone's backward runs
beside the queue of weight gradients (RetinaNet.backward). In the shapes preset's training
step on 2 cores the subnets side by side made the step 135 -> 118 ms (docs/performance.md).

The BLAS thread count is process-wide, so it is lowered while the tasks run and set back
afterwards (through threadpoolctl); Numba's is per thread (``numba.set_num_threads``). The
kernels release the GIL (``nogil=True`` in ``cpu.py``), so the threads run at once.
Results are the same numbers either way, up to the rounding of the weight-gradient GEMMs,
whose sums OpenBLAS splits differently with a different number of threads.

The tasks run one after another instead when that cannot help or is not safe: wide
convolutions (see SIDE_BY_SIDE_MAX_CHANNELS); one core;
a call from inside a task (its share is already one core); Numba's ``workqueue`` threading
layer, which must not be entered from two threads at once; no BLAS library that
threadpoolctl finds; or ``ENABLED = False`` (for comparisons).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

ENABLED = True

# Above this width the products are large enough for OpenBLAS to keep every core busy on its
# own: RetinaNet's heads, timed forward + backward one by one and side by side on 2 cores
# (ad-hoc script), ran 17-32% faster side by side at 64 channels (batches of 8 to 16 at 128
# to 512 pixels), and between 3% faster and 9% slower at ResNet-50's 256 (inference at 256
# to 800 pixels).
SIDE_BY_SIDE_MAX_CHANNELS = 128

# Numba's threading layers that may be entered from several threads at once.
THREAD_SAFE_LAYERS = ("omp", "tbb")

# Below this many elements of its first argument a kernel runs on one thread (Numba's and
# BLAS's), called from outside a task (``serial_when_small``). The backbone's forward is the
# one part of a training step that calls the kernels with every core: from the second stage on
# (8 x 16 x 32 x 32 = 131,072 values at the shapes preset) the two threads' launch and their
# wait at the end of every loop cost more than they save (batch norm 0.24 ms on two threads
# against 0.09 on one, the 1x1 downsampling convolutions 0.5 against 0.23; ad-hoc timings of
# the layers in a step), and far more when the host leaves one core waiting: in alternating
# steps the backbone's forward ran 33 ms against 46-55 ms in such a spell, and 22.5 against
# 21.8 in a quiet one (``benchmarks/bench_alternating.py serial``, docs/performance.md).
# 0: every kernel on every core (comparisons).
SERIAL_MAX_ELEMENTS = 1 << 18
# A convolution with a small input can still be a large product: ResNet-50's last 3x3
# convolutions at 512x512 (512 channels at 16x16, 131,072 input values) do 604M multiply-adds.
# Above this many it keeps every core (the shapes preset's largest below the element bound,
# the FPN's P3 output conv, does 75M).
SERIAL_MAX_MACS = 1 << 27

_inside = threading.local()  # .task is True in a thread that is running a task
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_blas = None  # threadpoolctl's controllers of the BLAS libraries (None: not looked up yet)
_blas_modules = 0  # len(sys.modules) when they were looked up


def side_by_side(*tasks, channels=0):
    """Call every task (a function of no arguments) and return their results, in order.

    With more than one core they run at the same time, the calling thread running the
    first; each gets an equal share of the cores. An exception in a task is raised once
    every task has finished (the first one, in task order). channels: the width of the
    tasks' convolutions; above SIDE_BY_SIDE_MAX_CHANNELS they run one by one.
    """
    threads = _threads_per_task(len(tasks), channels)
    if threads is None:
        return [task() for task in tasks]
    with _blas_threads(threads):
        others = [_worker_pool(len(tasks) - 1).submit(_run, task, threads)
                  for task in tasks[1:]]
        first = _outcome(_run, tasks[0], threads)
        outcomes = [first] + [_outcome(f.result) for f in others]
    for _, error in outcomes:
        if error is not None:
            raise error
    return [value for value, _ in outcomes]


def serial_when_small(kernel=None, *, macs=None):
    """``kernel`` (whose first argument is an array), run on one thread when that array has
    fewer than SERIAL_MAX_ELEMENTS elements, and (for a convolution, ``macs(*args)`` its
    multiply-adds) does fewer than SERIAL_MAX_MACS multiply-adds, and the call comes from
    outside a task (inside one the share is already set). The results are the same numbers,
    but for the rounding of the GEMMs, whose sums OpenBLAS splits by its thread count. Used
    as ``@serial_when_small`` or ``@serial_when_small(macs=...)``."""
    if kernel is None:
        return functools.partial(serial_when_small, macs=macs)

    @functools.wraps(kernel, updated=())
    def run(x, *args, **kwargs):
        if (x.size >= SERIAL_MAX_ELEMENTS or getattr(_inside, "task", False)
                or numba.get_num_threads() < 2
                or (macs is not None and macs(x, *args) >= SERIAL_MAX_MACS)):
            return kernel(x, *args, **kwargs)
        with _blas_threads(1):
            return _run(lambda: kernel(x, *args, **kwargs), 1)

    return run


@contextlib.contextmanager
def _blas_threads(threads):
    """Every loaded BLAS library on ``threads`` threads inside the block, as before after it
    (the count is process-wide)."""
    blas = _blas_libraries()
    before = [lib.num_threads for lib in blas]
    for lib in blas:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(blas, before):
            lib.set_num_threads(n)


def _run(task, threads):
    """A task, with Numba's thread count (this thread's own setting) lowered around it."""
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    _inside.task = True
    try:
        return task()
    finally:
        _inside.task = False
        numba.set_num_threads(before)


def _outcome(fn, *args):
    """(value, None) or (None, the exception): every task is waited for before raising."""
    try:
        return fn(*args), None
    except BaseException as error:  # noqa: BLE001 - re-raised by side_by_side
        return None, error


def _threads_per_task(n_tasks: int, channels: int = 0) -> int | None:
    """Each task's share of the cores, or None where the tasks should run one by one."""
    cores = numba.get_num_threads()
    if (not ENABLED or n_tasks < 2 or cores < 2 or channels > SIDE_BY_SIDE_MAX_CHANNELS
            or getattr(_inside, "task", False)):
        return None
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel loop has run yet, so the layer is not chosen yet
        return None
    if layer not in THREAD_SAFE_LAYERS or not _blas_libraries():
        return None
    return max(1, cores // n_tasks)


def _blas_libraries():
    """threadpoolctl's controllers of the loaded BLAS libraries: numpy's, and scipy's once it
    is loaded too (Numba's own products call it). A BLAS library arrives with a Python
    extension, so they are looked up again whenever a module has been imported since."""
    global _blas, _blas_modules
    if _blas is None or _blas_modules != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        _blas_modules = len(sys.modules)
    return _blas


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """The threads that run the tasks after the first (made once, kept for later calls)."""
    global _pool, _pool_workers
    if _pool_workers < workers:
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="retina_np")
        _pool_workers = workers
    return _pool
