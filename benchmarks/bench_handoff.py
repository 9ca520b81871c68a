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

Two more rows, across CPUs only: the hand-over with nobody asleep, a worker thread that
waits by spinning on a flag inside a Numba function that has released the GIL, and a caller
that posts the work and waits for its end the same way, so that neither thread ever blocks
on the other, nor on the GIL. What it costs is then the flags' trip between the cores'
caches and a few Python calls (with both threads on one CPU it would cost a time slice, so
that column is left out). In the second, the worker says it is done by a store in Python,
holding the GIL, which the caller needs to return: where the caller finds the GIL taken it
waits for it asleep, and its CPU halts like any idle one, so that hand-over costs a
wake-up or not, run by run.
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


def pin(caller, others) -> None:
    """This thread on the CPUs ``caller``, every other thread of the process (the pools'
    workers) on ``others``: Linux sets the affinity of one thread at a time."""
    me = threading.get_native_id()
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            os.sched_setaffinity(tid, caller if tid == me else others)
        except ProcessLookupError:  # a thread that has ended since the listing
            pass


def spin_handover(done_in_python=False):
    """(hand_over, stop, the worker's thread id): ``hand_over()`` runs an empty task on a
    worker thread that spins, and waits for it by spinning; ``stop()`` ends the worker. The
    flags are read and written with atomic loads and stores (a plain load in a loop could be
    read once, before it). done_in_python: the worker says it is done by a store in Python,
    holding the GIL, which the caller then needs to return from its wait."""
    import numpy as np
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def _pointer(context, builder, arrty, array, index):
        return cgutils.get_item_pointer(context, builder, arrty,
                                        context.make_array(arrty)(context, builder, array),
                                        [index])

    @intrinsic
    def load_acquire(typingctx, flags, i):
        def codegen(context, builder, sig, args):
            return builder.load_atomic(_pointer(context, builder, sig.args[0], *args),
                                       "acquire", 8)
        return flags.dtype(flags, i), codegen

    @intrinsic
    def store_release(typingctx, flags, i, value):
        def codegen(context, builder, sig, args):
            builder.store_atomic(args[2], _pointer(context, builder, sig.args[0], *args[:2]),
                                 "release", 8)
            return context.get_dummy_value()
        return types.void(flags, i, flags.dtype), codegen

    @njit(nogil=True)
    def signal_and_wait(flags, mine, theirs, value, wanted):
        """flags[mine] = value, then spin until flags[theirs] >= wanted; False if the flag
        to stop (flags[2]) came first."""
        store_release(flags, mine, value)
        while load_acquire(flags, theirs) < wanted:
            if load_acquire(flags, 2):
                return False
        return True

    flags = np.zeros(3, np.int64)  # posted, done, stop

    def worker():
        n = 1
        while True:  # done with task n - 1, then wait for post n
            if done_in_python:
                flags[1] = n - 1
            if not signal_and_wait(flags, 1, 0, n - 1, n):
                return
            n += 1  # (the empty task)

    thread = threading.Thread(target=worker, daemon=True)
    posted = [0]

    def hand_over():
        posted[0] += 1
        signal_and_wait(flags, 0, 1, posted[0], posted[0])

    def stop():
        flags[2] = 1
        thread.join()

    thread.start()
    return hand_over, stop, thread.native_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("needs os.sched_setaffinity (Linux) to place the threads")

    import numba
    import numpy as np
    from bench_inference import median_us  # this folder's timing loop
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
    spinning = {"spinning worker, nobody waits asleep (nogil)": False,
                "spinning worker, done said holding the GIL": True}
    for way, done_in_python in spinning.items():  # each made now: it spins for its row only
        hand_over, stop, worker = spin_handover(done_in_python)
        os.sched_setaffinity(worker, cores[1:2])
        table[way, "across CPUs"] = median_us(hand_over, args.calls)
        stop()
    pin(cores, cores)
    print(f"{'':45s} " + " ".join(f"{label:>12s}" for label in columns))
    for way in [*ways, *spinning]:
        print(f"{way:45s} " + " ".join(
            f"{table[way, label]:12.1f}" if (way, label) in table else f"{'-':>12s}"
            for label in columns))
    requests.put(None)


if __name__ == "__main__":
    main()
