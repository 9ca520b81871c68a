"""Data-parallel training over MPI: N processes ("ranks") compute one step of one process.

Every rank holds the whole model. A training step's global batch (what one process would
draw at that step: the loader decides it from the seed and the step alone) is cut into N
equal shares, one per rank; each rank runs forward and backward on its share, and then

* the gradients are averaged over the ranks, one allreduce of one flat buffer
  (``average_gradients``): every rank then holds the gradient of the whole batch's loss,
  and the same update keeps the ranks' parameters identical, step after step;
* batch norm in training mode is synchronised (``sync_batch_norm``): its statistics are the
  whole batch's, so that N ranks compute what one process computes on the whole batch.

``mpiexec -n 2 retina-np train ...`` (or ``retina-np train --workers 2 ...``, which starts
mpiexec itself) runs it; rank 0 alone writes the log, the progress and the checkpoints.
mpi4py is imported only when the process was started by an MPI launcher, so a lone process
(with or without mpi4py installed) runs exactly as before. The design, and how it differs
from PyTorch DDP, is in docs/architecture.md ("Data parallelism"); the speed in
docs/performance-history.md ("Data parallelism").
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retina_np import backend

# Set in every process an MPI launcher starts: MPICH's hydra (PMI_*), Open MPI (OMPI_*),
# PMIx launchers (PMIX_RANK) and Slurm's srun with PMI.
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
# After Ctrl-C a rank other than 0 waits this long for rank 0 to write its checkpoint (and
# end the job) before it ends the job itself.
INTERRUPT_GRACE_SECONDS = 30.0
# How long a rank that ends the job waits for mpiexec to pass on what it printed.
ABORT_OUTPUT_SECONDS = 0.5
# Losses that count over the batch instead of averaging over its images.
_SUMMED_LOSSES = ("num_foreground",)


def launched_by_mpi() -> bool:
    """True in a process that mpiexec (or srun) started."""
    return any(v in os.environ for v in _LAUNCHER_VARIABLES)


class Communicator:
    """The ranks of a job and the few collective operations training needs.

    ``Communicator()`` is a lone process (rank 0 of 1, every operation a no-op);
    ``Communicator(MPI.COMM_WORLD)`` the ranks mpiexec started.
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    def allreduce_sum(self, a: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``a`` (a numpy array) over every rank, on every rank."""
        if self.size == 1:
            return a
        from mpi4py import MPI

        a = np.ascontiguousarray(a)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return a

    def allreduce_max(self, values) -> list[int]:
        """The element-wise maximum of a few integers over every rank."""
        if self.size == 1:
            return list(values)
        from mpi4py import MPI

        a = np.array(values, np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.MAX)
        return [int(v) for v in a]

    def broadcast(self, value):
        """Rank 0's ``value`` (a small Python object), on every rank."""
        return value if self.size == 1 else self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (a rank that waits in a collective would hang)."""
        if self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            # mpiexec passes each rank's output on through a pipe; the abort ends the ranks
            # and that pipe at once, and the last lines were sometimes lost (1 job in 10)
            time.sleep(ABORT_OUTPUT_SECONDS)
            self.comm.Abort(code)
        sys.exit(code)


_world = None


def world() -> Communicator:
    """The job this process belongs to: every rank mpiexec started, or this process alone."""
    global _world
    if _world is None:
        if launched_by_mpi():
            from mpi4py import MPI  # an optional dependency: pip install "retina_np[mpi]"

            _world = Communicator(MPI.COMM_WORLD)
        else:
            _world = Communicator()
    return _world


def average_gradients(params, comm: Communicator) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in place.

    One allreduce of all gradients in one flat buffer (one message instead of one per
    parameter: the shapes preset's 120 tensors would each pay the latency). Gradients on a
    GPU go through host memory (``docs/architecture.md``: host-staged, not CUDA-aware MPI).
    """
    if comm.size == 1:
        return
    grads = [p.grad for p in params]
    flat = np.concatenate([backend.to_numpy(g).reshape(-1) for g in grads])  # (P,)
    flat = comm.allreduce_sum(flat)
    flat /= comm.size
    offset = 0
    for g in grads:
        part = flat[offset:offset + g.size].reshape(g.shape)
        offset += g.size
        if backend.is_device_array(g):
            g.copy_to_device(part)
        else:
            g[...] = part


def average_losses(losses: dict, comm: Communicator) -> dict:
    """The step's losses over the whole batch: the mean of the ranks' (their shares are the
    same size), counts summed. Every rank then sees the same numbers, so that all of them
    stop on a non-finite loss together."""
    if comm.size == 1:
        return losses
    keys = [k for k, v in losses.items() if isinstance(v, float)]
    total = comm.allreduce_sum(np.array([losses[k] for k in keys], np.float64))
    return {**losses, **{k: float(v if k in _SUMMED_LOSSES else v / comm.size)
                         for k, v in zip(keys, total)}}


def pad_to_common_size(images, comm: Communicator):
    """Images (n, 3, H, W) zero-padded at the bottom and right to the largest H and W of
    every rank's share, as one process pads the whole batch (batch norm's statistics and the
    anchors see the padding)."""
    if comm.size == 1:
        return images
    H, W = comm.allreduce_max(images.shape[-2:])
    if (H, W) == tuple(images.shape[-2:]):
        return images
    out = np.zeros(images.shape[:-2] + (H, W), images.dtype)
    out[..., : images.shape[-2], : images.shape[-1]] = images
    return out


def sync_batch_norm(model, comm: Communicator) -> int:
    """Make every BatchNorm2d of ``model`` use the whole batch's statistics in training (its
    ``allreduce``); returns how many it changed. Nothing changes for a lone process."""
    from retina_np.nn import BatchNorm2d

    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in norms:
        m.allreduce = comm.allreduce_sum if comm.size > 1 else None
    return len(norms) if comm.size > 1 else 0


class CtrlC:
    """Ctrl-C in a job of several ranks, acted on by every rank at once between two steps.

    mpiexec passes Ctrl-C on to every rank, but a rank waiting inside an allreduce cannot see
    it until the allreduce returns, which it never does if the other ranks have stopped: so
    the first Ctrl-C is only noted, and ``requested()`` (called by every rank after each step:
    one small allreduce) says whether any rank got one. A second Ctrl-C interrupts at once.
    A lone process, or a thread other than the main one, keeps Python's own Ctrl-C.
    """

    def __init__(self, comm: Communicator):
        self.comm, self.pressed, self._before = comm, False, None

    def __enter__(self):
        if self.comm.size > 1 and threading.current_thread() is threading.main_thread():
            self._before = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, exc_type, *exc):
        if self._before is not None:
            # Stopping after Ctrl-C: a late one (mpiexec reaches the ranks one by one) must
            # not cut rank 0's checkpoint or the others' wait short; the job ends anyway.
            stopping = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
            signal.signal(signal.SIGINT, signal.SIG_IGN if stopping else self._before)
        return False

    def _note(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def requested(self) -> bool:
        """True on every rank if any rank got Ctrl-C (a collective call)."""
        if self.comm.size == 1:
            return False
        return bool(self.comm.allreduce_max([int(self.pressed)])[0])


@contextmanager
def abort_on_error(comm: Communicator):
    """Any exception in a rank of a job of several ends the whole job at once, with the
    traceback and a line naming the rank (the other ranks would otherwise wait in their next
    collective forever). A lone process is left alone."""
    try:
        yield
    except BaseException as exc:
        if comm.size == 1 or isinstance(exc, SystemExit) and not exc.code:
            raise
        interrupted = isinstance(exc, KeyboardInterrupt)
        if not interrupted:
            traceback.print_exc()
        what = "interrupted" if interrupted else "failed"
        print(f"retina-np: rank {comm.rank} of {comm.size} {what}: "
              f"{type(exc).__name__}: {exc}; ending every rank", file=sys.stderr, flush=True)
        if interrupted and comm.rank != 0:
            # after Ctrl-C (CtrlC) every rank stops at the same step: rank 0 writes last.npz
            # and then ends the job itself; this wait only ends a job where it cannot
            time.sleep(INTERRUPT_GRACE_SECONDS)
        comm.abort(130 if interrupted else 1)


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel of the ``mpi`` extra puts it in the
    environment's bin/), else the first on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: pip install 'retina_np[mpi]' (it brings MPICH)")
    return found


def launch_command(workers: int, argv: list[str]) -> list[str]:
    """The command that runs ``python -m retina_np.cli ARGV`` on ``workers`` ranks of this
    machine, each with its share of the cores (``runtime.threads_per_rank``)."""
    return [mpiexec(), "-n", str(workers), sys.executable, "-m", "retina_np.cli", *argv]
