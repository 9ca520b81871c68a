"""CUDA kernel speed against the GPU's own limits, measured in the same run.

    python benchmarks/bench_cuda.py                 # everything
    python benchmarks/bench_cuda.py --quick         # fewer shapes and repeats
    python benchmarks/bench_cuda.py --torch-python /path/to/python   # torch lives elsewhere
    python benchmarks/bench_cuda.py --json out.json

1. The ceilings: float32 peak from an FMA-loop kernel (8 independent chains per thread, so
   the FMA pipes never wait), memory bandwidth from a copy kernel (bytes read + written).
2. Every convolution shape of ``bench_kernels.py`` through our three implicit-GEMM passes:
   time, GFLOP/s (2*N*F*C*kh*kw*Ho*Wo per pass) and the fraction of the measured peak.
3. The memory-bound kernels (ReLU, add, batch norm, pooling, upsampling, the per-channel
   reductions): GB/s of their compulsory traffic and the fraction of the copy bandwidth.
4. torch's cuDNN conv2d (forward, input and weight gradients) for the same shapes, float32
   with TF32 off and on, in a separate process (``--torch-python``; skipped without torch).
5. One training step of the "shapes" preset on the GPU and on the CPU, if the model runs
   on device arrays (it says why not otherwise).

Times are medians of CUDA-event timings after a warm-up call (which compiles the kernel).
Without a GPU (or under NUMBA_ENABLE_CUDASIM, where timings mean nothing) it says so and
exits 0; ``--json`` then writes ``{"skipped": reason}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _gpu_or_reason():
    """(numba.cuda module, None) when a real GPU is usable, else (None, reason)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None, "NUMBA_ENABLE_CUDASIM=1: the simulator's timings mean nothing"
    try:
        from numba import cuda
    except ImportError:
        return None, "numba-cuda is not installed (pip install 'retina_np[cuda]')"
    try:
        if not cuda.is_available():
            return None, "numba.cuda finds no usable NVIDIA GPU"
    except Exception as exc:  # driver problems surface here
        return None, f"numba.cuda cannot start: {exc}"
    return cuda, None


# ----------------------------------------------------------------------------- timing
def time_gpu(cuda, fn, repeat: int) -> float:
    """Median seconds of fn() between two CUDA events, after one warm-up call."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


# ----------------------------------------------------------------------------- ceilings
def measure_ceilings(cuda, repeat: int) -> dict:
    """Peak float32 FMA rate (GFLOP/s) and copy bandwidth (GB/s) of this GPU."""
    from numba import float32

    ITERS = 4096

    @cuda.jit
    def fma_loop(out, a, b):
        i = cuda.grid(1)
        x0 = float32(i) * float32(1e-9)  # float32 throughout: an int literal would
        x1 = x0 + float32(1.0)           # promote the chains to float64
        x2 = x0 + float32(2.0)
        x3 = x0 + float32(3.0)
        x4 = x0 + float32(4.0)
        x5 = x0 + float32(5.0)
        x6 = x0 + float32(6.0)
        x7 = x0 + float32(7.0)
        for _ in range(ITERS):  # 8 independent chains: no FMA waits for the previous one
            x0 = x0 * a + b
            x1 = x1 * a + b
            x2 = x2 * a + b
            x3 = x3 * a + b
            x4 = x4 * a + b
            x5 = x5 * a + b
            x6 = x6 * a + b
            x7 = x7 * a + b
        out[i] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7  # keeps the loop alive

    @cuda.jit
    def copy(src, dst):
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[i] = src[i]

    device = cuda.get_current_device()
    sms = device.MULTIPROCESSOR_COUNT
    threads, blocks = 256, sms * 32
    out = cuda.device_array(threads * blocks, np.float32)
    t = time_gpu(cuda, lambda: fma_loop[blocks, threads](out, np.float32(0.999),
                                                          np.float32(1e-3)), repeat)
    peak = 2 * 8 * ITERS * threads * blocks / t / 1e9
    n = 64 * 2**20  # 256 MB of float32 each way
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array(n, np.float32)
    t = time_gpu(cuda, lambda: copy[sms * 8, 256](src, dst), repeat)
    bandwidth = 2 * 4 * n / t / 1e9
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return {"device": name, "sms": sms, "cc": list(device.compute_capability),
            "peak_gflops_fp32": peak, "copy_gbs": bandwidth}


# ----------------------------------------------------------------------------- convs
def conv_shapes(quick: bool):
    from bench_kernels import QUICK, RESNET50_512, SHAPES_MODEL

    shapes = SHAPES_MODEL + RESNET50_512
    return [s for s in shapes if s[0] in QUICK] if quick else shapes


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def conv_gflop(shape) -> float:
    _, N, C, F, H, W, k, s, p = shape
    return 2.0 * N * F * C * k * k * out_size(H, k, s, p) * out_size(W, k, s, p) / 1e9


def time_conv(cuda, shape, rng, repeat: int) -> dict:
    """Seconds of our three passes for one shape."""
    from retina_np.kernels import cuda as K

    name, N, C, F, H, W, k, s, p = shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    x = cuda.to_device(rng.standard_normal((N, C, H, W)).astype(np.float32))
    w = cuda.to_device((0.1 * rng.standard_normal((F, C, k, k))).astype(np.float32))
    b = cuda.to_device(np.zeros(F, np.float32))
    dy = cuda.to_device(rng.standard_normal((N, F, Ho, Wo)).astype(np.float32))
    return {
        "fwd": time_gpu(cuda, lambda: K.conv2d_forward(x, w, b, s, p), repeat),
        "bwd_input": time_gpu(cuda, lambda: K.conv2d_backward_input(dy, w, H, W, s, p), repeat),
        "bwd_weight": time_gpu(cuda, lambda: K.conv2d_backward_weight(dy, x, k, k, s, p), repeat),
    }


def bench_convs(cuda, shapes, repeat: int, peak: float) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        times = time_conv(cuda, shape, rng, repeat)
        g = conv_gflop(shape)
        row = {"shape": shape[0], "gflop": g}
        for key, t in times.items():
            row[f"{key}_ms"] = t * 1e3
            row[f"{key}_gflops"] = g / t
            row[f"{key}_of_peak"] = g / t / peak
        rows.append(row)
        print(f"  {shape[0]:22s} " + "  ".join(
            f"{key} {row[key + '_ms']:8.3f} ms {row[key + '_gflops']:8.0f} GF/s "
            f"({100 * row[key + '_of_peak']:4.1f}%)" for key in times))
    return rows


# ----------------------------------------------------------------------------- memory-bound
def bench_memory_bound(cuda, repeat: int, bandwidth: float) -> list[dict]:
    from retina_np.kernels import cuda as K

    rng = np.random.default_rng(0)
    N, C, H, W = 8, 64, 128, 128
    x = cuda.to_device(rng.standard_normal((N, C, H, W)).astype(np.float32))
    y = cuda.to_device(rng.standard_normal((N, C, H, W)).astype(np.float32))
    c = cuda.to_device(np.ones(C, np.float32))
    small = cuda.to_device(rng.standard_normal((N, C, H // 2, W // 2)).astype(np.float32))
    pooled, argmax = K.maxpool2d_forward(x, 3, 2, 1)
    param, buf = K.add_forward(x, y), K.zeros_like(x)  # sgd_update_ writes into these
    B = x.size * 4  # bytes of one (N, C, H, W) float32 array
    q = small.size * 4
    # (name, fn, compulsory bytes moved)
    cases = [
        ("relu_forward", lambda: K.relu_forward(x), 2 * B),
        ("relu_backward", lambda: K.relu_backward(x, y), 3 * B),
        ("add_forward", lambda: K.add_forward(x, y), 3 * B),
        ("batchnorm2d_forward", lambda: K.batchnorm2d_forward(x, c, c, c, c), 2 * B),
        ("batchnorm2d_stats", lambda: K.batchnorm2d_stats(x), 2 * B),  # two passes
        ("batchnorm2d_backward", lambda: K.batchnorm2d_backward(x, y, c, c, c), 5 * B),
        ("bias_backward", lambda: K.bias_backward(x), B),
        ("maxpool2d_forward 3/2", lambda: K.maxpool2d_forward(x, 3, 2, 1), B + 3 * q),
        ("maxpool2d_backward (atomic)", lambda: K.maxpool2d_backward(pooled, argmax, H, W),
         3 * q + 2 * B),
        ("maxpool2d_backward (gather)",
         lambda: K.maxpool2d_backward(pooled, argmax, H, W, window=(3, 2, 1)), 3 * q + B),
        ("upsample_forward x2", lambda: K.upsample_nearest_forward(small, H, W), q + B),
        ("upsample_backward x2", lambda: K.upsample_nearest_backward(x, H // 2, W // 2), B + q),
        ("sgd_update_", lambda: K.sgd_update_(param, y, buf, 0.1, 0.9, 1e-4), 5 * B),
    ]
    rows = []
    for name, fn, nbytes in cases:
        t = time_gpu(cuda, fn, repeat)
        gbs = nbytes / t / 1e9
        rows.append({"kernel": name, "ms": t * 1e3, "gbs": gbs, "of_copy": gbs / bandwidth})
        print(f"  {name:30s} {t * 1e3:8.3f} ms {gbs:8.1f} GB/s ({100 * gbs / bandwidth:5.1f}% "
              "of copy)")
    return rows


# ----------------------------------------------------------------------------- torch
_TORCH_SCRIPT = r"""
import json, sys, torch
shapes, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
if not torch.cuda.is_available():
    print(json.dumps({"error": "torch finds no GPU"})); sys.exit(0)
torch.backends.cudnn.benchmark = True
def timed(fn):
    fn(); torch.cuda.synchronize(); ts = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
    ts.sort(); return ts[len(ts) // 2]
out = {}
for tf32 in (False, True):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, N, C, F, H, W, k, s, p in shapes:
        x = torch.randn(N, C, H, W, device="cuda")
        w = torch.randn(F, C, k, k, device="cuda") * 0.1
        y = torch.nn.functional.conv2d(x, w, None, s, p)
        dy = torch.randn_like(y)
        g = torch.nn.grad
        out[f"{name}|{int(tf32)}"] = {
            "fwd": timed(lambda: torch.nn.functional.conv2d(x, w, None, s, p)),
            "bwd_input": timed(lambda: g.conv2d_input(x.shape, w, dy, s, p)),
            "bwd_weight": timed(lambda: g.conv2d_weight(x, w.shape, dy, s, p)),
        }
print(json.dumps({"times": out, "version": torch.__version__,
                  "cudnn": torch.backends.cudnn.version()}))
"""


def bench_torch(python: str, shapes, repeat: int, peak: float):
    """cuDNN's three passes per shape, TF32 off and on; None when torch cannot run."""
    res = subprocess.run([python, "-c", _TORCH_SCRIPT, json.dumps(shapes), str(repeat)],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        reason = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"
        print(f"  torch skipped ({python}): {reason}")
        return None
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if "error" in data:
        print(f"  torch skipped: {data['error']}")
        return None
    print(f"  torch {data['version']}, cuDNN {data['cudnn']}")
    for shape in shapes:
        g = conv_gflop(shape)
        for tf32 in (0, 1):
            t = data["times"][f"{shape[0]}|{tf32}"]
            print(f"  {shape[0]:22s} tf32={tf32} " + "  ".join(
                f"{key} {t[key] * 1e3:8.3f} ms {g / t[key]:8.0f} GF/s "
                f"({100 * g / t[key] / peak:4.1f}%)" for key in ("fwd", "bwd_input",
                                                                 "bwd_weight")))
    return data


# ----------------------------------------------------------------------------- training step
def bench_train_step(cuda, steps: int):
    """One training step of the shapes preset on the GPU vs the CPU (seconds per step)."""
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD
    from retina_np.train import train_step

    batch = next(iter(DataLoader(ShapesDataset(8, image_size=128, seed=0), 8, shuffle=False)))
    images, targets = batch[0], batch[1]
    result = {}
    for device in ("cpu", "cuda"):
        model = RetinaNet(RetinaNetConfig.shapes(), seed=0)
        try:
            model.to(device)
            opt = SGD(model.named_parameters(), lr=0.01)
            x = images if device == "cpu" else cuda.to_device(np.ascontiguousarray(images))
            train_step(model, opt, x, targets, 0.01)  # warm-up: compiles the kernels
            if device == "cuda":
                cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                train_step(model, opt, x, targets, 0.01)
            if device == "cuda":
                cuda.synchronize()
            result[device] = (time.perf_counter() - start) / steps
            print(f"  {device:4s}: {result[device] * 1e3:9.1f} ms per step (batch 8, 128x128)")
        except Exception as exc:  # the model may not run on device arrays yet
            msg = f"{type(exc).__name__}: {exc}"
            result[device] = msg
            print(f"  {device:4s}: does not run: {msg[:300]}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="python with torch for the cuDNN comparison (default: this one)")
    ap.add_argument("--no-train-step", action="store_true")
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args(argv)

    cuda, reason = _gpu_or_reason()
    if cuda is None:
        print(f"bench_cuda: no GPU to measure ({reason}); nothing to do.")
        if args.json:  # a file is still written, so that a script reading it says why
            Path(args.json).write_text(json.dumps({"skipped": reason}, indent=1))
        return 0
    repeat = 5 if args.quick else 20
    report = {}

    def save():  # after every section: a run stopped half-way still leaves what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    print("ceilings")
    report["ceilings"] = ceil_ = measure_ceilings(cuda, repeat)
    save()
    print(f"  {ceil_['device']} (sm_{ceil_['cc'][0]}{ceil_['cc'][1]}, {ceil_['sms']} SMs): "
          f"float32 FMA peak {ceil_['peak_gflops_fp32']:.0f} GFLOP/s, "
          f"copy {ceil_['copy_gbs']:.0f} GB/s")
    shapes = conv_shapes(args.quick)
    print("convolutions, float32 (ours: implicit GEMM)")
    report["convs"] = bench_convs(cuda, shapes, repeat, ceil_["peak_gflops_fp32"])
    save()
    print("memory-bound kernels, float32, (8, 64, 128, 128)")
    report["memory_bound"] = bench_memory_bound(cuda, repeat, ceil_["copy_gbs"])
    save()
    print("torch cuDNN, float32, TF32 off (0) and on (1)")
    report["torch"] = bench_torch(args.torch_python, shapes, repeat, ceil_["peak_gflops_fp32"])
    save()
    if not args.no_train_step:
        print("training step, shapes preset")
        report["train_step"] = bench_train_step(cuda, 2 if args.quick else 5)
        save()
    return 0

if __name__ == "__main__":
    sys.exit(main())
