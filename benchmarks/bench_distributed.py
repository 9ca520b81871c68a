"""Data-parallel training on this machine: 1 process x 2 threads against 2 MPI ranks x 1 thread,
the shapes preset's training step at the same global batch of 8, in alternating runs.

    python benchmarks/bench_distributed.py                 # 4 runs of each, 20 timed steps
    python benchmarks/bench_distributed.py --runs 2 --steps 10

Each run is this script with ``--worker`` in a fresh process: alone (``runtime`` leaves
numba, OpenMP and BLAS their 2 threads), or under ``mpiexec -n 2`` (each rank gets 1 thread,
``runtime.threads_per_rank``). The two kinds alternate so that both see the machine's slow and
fast spells alike. A worker times steps 3 .. 2+steps (the first compile), and inside them the
gradient allreduce (``distributed.average_gradients``, which includes waiting for the slower
rank) and the batch-norm allreduces; at the end it times the gradient allreduce alone, after a
barrier (the transfer without the wait). Prints every run, the medians, the ratio, and the
scaling of the step on paper over N machines from the measured compute time and the allreduce
volume (docs/performance-history.md, "Data parallelism").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
GLOBAL_BATCH = 8
# ResNet-50-FPN's training compute on paper: 3 forwards per image (the backward costs about
# two), the forward the measured 1.10 s of inference at 512x512 (docs/performance-history.md,
# "Model").
RESNET50_FPN_STEP_S = GLOBAL_BATCH * 3 * 1.10


def worker(steps: int) -> None:
    import numpy as np

    from retina_np import distributed
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.nn import BatchNorm2d
    from retina_np.optim import SGD
    from retina_np.train import train_step

    comm = distributed.world()
    model = RetinaNet(RetinaNetConfig.shapes(), seed=0)
    c = model.config
    loader = DataLoader(ShapesDataset(GLOBAL_BATCH * (steps + 2)), GLOBAL_BATCH,
                        size_divisible=c.size_divisible, image_mean=c.image_mean,
                        image_std=c.image_std)
    opt = SGD(model.named_parameters(), lr=0.01)
    grad_bytes = sum(p.grad.nbytes for p in model.parameters())

    spent = {"grad": 0.0, "bn": 0.0}
    allreduce = comm.allreduce_sum

    def timed_allreduce(a):
        start = time.perf_counter()
        out = allreduce(a)
        spent["grad" if a.nbytes == grad_bytes else "bn"] += time.perf_counter() - start
        return out

    comm.allreduce_sum = timed_allreduce  # before sync_batch_norm hands it to the norms
    distributed.sync_batch_norm(model, comm)
    norms = sum(isinstance(m, BatchNorm2d) for m in model.modules())
    rows = []
    for i in range(steps + 2):
        images, targets, _, _ = loader.batch(0, i, rank=comm.rank, ranks=comm.size)
        spent.update(grad=0.0, bn=0.0)
        start = time.perf_counter()
        train_step(model, opt, images, targets, lr=0.01, comm=comm if comm.size > 1 else None)
        rows.append((time.perf_counter() - start, spent["grad"], spent["bn"]))
    rows = np.array(rows[2:])
    alone, small = [], []
    flat = np.zeros(grad_bytes // 4, np.float32)
    sums = np.zeros(2 * 64 + 1)  # a batch norm's count, sums and sums of squares at 64 channels
    for _ in range(10):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce_sum(flat)
        alone.append(time.perf_counter() - start)
        comm.barrier()
        start = time.perf_counter()
        for _ in range(2 * norms):
            comm.allreduce_sum(sums)
        small.append(time.perf_counter() - start)
    if comm.rank == 0:
        print(json.dumps({
            "ranks": comm.size,
            "threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
            "step_s": float(np.median(rows[:, 0])),
            "grad_allreduce_s": float(np.median(rows[:, 1])),
            "bn_allreduce_s": float(np.median(rows[:, 2])),
            "grad_allreduce_alone_s": float(np.median(alone)),
            "bn_allreduce_alone_s": float(np.median(small)),
            "grad_bytes": grad_bytes,
            "batch_norms": norms,
        }))


def run(ranks: int, steps: int) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", "--steps", str(steps)]
    if ranks > 1:
        from retina_np import distributed

        cmd = [distributed.mpiexec(), "-n", str(ranks), *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def allreduce_s(nbytes: float, machines: int, gbit_s: float, latency_s: float) -> float:
    """An allreduce of nbytes over N machines, the faster of the two textbook algorithms:
    a ring (each machine sends and receives 2 (N-1)/N of the buffer, in 2 (N-1) rounds that
    each pay the latency: large buffers) and recursive doubling (log2 N rounds of the whole
    buffer: small ones). MPI libraries choose between them by size in the same way."""
    if machines == 1:
        return 0.0
    seconds_per_byte = 8 / (gbit_s * 1e9)
    ring = 2 * (machines - 1) * (latency_s + nbytes / machines * seconds_per_byte)
    doubling = math.ceil(math.log2(machines)) * (latency_s + nbytes * seconds_per_byte)
    return min(ring, doubling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="runs of each kind")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps)

    import numpy as np

    from retina_np.models import RetinaNet, RetinaNetConfig

    resnet50_bytes = sum(p.data.nbytes for p in
                         RetinaNet(RetinaNetConfig.resnet50_fpn(91)).parameters())
    results = {1: [], 2: []}
    for r in range(args.runs):
        for ranks in (1, 2) if r % 2 == 0 else (2, 1):
            res = run(ranks, args.steps)
            results[ranks].append(res)
            print(f"run {r + 1}: {ranks} x {res['threads']} thread(s): step "
                  f"{1e3 * res['step_s']:.0f} ms ({GLOBAL_BATCH / res['step_s']:.1f} images/s)"
                  + (f", gradient allreduce {1e3 * res['grad_allreduce_s']:.1f} ms "
                     f"(alone {1e3 * res['grad_allreduce_alone_s']:.1f}), batch-norm "
                     f"allreduces {1e3 * res['bn_allreduce_s']:.1f} ms (alone "
                     f"{1e3 * res['bn_allreduce_alone_s']:.2f})"
                     if ranks > 1 else ""), flush=True)
    one = np.median([r["step_s"] for r in results[1]])
    two = np.median([r["step_s"] for r in results[2]])
    grad = np.median([r["grad_allreduce_s"] for r in results[2]])
    alone = np.median([r["grad_allreduce_alone_s"] for r in results[2]])
    bn = np.median([r["bn_allreduce_s"] for r in results[2]])
    bn_alone = np.median([r["bn_allreduce_alone_s"] for r in results[2]])
    faster = np.mean([b["step_s"] < a["step_s"] for a, b in zip(results[1], results[2])])
    info = results[2][0]
    print(f"\nmedians: 1 process x 2 threads {1e3 * one:.0f} ms ({GLOBAL_BATCH / one:.1f} images/s)"
          f", 2 ranks x 1 thread {1e3 * two:.0f} ms ({GLOBAL_BATCH / two:.1f} images/s): "
          f"ratio {one / two:.2f} (2 ranks faster in {100 * faster:.0f}% of the pairs)")
    print(f"2 ranks: gradient allreduce ({info['grad_bytes'] / 1e6:.1f} MB) {1e3 * grad:.1f} ms "
          f"= {100 * grad / two:.1f}% of the step (alone, after a barrier: {1e3 * alone:.2f} ms)"
          f"; {info['batch_norms']} batch norms' {2 * info['batch_norms']} allreduces "
          f"{1e3 * bn:.1f} ms = {100 * bn / two:.1f}% (alone, after a barrier: "
          f"{1e3 * bn_alone:.2f} ms; the rest is waiting for the other rank)")

    # On paper: N machines, each on its own batch of 8 (the global batch grows with N),
    # compute = this machine's 1-process step less nothing (it has no allreduce).
    print("\nscaling on paper, each machine a batch of 8 as here (compute: the 1-process step "
          f"{1e3 * one:.0f} ms); latency 20 us per message; the shapes preset also pays 2 small "
          "allreduces per batch norm (images/s, and the share of the step spent computing):")
    print("| model | link | N = 2 | N = 8 | N = 32 | N = 128 |")
    print("|---|---|---|---|---|---|")
    for name, nbytes, compute, norms in (
            ("shapes preset", info["grad_bytes"], one, info["batch_norms"]),
            (f"ResNet-50-FPN ({resnet50_bytes / 1e6:.0f} MB, frozen BN), compute "
             f"{RESNET50_FPN_STEP_S:.0f} s on paper", resnet50_bytes, RESNET50_FPN_STEP_S, 0)):
        for gbit in (10, 100):
            cells = []
            for n in (2, 8, 32, 128):
                t = (compute + allreduce_s(nbytes, n, gbit, 20e-6)
                     + 2 * norms * allreduce_s(8 * (2 * 64 + 1), n, gbit, 20e-6))
                rate = n * GLOBAL_BATCH / t
                cells.append(f"{rate:,.0f} img/s" if rate >= 10 else f"{rate:.2f} img/s")
                cells[-1] += f" ({100 * compute / t:.0f}%)"
            print(f"| {name} | {gbit} Gbit/s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
