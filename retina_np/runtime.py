"""Process-wide settings that make the kernels fast, in one place, applied once when
``retina_np`` is imported (``retina_np/__init__.py`` calls ``configure``). A setting the user
made in the environment always wins. docs/performance.md ("Threads") says what they are for;
the measurements behind each are in docs/performance-history.md ("Threads take turns" under
"How the convolution is done", "torch imported before retina_np", "Keep freed memory" under
"Model", and "Data parallelism").

* ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS's idle threads spin for about 0.1 s after every GEMM
  and take a core from the Numba loop that follows; OpenBLAS reads this only when numpy loads
  it, so it is set before numpy is imported where retina_np comes first (the ``retina-np``
  command). A script or notebook that imported numpy first has an OpenBLAS that already read
  it (every training step 1.6x slower): its loaded OpenBLAS libraries are asked to read the
  environment again and to restart their threads with it (``retime_loaded_openblas``).
* ``OMP_WAIT_POLICY=PASSIVE``: GNU OpenMP's idle workers (Numba's ``omp`` threading layer)
  spin by default and steal the cores from the BLAS threads; asked to sleep instead, before
  Numba starts its pool.
* glibc's malloc keeps freed memory (``keep_freed_memory``): every training step allocates
  and frees the same large arrays, and would page-fault on each of them again.
* An OpenMP runtime that started before retina_np (``import torch`` first, as a notebook that
  compares with torchvision does) keeps its idle threads busy-waiting: the wait policy above
  comes too late, and Numba's OpenMP pool would share those spinning threads (every kernel
  about 9x slower on 2 cores). Then Numba's own ``workqueue`` threading layer is chosen
  instead (``openmp_started_early``); the heads' subnets then run one after the other, since
  that layer must not be entered from two threads at once (``kernels/threads.py``).
* Under mpiexec, the ranks on one machine share its cores: each rank's Numba, OpenMP and
  BLAS pools get ``threads_per_rank()`` threads (2 ranks on 2 cores: one each), so that the
  ranks' thread pools do not fight over the cores (``retina_np/distributed.py``).
"""

from __future__ import annotations

import ctypes
import os
import sys

_configured = False


def configure() -> None:
    """Apply the settings above (once per process; later calls do nothing)."""
    global _configured
    if _configured:
        return
    _configured = True
    early = openmp_started_early()
    per_rank = threads_per_rank()
    if per_rank is not None:
        for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(per_rank))
        _limit_loaded_pools(per_rank)
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
        retime_loaded_openblas()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if early and "NUMBA_THREADING_LAYER" not in os.environ:
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"  # read when numba is imported ...
        import numba

        numba.config.THREADING_LAYER = "workqueue"  # ... or here, if it already was
    keep_freed_memory()


def retime_loaded_openblas() -> int:
    """Make the OpenBLAS libraries already loaded (numpy imported before retina_np) take
    ``OPENBLAS_THREAD_TIMEOUT`` from the environment as it is now: each re-reads its settings
    (``openblas_read_env``) and stops its threads (``blas_thread_shutdown_``), which the next
    GEMM starts again with the new timeout. Returns how many libraries were changed; a BLAS
    that is not OpenBLAS, or lacks these functions, is left alone. Called at import, before
    any GEMM of retina_np runs."""
    if "numpy" not in sys.modules:  # nothing loaded yet: the environment is read at load
        return 0
    from threadpoolctl import threadpool_info

    changed = 0
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        read_env()
        shutdown()
        changed += 1
    return changed


def openmp_started_early() -> bool:
    """True if an OpenMP runtime (GNU, Intel or LLVM) is already loaded into this process and
    no wait policy was set for it: its idle threads busy-wait."""
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    try:
        with open("/proc/self/maps") as maps:
            loaded = maps.read()
    except OSError:  # not Linux: nothing to detect this way
        return False
    return any(name in loaded for name in ("libgomp", "libiomp5", "libomp"))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process for the next allocation: blocks
    up to 32 MB come from the heap, and up to 1 GB of free heap is kept. Returns False where
    the C library is not glibc (nothing is changed there)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def _limit_loaded_pools(threads: int) -> None:
    """The thread count for pools that started before ``configure``: a script that imported
    numpy before retina_np has a BLAS that read its thread count already (every core: 2 ranks
    on 2 cores then ran 7x slower, each BLAS call fighting the other rank for the cores), and
    Numba reads NUMBA_NUM_THREADS when it is imported."""
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")  # process-wide, from now on
    if "numba" in sys.modules:
        import numba

        numba.config.NUMBA_NUM_THREADS = min(numba.config.NUMBA_NUM_THREADS, threads)


def threads_per_rank() -> int | None:
    """The cores of this machine divided among the MPI ranks that run on it (at least 1), or
    None outside a job of several ranks on this machine. MPICH's hydra tells each rank how
    many share its machine in MPI_LOCALNRANKS, Open MPI in OMPI_COMM_WORLD_LOCAL_SIZE."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if not local or int(local) < 2:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // int(local))
