"""Independent pieces of CPU work run side by side, each on its own share of the cores.

Each GEMM and each ``prange`` loop splits its work over every core. In RetinaNet's heads
that is a poor fit: the 64-channel products on the small pyramid levels and the loops
around them are short, so the cores spend much of a step waking each other up and waiting
at the end of each call. The classification and box subnets share no data, so they can
run at the same time instead, each on its own core with one-thread GEMMs and loops:
``side_by_side(lambda: cls(levels), lambda: box(levels))``; and the backbone's backward runs
beside the queue of weight gradients (RetinaNet.backward). In the shapes preset's training
step on 2 cores that made the step clearly faster (docs/performance-history.md, "Kernel notes").

The BLAS thread count is process-wide, so it is lowered while the tasks run and set back
afterwards (through threadpoolctl); Numba's is per thread (``numba.set_num_threads``). The
kernels release the GIL (``nogil=True`` in ``cpu/``), so the threads run at once.
Results are the same numbers either way, up to the rounding of the weight-gradient GEMMs,
whose sums OpenBLAS splits differently with a different number of threads.

The tasks run one after another instead when that cannot help or is not safe: wide
convolutions (``options.side_by_side_max_channels``); one core;
a call from inside a task (its share is already one core); Numba's ``workqueue`` threading
layer, which must not be entered from two threads at once; no BLAS library that
threadpoolctl finds; or ``kernels.options(side_by_side=False)`` (for comparisons).

``budget(elements, macs)`` is the other half: how many threads one kernel call gets. Outside a
task, small kernels run on one thread, where the wake-up of a second one costs more than it
saves (the backbone's forward from its second stage on, in the shapes preset); the count it
yields is what the convolutions pass to their plan (``kernels/cpu/plan.py``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

from retina_np.kernels.tunables import current as _options

# Numba's threading layers that may be entered from several threads at once.
THREAD_SAFE_LAYERS = ("omp", "tbb")


class _Inside(threading.local):
    task = False  # True in a thread that is running a task (a class default: a fast lookup)


_inside = _Inside()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_blas = None  # threadpoolctl's controllers of the BLAS libraries (None: not looked up yet)
_blas_modules = 0  # len(sys.modules) when they were looked up


def side_by_side(*tasks, channels=0):
    """Call every task (a function of no arguments) and return their results, in order.

    With more than one core they run at the same time, the calling thread running the
    first; each gets an equal share of the cores. An exception in a task is raised once
    every task has finished (the first one, in task order). channels: the width of the
    tasks' convolutions; above ``options.side_by_side_max_channels`` they run one by one.
    """
    threads = _threads_per_task(len(tasks), channels)
    if threads is None:
        return [task() for task in tasks]
    with _blas_threads(threads):
        return _together([(_run, task, threads) for task in tasks])


def over_channels(kernel, count, threads):
    """``kernel(lo, hi)`` for the channels lo:hi of ``range(count)``, split into ``threads``
    consecutive ranges that run at the same time, the calling thread taking the first. The
    kernel must release the GIL (``nogil=True``) and write each channel's results only: the
    ranges never touch each other's. A serial Numba loop shared this way needs no second,
    parallel compilation of itself (Winograd's transforms, ``cpu/winograd.py``)."""
    parts = max(1, min(threads, count))
    if parts == 1:
        kernel(0, count)
        return
    bounds = [count * k // parts for k in range(parts + 1)]
    _together([(kernel, lo, hi) for lo, hi in zip(bounds, bounds[1:])])


def over_terms(product, count, threads):
    """``product(lo, hi)`` for the terms lo:hi of a stack of ``count`` matrix products (numpy's
    ``matmul`` of stacked matrices, one GEMM per term), split as ``over_channels``, with the
    BLAS library on one thread while they run. Winograd's 36 GEMMs are small ones (64x64 by
    64x1024, say), which OpenBLAS splits poorly over cores: on 2 cores the 36 of a ResNet-50
    layer took 2.7 ms as one stacked call and 1.6 ms as two runs of 18 side by side
    (docs/performance-history.md, "Winograd's products side by side")."""
    if min(threads, count) < 2:
        product(0, count)
        return
    with _blas_threads(1):
        over_channels(product, count, threads)


class budget:
    """The threads for one kernel call whose input has ``elements`` values (and, for a
    convolution, ``macs`` multiply-adds), set for a ``with`` block, which gets the count. One
    thread (Numba's and BLAS's) below ``options.serial_max_elements`` and ``serial_max_macs``,
    called outside a task; else the thread count in force (a task's share inside a task). The
    numbers are the same either way, but for the GEMMs' rounding, which OpenBLAS splits by
    its thread count (docs/performance-history.md, "Kernel options").

    (A class rather than a generator: it is entered around every kernel call.)"""

    __slots__ = ("threads", "_serial", "_blas", "_blas_before", "_numba_before")

    def __init__(self, elements: int, macs: int = 0):
        opts = _options()
        inside = _inside.task
        self._serial = not (elements >= opts.serial_max_elements or macs >= opts.serial_max_macs
                            or inside)
        self.threads = numba.get_num_threads()
        if self.threads < 2:
            self._serial = False
        elif self._serial:
            self.threads = 1

    def __enter__(self) -> int:
        if self._serial:
            self._blas = _blas_libraries()
            self._blas_before = [lib.num_threads for lib in self._blas]
            for lib in self._blas:
                lib.set_num_threads(1)
            self._numba_before = numba.get_num_threads()
            numba.set_num_threads(1)
            _inside.task = True
        return self.threads

    def __exit__(self, *exc) -> None:
        if self._serial:
            _inside.task = False
            numba.set_num_threads(self._numba_before)
            for lib, n in zip(self._blas, self._blas_before):
                lib.set_num_threads(n)


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


@contextlib.contextmanager
def _numba_threads(threads):
    """Numba's thread count (this thread's own setting) lowered inside the block, which runs
    as a task (``budget`` and ``side_by_side`` leave the count alone inside one)."""
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    _inside.task = True
    try:
        yield
    finally:
        _inside.task = False
        numba.set_num_threads(before)


def _run(task, threads):
    """A task, on ``threads`` of Numba's threads."""
    with _numba_threads(threads):
        return task()


def _together(calls):
    """Each call (fn, *args) at the same time, the first on the calling thread, the others on
    the worker pool -> their results, in order; once all have finished, the first exception
    (in call order) is raised."""
    others = [_worker_pool(len(calls) - 1).submit(*call) for call in calls[1:]]
    outcomes = [_outcome(*calls[0])] + [_outcome(f.result) for f in others]
    for _, error in outcomes:
        if error is not None:
            raise error
    return [value for value, _ in outcomes]


def _outcome(fn, *args):
    """(value, None) or (None, the exception): every task is waited for before raising."""
    try:
        return fn(*args), None
    except BaseException as error:  # noqa: BLE001 - re-raised by _together
        return None, error


def _threads_per_task(n_tasks: int, channels: int = 0) -> int | None:
    """Each task's share of the cores, or None where the tasks should run one by one."""
    cores, opts = numba.get_num_threads(), _options()
    if (not opts.side_by_side or n_tasks < 2 or cores < 2
            or channels > opts.side_by_side_max_channels or _inside.task):
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
