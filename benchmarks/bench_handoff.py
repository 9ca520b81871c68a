"""What handing a piece of work to the other core costs on this machine.

    python benchmarks/bench_handoff.py
    python benchmarks/bench_handoff.py --calls 5000

Every way the CPU kernels share work between cores starts and ends with a hand-over: the
step's tasks side by side (``kernels/threads.py``: a worker thread of a pool), a Numba
``prange`` loop (its OpenMP or workqueue threads) and a multi-threaded GEMM (OpenBLAS's own
threads). This times the hand-over alone, each with nothing to do, as the median of
``--calls`` back-to-back calls in microseconds:

* ``threads.side_by_side`` of two empty tasks (what the training step's schedule uses);
* a Numba ``prange`` over two threads with an empty body;
* a round trip through two ``queue.SimpleQueue`` between two Python threads (the bare
  wake-up a thread pool is built on);

once with every thread of the process on one CPU, where a hand-over is a switch between
threads on the same core, and once with the calling thread on one CPU and every other thread
(the pools' workers) on another, where every hand-over wakes the other core (left to
themselves, the threads land either way, call by call). The difference is what waking the
other core costs; on a virtual machine whose idle virtual CPUs halt it can be tens of
microseconds, which a kernel of a few hundred microseconds cannot win back by running on two
cores (why the small layers of the shapes preset run on one thread:
``options.serial_max_elements``).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import retina_np` does, before numpy
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def median_us(fn, calls: int) -> float:
    """The median time of ``fn()`` over ``calls`` back-to-back calls, in microseconds."""
    from bench_inference import _timed_calls  # this folder's timing loop

    times = sorted(_timed_calls(fn, 1, calls))
    return 1e6 * times[len(times) // 2]


def pin(caller, others) -> None:
    """This thread on the CPUs ``caller``, every other thread of the process (the pools'
    workers) on ``others``: Linux sets the affinity of one thread at a time."""
    me = threading.get_native_id()
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            os.sched_setaffinity(tid, caller if tid == me else others)
        except ProcessLookupError:  # a thread that has ended since the listing
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("needs os.sched_setaffinity (Linux) to place the threads")

    import numba
    import numpy as np
    from numba import njit, prange

    from retina_np.kernels import threads

    @njit(parallel=True, nogil=True)
    def empty_prange(a):
        for i in prange(a.shape[0]):
            a[i] += 1.0

    def nothing():
        return None

    slots = np.zeros(2)
    requests, replies = queue.SimpleQueue(), queue.SimpleQueue()

    def echo():  # the other thread of the round trip
        while (fn := requests.get()) is not None:
            replies.put(fn())

    threading.Thread(target=echo, daemon=True).start()

    def round_trip():
        requests.put(nothing)
        replies.get()

    ways = {
        "threads.side_by_side, two empty tasks": lambda: threads.side_by_side(nothing, nothing),
        "Numba prange over 2 threads, empty body": lambda: empty_prange(slots),
        "SimpleQueue round trip between two threads": round_trip,
    }
    for fn in ways.values():  # compile, and start every pool, before any thread is pinned
        fn()
    cores = sorted(os.sched_getaffinity(0))
    print(f"{len(cores)} CPUs, Numba's {numba.threading_layer()} threading layer, "
          f"{numba.get_num_threads()} threads; median of {args.calls} calls, microseconds")
    if len(cores) < 2:
        print("one CPU: nothing to hand over to")
        return
    columns = {"same CPU": (cores[:1], cores[:1]), "across CPUs": (cores[:1], cores[1:2])}
    table = {}
    for label, (caller, others) in columns.items():
        pin(caller, others)
        for way, fn in ways.items():
            table[way, label] = median_us(fn, args.calls)
    pin(cores, cores)
    print(f"{'':45s} " + " ".join(f"{label:>12s}" for label in columns))
    for way in ways:
        print(f"{way:45s} " + " ".join(f"{table[way, label]:12.1f}" for label in columns))
    requests.put(None)


if __name__ == "__main__":
    main()
