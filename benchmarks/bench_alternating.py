"""The shapes preset's training step with one of the CPU's switches on and off, in alternating
steps of one process (CPU, float32, SGD, batch 8).

    python benchmarks/bench_alternating.py winograd          # 60 steps, 30 of each
    python benchmarks/bench_alternating.py winograd-images
    python benchmarks/bench_alternating.py f4
    python benchmarks/bench_alternating.py serial --steps 20

The switches:

* ``winograd``: the heads' 3x3 convolutions by Winograd's algorithm
  (``kernels.options(winograd=...)``), or by im2col + GEMM;
* ``winograd-images``: the same for the backbone's and the FPN's 3x3 convolutions
  (``winograd_images``);
* ``f4``: Winograd's F(4x4, 3x3) wherever Winograd runs (``winograd_block=4``), or
  F(2x2, 3x3) (2);
* ``serial``: small kernels called outside a task on one thread (``serial_max_elements``), or
  every kernel on every core (0).

The switch is flipped between the steps (each step runs inside ``kernels.options``), so both
variants see the machine's slow and fast spells alike (on the 2-core development machine the
same step moves by 30% between minutes, which separate runs cannot tell from a change).
Prints the median step of each, the median of each stage that the switch touches, and the
share of the pairs in which the step with the switch on was the faster one.
"""

from __future__ import annotations

import argparse
import os
import time

# As `import retina_np` does (see bench_model.py); set before numpy is loaded.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402


def _switches():
    """name -> (what it switches, {True: the kernel options with it on, False: off})."""
    from retina_np.kernels import Options

    serial = Options().serial_max_elements
    return {
        "winograd": ("the heads by Winograd's algorithm (off: im2col + GEMM)",
                     {True: dict(winograd=True), False: dict(winograd=False)}),
        "winograd-images": ("the backbone's and FPN's 3x3 convolutions by "
                            "Winograd's algorithm (off: im2col + GEMM)",
                            {True: dict(winograd_images=True), False: dict(winograd_images=False)}),
        "f4": ("Winograd's F(4x4, 3x3) (off: F(2x2, 3x3))",
               {True: dict(winograd_block=4), False: dict(winograd_block=2)}),
        "serial": (f"kernels below {serial} elements on one thread (off: every core)",
                   {True: dict(serial_max_elements=serial), False: dict(serial_max_elements=0)}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("switch", choices=("winograd", "winograd-images", "f4", "serial"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps, both variants")
    args = parser.parse_args()

    from retina_np import kernels
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig, retinanet
    from retina_np.optim import SGD
    from retina_np.train import train_step

    what, variants = _switches()[args.switch]
    model = RetinaNet(RetinaNetConfig.shapes())
    loader = DataLoader(ShapesDataset(8 * (args.steps + 1)), 8)
    opt = SGD(model.named_parameters(), lr=0.01)
    forward = retinanet.BackboneWithFPN.forward
    backbone = []  # the backbone + FPN forward of each step

    def timed_forward(self, x):
        start = time.perf_counter()
        out = forward(self, x)
        backbone.append(time.perf_counter() - start)
        return out

    retinanet.BackboneWithFPN.forward = timed_forward
    for on in (True, False, True, False):  # compile and warm up both
        images, targets, _, _ = loader.batch(0, 0)
        with kernels.options(**variants[on]):
            train_step(model, opt, images, targets, 0.01)
    steps = {True: [], False: []}
    forwards = {True: [], False: []}
    for i in range(args.steps):
        on = i % 2 == 0
        images, targets, _, _ = loader.batch(0, i + 1)
        with kernels.options(**variants[on]):
            start = time.perf_counter()
            train_step(model, opt, images, targets, 0.01)
            steps[on].append(time.perf_counter() - start)
        forwards[on].append(backbone[-1])
    retinanet.BackboneWithFPN.forward = forward
    on, off = np.array(steps[True]), np.array(steps[False])
    pairs = min(len(on), len(off))
    print(f"shapes preset training step, batch 8, {args.steps} steps alternating; "
          f"switch {args.switch}: {what}")
    for name, value in (("on", True), ("off", False)):
        print(f"  {name:3s}: step median {1e3 * np.median(steps[value]):6.1f} ms, backbone + FPN "
              f"forward {1e3 * np.median(forwards[value]):5.1f} ms")
    print(f"  the step with it on faster in {100 * np.mean(on[:pairs] < off[:pairs]):.0f}% of "
          f"the {pairs} pairs")


if __name__ == "__main__":
    main()
