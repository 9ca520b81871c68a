"""The shapes preset's training step with the heads' convolutions by Winograd and by im2col,
in alternating steps of one process (CPU, float32, SGD, batch 8).

    python benchmarks/bench_winograd.py            # 60 steps, 30 of each
    python benchmarks/bench_winograd.py --steps 20

``cpu.WINOGRAD`` is switched between the steps, so both variants see the machine's slow and
fast spells alike (on the 2-core development machine the same step moves by 30% between
minutes, which separate runs cannot tell from a change). Prints the median step of each and
the share of the pairs in which Winograd's step was the faster one.
"""

from __future__ import annotations

import argparse
import os
import time

# As `import retina_np` does (see bench_model.py); set before numpy is loaded.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps, both variants")
    args = parser.parse_args()

    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.kernels import cpu
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD
    from retina_np.train import keep_freed_memory, train_step

    keep_freed_memory()  # as train() does
    model = RetinaNet(RetinaNetConfig.shapes())
    loader = DataLoader(ShapesDataset(8 * (args.steps + 1)), 8)
    opt = SGD(model.named_parameters(), lr=0.01)
    for use in (True, False, True, False):  # compile and warm up both
        cpu.WINOGRAD = use
        images, targets, _, _ = loader.batch(0, 0)
        train_step(model, opt, images, targets, 0.01)
    times = {True: [], False: []}
    for i in range(args.steps):
        use = i % 2 == 0
        cpu.WINOGRAD = use
        images, targets, _, _ = loader.batch(0, i + 1)
        start = time.perf_counter()
        train_step(model, opt, images, targets, 0.01)
        times[use].append(time.perf_counter() - start)
    cpu.WINOGRAD = True
    wino, direct = np.array(times[True]), np.array(times[False])
    pairs = min(len(wino), len(direct))
    print(f"shapes preset training step, batch 8, {args.steps} steps alternating:")
    print(f"  heads by Winograd's F(2x2, 3x3): median {1e3 * np.median(wino):6.1f} ms")
    print(f"  heads by im2col + GEMM:         median {1e3 * np.median(direct):6.1f} ms")
    print(f"  Winograd's step faster in {100 * np.mean(wino[:pairs] < direct[:pairs]):.0f}% of "
          f"the {pairs} pairs")


if __name__ == "__main__":
    main()
