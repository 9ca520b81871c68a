"""Whole-model timings: the shapes preset's training step and ResNet-50-FPN inference.

    python benchmarks/bench_model.py            # everything (each part in its own process,
                                                # so that peak memory is per part)
    python benchmarks/bench_model.py --quick    # fewer repeats

Prints, for the shapes preset at batch 8 (128x128): seconds per training step (forward, loss,
backward, SGD update), the time per layer type, the conv FLOPs of the step and the achieved
GFLOP/s next to a float32 GEMM measured in the same process; for ``resnet50_fpn`` (91
classes) at 512x512 and 800x800, batch 1: inference seconds (forward + postprocess). Peak
resident memory of each part.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np


def gemm_gflops(m=512, n=4096, k=576, repeat=5) -> float:
    """float32 GEMM rate through numpy's BLAS, best of ``repeat``."""
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * m * n * k / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _instrument():
    """Wrap every layer's forward/backward to time it and count conv FLOPs."""
    import retina_np.nn.layers as layers

    times, flops = defaultdict(float), {"conv": 0.0}
    for cls in (
        layers.Conv2d,
        layers.BatchNorm2d,
        layers.ReLU,
        layers.MaxPool2d,
        layers.Upsample,
        layers.Add,
    ):
        for method in ("forward", "backward"):
            original = getattr(cls, method)

            def wrapped(self, *args, _f=original, _key=f"{cls.__name__}.{method}", **kw):
                t = time.perf_counter()
                out = _f(self, *args, **kw)
                times[_key] += time.perf_counter() - t
                if _key == "Conv2d.forward":
                    n, f, ho, wo = out.shape
                    k = self.kernel_size
                    macs = n * f * ho * wo * self.in_channels * k * k
                    # forward, weight gradient and (but for the stem) input gradient
                    flops["conv"] += 2 * macs * (3 if self.needs_input_grad else 2)
                return out

            setattr(cls, method, wrapped)
    return times, flops


def bench_train(repeat: int) -> dict:
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD
    from retina_np.train import train_step

    times, flops = _instrument()
    model = RetinaNet(RetinaNetConfig.shapes())
    loader = DataLoader(ShapesDataset(8 * (repeat + 2)), 8)
    opt = SGD(model.named_parameters(), lr=0.01)
    for i in range(2):  # compile and warm up
        images, targets, _, _ = loader.batch(0, i)
        train_step(model, opt, images, targets, 0.01)
    times.clear()
    flops["conv"] = 0.0
    steps = []
    for i in range(repeat):
        images, targets, _, _ = loader.batch(0, i + 2)
        start = time.perf_counter()
        train_step(model, opt, images, targets, 0.01)
        steps.append(time.perf_counter() - start)
    step = float(np.median(steps))
    gemm = gemm_gflops()
    conv_flops = flops["conv"] / repeat
    return {
        "part": "train shapes preset, batch 8, 128x128",
        "seconds_per_step": step,
        "images_per_second": 8 / step,
        "conv_gflop_per_step": conv_flops / 1e9,
        "achieved_gflops": conv_flops / step / 1e9,
        "gemm_gflops": gemm,
        "fraction_of_gemm": conv_flops / step / 1e9 / gemm,
        "per_layer_seconds": {
            k: v / repeat for k, v in sorted(times.items(), key=lambda kv: -kv[1])
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_infer(size: int, repeat: int) -> dict:
    from retina_np.models import RetinaNet, RetinaNetConfig

    model = RetinaNet(RetinaNetConfig.resnet50_fpn(91)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    model.detect(x)
    best = min(_timed(lambda: model.detect(x)) for _ in range(repeat))
    return {
        "part": f"inference resnet50_fpn, 1x3x{size}x{size}",
        "seconds": best,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["train", "512", "800"])
    args = parser.parse_args()
    repeat = 3 if args.quick else 8
    if args.only == "train":
        print(json.dumps(bench_train(repeat)))
        return
    if args.only in ("512", "800"):
        print(json.dumps(bench_infer(int(args.only), 2 if args.quick else 3)))
        return
    results = []
    for part in ("train", "512", "800"):
        cmd = [sys.executable, __file__, "--only", part] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    train, *infer = results
    print(f"## {train['part']}")
    print(
        f"  step {train['seconds_per_step']:.3f} s ({train['images_per_second']:.1f} images/s), "
        f"conv {train['conv_gflop_per_step']:.2f} GFLOP/step -> "
        f"{train['achieved_gflops']:.1f} GFLOP/s = {100 * train['fraction_of_gemm']:.0f}% of "
        f"the {train['gemm_gflops']:.1f} GFLOP/s float32 GEMM measured in the same process; "
        f"peak RSS {train['peak_rss_mb']:.0f} MB"
    )
    total = sum(train["per_layer_seconds"].values())
    for name, sec in train["per_layer_seconds"].items():
        print(f"    {name:22s} {sec * 1000:8.1f} ms  {100 * sec / train['seconds_per_step']:5.1f}%")
    print(f"    {'(other: loss, update)':22s} {(train['seconds_per_step'] - total) * 1000:8.1f} ms")
    for r in infer:
        print(f"## {r['part']}: {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
