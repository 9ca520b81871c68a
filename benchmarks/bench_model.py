"""Whole-model timings: the shapes preset's training step and ResNet-50-FPN inference.

    python benchmarks/bench_model.py            # everything (each part in its own process,
                                                # so that peak memory is per part)
    python benchmarks/bench_model.py --quick    # fewer repeats
    python benchmarks/bench_model.py --skip-infer   # only the training step (and torch's)
    python benchmarks/bench_model.py --one-core     # the step on two cores and on one, stage
                                                    # by stage (how much the second core gives)

Prints, for the shapes preset at batch 8 (128x128): seconds per training step (forward, loss,
backward, SGD update), the time of its stages and per layer type, the conv FLOPs of the step
and the achieved GFLOP/s next to a float32 GEMM measured in the same process; for
``resnet50_fpn`` (91 classes) at 512x512 and 800x800, batch 1: inference seconds (forward +
postprocess). Peak resident memory of each part. (That inference against torchvision's
``retinanet_resnet50_fpn`` with the same weights: bench_inference.py.)

With torch installed, the same training step in PyTorch on the CPU (``torch_twin.py``: the
same architecture, loaded with the same initial weights, on the same batches), after a check
that its forward outputs equal ours; torch runs with as many threads as our Numba kernels.
Anchor matching is done once on the host by retina_np's matcher and handed to torch as
tensors (it is no conv cost); our step's time includes matching, in its loss stage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict

# As `import retina_np` does: OpenBLAS's threads sleep right after a GEMM instead of spinning
# ~0.1 s on a core the next Numba loop needs. Read when numpy loads OpenBLAS, so set first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402


class Gemm:
    """The float32 GEMM rate through numpy's BLAS, sampled (``sample``) between the timed steps:
    this machine has slow spells of seconds, and five GEMMs in a row at the end of a run once
    measured 101 GFLOP/s against the usual 170-180, which made the step look 64% of the GEMM.
    ``gflops`` is the best sample, so a slow spell can only make the fraction smaller."""

    def __init__(self, m=512, n=4096, k=576):
        self.a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
        self.b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
        self.flop = 2 * m * n * k
        self.a @ self.b
        self.samples: list[float] = []

    def sample(self, repeat=2) -> None:
        best = min(_timed(lambda: self.a @ self.b) for _ in range(repeat))
        self.samples.append(self.flop / best / 1e9)

    @property
    def gflops(self) -> float:
        return max(self.samples)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _gemm_macs(conv, x, macs):
    """The multiply-adds that the GEMMs of this convolution's forward do (each backward pass
    does as many): ``macs`` for im2col + GEMM; for Winograd's algorithm (kernels/cpu/winograd.py:
    the heads' Joints, and the backbone's and FPN's 3x3 convolutions where they pay)
    F * C per tile and entry of the transformed tile (16 for F(2x2, 3x3)'s 2x2 blocks, 36 for
    F(4x4, 3x3)'s 4x4) instead of 9 * F * C per output pixel. Which way the forward went is
    read from its cache's workspace: a Winograd forward keeps V (terms, C, tiles), the
    transformed input. x: the input, an (N, C, H, W) array or a Joint of levels."""
    cache = conv._caches[-1] if getattr(conv, "_caches", None) else None
    if hasattr(cache, "workspace"):
        V = getattr(cache.workspace, "transformed", None)
    else:  # an older retina_np (comparing commits): V as the first of the kept "columns"
        columns = getattr(cache, "columns", None)
        V = columns[0] if columns and columns[0].ndim == 3 else None
    if V is None:
        return macs
    terms, _, tiles = V.shape
    return terms * conv.out_channels * conv.in_channels * tiles


def _instrument():
    """Wrap every layer's forward/backward to time it and count conv FLOPs, and the step's
    stages (backbone + FPN, heads, loss, gradient norm, update) to time them on the clock.

    The heads' two subnets run side by side on the CPU, and the convolutions' weight
    gradients are worked through by a second thread beside the backbone's backward
    (retina_np/schedule.py, which train_step uses), so the layer times are summed over the threads
    that ran them and add up to more than the step. The stages are timed on the main thread;
    they run one after another and add up to the step.
    """
    import retina_np.nn.layers as layers
    import retina_np.train as train
    from retina_np.models import heads, retinanet
    from retina_np.optim import SGD

    try:  # the scheduled step's own head and queue functions
        from retina_np import schedule
    except ImportError:  # an older retina_np (comparing commits): they were the model's
        schedule = layers

    times, stages = defaultdict(float), defaultdict(float)
    flops = {"conv": 0.0, "executed": 0.0}
    lock = threading.Lock()  # the subnets' threads add to the same totals
    for cls in (
        layers.Conv2d,
        layers.BatchNorm2d,
        layers.GroupNorm,
        layers.ReLU,
        layers.MaxPool2d,
        layers.Upsample,
        layers.Add,
    ):
        methods = ["forward", "backward"]
        if cls in (layers.Conv2d, layers.GroupNorm):  # the heads' layers, on all levels at once
            methods += ["forward_levels", "backward_levels"]  # (ReLU's call its forward)
        for method in methods:
            if not hasattr(cls, method):  # an older retina_np (comparing commits)
                continue
            original = getattr(cls, method)
            key = f"{cls.__name__}.{method.replace('_levels', '')}"

            def wrapped(self, *args, _f=original, _key=key, _method=method, **kw):
                t = time.perf_counter()
                out = _f(self, *args, **kw)
                with lock:
                    times[_key] += time.perf_counter() - t
                    if _key == "Conv2d.forward":  # forward, or forward_levels (a list or a
                        # Joint of levels: (F, T), T = the output pixels of all levels)
                        ys = [out] if _method == "forward" else out
                        xs = [args[0]] if _method == "forward" else args[0]
                        joint = hasattr(ys, "data")
                        for x, y in ([(xs, ys.data)] if joint else zip(xs, ys)):
                            outputs = y.size  # N*F*Ho*Wo, or F*T
                            k = self.kernel_size
                            macs = outputs * self.in_channels * k * k
                            # forward, weight gradient and (but for the stem) input gradient
                            passes = 3 if self.needs_input_grad else 2
                            flops["conv"] += 2 * macs * passes
                            flops["executed"] += 2 * _gemm_macs(self, x, macs) * passes
                return out

            setattr(cls, method, wrapped)

    def clocked(owner, method, key):
        if not hasattr(owner, method):  # an older retina_np (comparing commits)
            return
        original = getattr(owner, method)

        def wrapped(*args, **kw):
            if threading.current_thread() is not threading.main_thread():
                return original(*args, **kw)  # the work beside the main thread's
            t = time.perf_counter()
            out = original(*args, **kw)
            stages[key] += time.perf_counter() - t
            return out

        setattr(owner, method, wrapped)

    clocked(retinanet.BackboneWithFPN, "forward", "backbone + FPN forward")
    clocked(schedule, "backbone_forward", "backbone + FPN forward")  # the scheduled step's
    # the scheduled step calls schedule's head functions; an older retina_np, the head's own
    clocked(schedule, "head_forward", "heads forward (subnets side by side)")
    clocked(heads.RetinaNetHead, "forward", "heads forward (subnets side by side)")
    clocked(schedule, "head_backward", "heads backward (input gradients)")
    clocked(heads.RetinaNetHead, "backward", "heads backward (input gradients)")
    clocked(retinanet.RetinaNet, "loss", "loss (matching, focal, box)")
    clocked(retinanet.BackboneWithFPN, "backward", "backbone + FPN backward (queue beside)")
    clocked(getattr(schedule, "WorkQueue", None), "work_through",
            "rest of the weight-gradient queue")
    clocked(train, "clip_grad_norm", "gradient norm")
    clocked(SGD, "step", "SGD update")
    return times, stages, flops


def _keep_freed_memory_as_older_train_did() -> None:
    """``import retina_np`` keeps freed memory (retina_np.runtime); an older retina_np
    (comparing commits) did it in ``train()``, which this benchmark does not call."""
    try:
        from retina_np.train import keep_freed_memory
    except ImportError:
        return
    keep_freed_memory()


@contextlib.contextmanager
def _one_core():
    """The step on one core: Numba's loops and the BLAS on one thread, and the tasks that
    ``kernels.side_by_side`` would run at once run one after another."""
    import numba
    from threadpoolctl import threadpool_limits

    from retina_np import kernels

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"), kernels.options(side_by_side=False):
            yield
    finally:
        numba.set_num_threads(before)


def bench_train(repeat: int, one_core: bool = False) -> dict:
    import numba

    with _one_core() if one_core else contextlib.nullcontext():
        result = _bench_train(repeat)
        threads = numba.get_num_threads()
    return {**result, "threads": threads}


def _bench_train(repeat: int) -> dict:
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD
    from retina_np.train import train_step

    _keep_freed_memory_as_older_train_did()
    times, stages, flops = _instrument()
    model = RetinaNet(RetinaNetConfig.shapes())
    loader = DataLoader(ShapesDataset(8 * (repeat + 2)), 8)
    opt = SGD(model.named_parameters(), lr=0.01)
    for i in range(2):  # compile and warm up
        images, targets, _, _ = loader.batch(0, i)
        train_step(model, opt, images, targets, 0.01)
    times.clear()
    stages.clear()
    flops["conv"] = flops["executed"] = 0.0
    steps, losses = [], []
    gemm_rate = Gemm()
    for i in range(repeat):
        images, targets, _, _ = loader.batch(0, i + 2)
        start = time.perf_counter()
        losses.append(train_step(model, opt, images, targets, 0.01)["total"])
        steps.append(time.perf_counter() - start)
        gemm_rate.sample()  # between the steps, so that both see the machine's spells
    step = float(np.median(steps))
    gemm = gemm_rate.gflops
    conv_flops = flops["conv"] / repeat
    return {
        "part": "train shapes preset, batch 8, 128x128",
        "seconds_per_step": step,
        "mean_seconds_per_step": float(np.mean(steps)),
        "images_per_second": 8 / step,
        "conv_gflop_per_step": conv_flops / 1e9,
        "executed_gflop_per_step": flops["executed"] / repeat / 1e9,
        "achieved_gflops": conv_flops / step / 1e9,
        "gemm_gflops": gemm,
        "gemm_gflops_median": float(np.median(gemm_rate.samples)),
        "fraction_of_gemm": conv_flops / step / 1e9 / gemm,
        "per_layer_seconds": {
            k: v / repeat for k, v in sorted(times.items(), key=lambda kv: -kv[1])
        },
        "per_stage_seconds": {k: v / repeat for k, v in stages.items()},
        "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_torch(repeat: int) -> dict:
    """``bench_train``'s step in PyTorch: same weights, same batches, same warm-up."""
    import numba
    import torch
    import torch_twin as tt

    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig

    threads = numba.get_num_threads()  # our parallel kernels use this many
    torch.set_num_threads(threads)
    config = RetinaNetConfig.shapes()
    model = RetinaNet(config)  # seed 0: bench_train's initial weights
    twin = tt.TorchRetinaNet(config)
    loader = DataLoader(ShapesDataset(8 * (repeat + 2)), 8)
    batches = [loader.batch(0, i) for i in range(repeat + 2)]

    # The same computation: forward outputs (training mode, batch statistics) and loss.
    images, targets, _, _ = batches[0]
    initial = {k: v.copy() for k, v in model.state_dict().items()}
    tt.load_numpy_state(twin, initial)
    cls, box = model(images)
    model.clear_caches()
    ours_loss = model.loss(cls, box, targets, images.shape[-2:])[0]["total"]
    matched = [
        [torch.from_numpy(a) for a in tt.match_batch(model, b.targets, b.images.shape[-2:])]
        for b in batches
    ]
    with torch.no_grad():
        t_cls, t_box = twin.train()(torch.from_numpy(images))
        torch_loss = tt.retina_loss(t_cls, t_box, *matched[0], config).item()
    np.testing.assert_allclose(t_cls.numpy(), cls, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(t_box.numpy(), box, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(torch_loss, ours_loss, rtol=1e-3)
    check = {
        "max_abs_diff_cls": float(np.abs(t_cls.numpy() - cls).max()),
        "max_abs_diff_box": float(np.abs(t_box.numpy() - box).max()),
        "loss_ours": ours_loss,
        "loss_torch": torch_loss,
    }

    tt.load_numpy_state(twin, initial)  # undo the check's running-statistics update
    opt = tt.sgd(twin, lr=0.01)
    inputs = [torch.from_numpy(b.images) for b in batches]
    for i in range(2):  # warm up, on bench_train's warm-up batches
        tt.train_step(twin, opt, inputs[i], *matched[i], config)
    steps, losses = [], []
    for i in range(2, repeat + 2):
        start = time.perf_counter()
        losses.append(tt.train_step(twin, opt, inputs[i], *matched[i], config))
        steps.append(time.perf_counter() - start)
    return {
        "part": "torch twin of the training step",
        "torch_version": torch.__version__,
        "threads": threads,
        "seconds_per_step": float(np.median(steps)),
        "losses": losses,
        "check": check,
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


def _run_part(part: str, quick: bool, one_core: bool = False) -> dict:
    """One part in a fresh process (its own peak memory, no thread pools left by another)."""
    cmd = [sys.executable, __file__, "--only", part] + (["--quick"] if quick else [])
    cmd += ["--one-core"] if one_core else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"part {part!r} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_train(train: dict) -> None:
    print(f"## {train['part']}")
    print(
        f"  step {train['seconds_per_step']:.3f} s ({train['images_per_second']:.1f} images/s), "
        f"conv {train['conv_gflop_per_step']:.2f} GFLOP/step -> "
        f"{train['achieved_gflops']:.1f} GFLOP/s = {100 * train['fraction_of_gemm']:.0f}% of "
        f"the {train['gemm_gflops']:.1f} GFLOP/s float32 GEMM measured in the same process "
        f"(the best of its samples between the steps, median {train['gemm_gflops_median']:.1f}); "
        f"peak RSS {train['peak_rss_mb']:.0f} MB"
    )
    executed = train.get("executed_gflop_per_step", train["conv_gflop_per_step"])
    rate = executed / train["seconds_per_step"]
    if executed < train["conv_gflop_per_step"]:
        print(
            f"  the conv FLOPs are those of the convolutions (9 multiply-adds per input channel "
            f"and output pixel of a 3x3); the GEMMs did {executed:.2f} GFLOP of them, since the "
            f"heads' 3x3 convolutions, and the backbone's and FPN's where they pay, "
            f"run by Winograd's algorithm (kernels/cpu/winograd.py; F(4x4, 3x3): 36 per channel "
            f"pair and 4x4 block, 4x fewer, where the blocks fill the map): "
            f"{rate:.1f} GFLOP/s executed = {100 * rate / train['gemm_gflops']:.0f}% of the GEMM"
        )
    mean = train["mean_seconds_per_step"]
    print(f"  stages, on the clock (mean per step: {mean * 1000:.1f} ms; they run one after "
          "another):")
    for name, sec in train["per_stage_seconds"].items():
        print(f"    {name:40s} {sec * 1000:8.1f} ms  {100 * sec / mean:5.1f}%")
    other = mean - sum(train["per_stage_seconds"].values())
    print(f"    {'(other: zeroing gradients, copies)':40s} {other * 1000:8.1f} ms")
    print("  layers, summed over the threads that ran them (mean per step):")
    for name, sec in train["per_layer_seconds"].items():
        print(f"    {name:40s} {sec * 1000:8.1f} ms")


BACKWARD_STAGES = ("heads backward (input gradients)", "backbone + FPN backward (queue beside)",
                   "rest of the weight-gradient queue")


def _print_one_core(two: dict, one: dict) -> None:
    """The step on one core beside the step on all of them, stage by stage."""
    print("## the same step on one core (Numba and BLAS on one thread, no tasks side by side)")
    print(f"  step {one['seconds_per_step'] * 1000:.1f} ms against "
          f"{two['seconds_per_step'] * 1000:.1f} ms on {two['threads']} threads: "
          f"{one['seconds_per_step'] / two['seconds_per_step']:.2f}x from the other cores")
    print(f"    {'stage (mean per step)':40s} {'one core':>9} {'all':>9} {'one / all':>9}")
    rows = [(name, sec, two["per_stage_seconds"].get(name, float("nan")))
            for name, sec in one["per_stage_seconds"].items()]
    # On one core the queue of weight gradients runs after the backbone's backward, not
    # beside it: the backward's stages compare only together.
    backward = [row for row in rows if row[0] in BACKWARD_STAGES]
    if len(backward) == len(BACKWARD_STAGES):
        rows.append(("the backward (the three stages above)", sum(r[1] for r in backward),
                     sum(r[2] for r in backward)))
    for name, sec, other in rows:
        print(f"    {name:40s} {sec * 1000:6.1f} ms {other * 1000:6.1f} ms {sec / other:8.2f}x")


def _print_torch(train: dict, torch_: dict) -> None:
    step, check = torch_["seconds_per_step"], torch_["check"]
    gflops = train["conv_gflop_per_step"] / step
    print(
        f"## the same step in PyTorch {torch_['torch_version']} (benchmarks/torch_twin.py), "
        f"CPU, torch.set_num_threads({torch_['threads']}) = our Numba threads"
    )
    print(
        f"  same architecture and initial weights (our state_dict loaded), same batches; "
        f"forward outputs equal ours (max |diff| cls {check['max_abs_diff_cls']:.1e}, "
        f"box {check['max_abs_diff_box']:.1e}; rtol 1e-3, atol 1e-4), loss ours "
        f"{check['loss_ours']:.5f} torch {check['loss_torch']:.5f}"
    )
    print(
        "  anchor matching: done once on the host by retina_np's matcher, passed to torch as "
        "tensors and not timed (ours includes it, in its loss stage)"
    )
    print(
        f"  step {step:.3f} s ({8 / step:.1f} images/s), same conv FLOPs -> {gflops:.1f} GFLOP/s "
        f"= {100 * gflops / train['gemm_gflops']:.0f}% of the GEMM above; peak RSS "
        f"{torch_['peak_rss_mb']:.0f} MB"
    )
    ratio = train["seconds_per_step"] / step
    print(f"  ours / torch step time: {ratio:.2f} ({'torch' if ratio > 1 else 'ours'} faster)")
    (first, *_, last), (t_first, *_, t_last) = train["losses"], torch_["losses"]
    print(
        f"  loss at the first / last timed step: ours {first:.4f} / {last:.4f}, torch "
        f"{t_first:.4f} / {t_last:.4f} (float32 rounding differences grow over from-scratch "
        "steps; in float64 they agree to rounding: tests/models/test_torch_twin.py)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-infer", action="store_true", help="no resnet50_fpn inference")
    parser.add_argument("--only", choices=["train", "torch", "512", "800"])
    parser.add_argument("--one-core", action="store_true",
                        help="also the training step on one core, stage by stage")
    args = parser.parse_args()
    repeat = 3 if args.quick else 20
    if args.only == "train":
        print(json.dumps(bench_train(repeat, one_core=args.one_core)))
        return
    if args.only == "torch":
        print(json.dumps(bench_torch(repeat)))
        return
    if args.only in ("512", "800"):
        print(json.dumps(bench_infer(int(args.only), 2 if args.quick else 3)))
        return
    load_before = os.getloadavg()[0]
    train = _run_part("train", args.quick)
    _print_train(train)
    if args.one_core:
        _print_one_core(train, _run_part("train", args.quick, one_core=True))
    if importlib.util.find_spec("torch") is None:
        print("## PyTorch comparison: torch is not installed")
    else:
        _print_torch(train, _run_part("torch", args.quick))
    if not args.skip_infer:
        for size in ("512", "800"):
            r = _run_part(size, args.quick)
            print(f"## {r['part']}: {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(
        f"(load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs; above the CPU count, other processes shared the cores)"
    )


if __name__ == "__main__":
    main()
