"""Convolution kernel speed against a plain GEMM of the same size, and compile times.

For each convolution shape it times our forward, input-gradient and weight-gradient
kernels (float32, CPU; as a training layer calls them, the backward reusing what the forward
kept) and, in the same run, a float32 GEMM of the forward's M x K x N
(numpy's matmul, OpenBLAS) -- the ceiling an im2col convolution aims at -- and, when torch is
installed, torch's conv2d forward + backward (in a separate process with its own defaults).
It then measures the cold compile time of every kernel (fresh NUMBA_CACHE_DIR, a new
process) and the warm start (cache filled).

    python benchmarks/bench_kernels.py            # full table
    python benchmarks/bench_kernels.py --quick    # fewer shapes and repeats

GFLOP/s counts 2*N*F*C*kh*kw*Ho*Wo per pass (each of the three passes is one GEMM of that
size). "ratio" is the GEMM's time for three passes over our time for the three passes.
Times are the best of several runs: other processes on a shared machine only add time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each GEMM, taking a core from
# the im2col loop that follows; 4 (2^4 cycles) puts them to sleep at once. OpenBLAS reads it
# when numpy loads it, so it is set before anything imports numpy. Pass
# OPENBLAS_THREAD_TIMEOUT=28 to measure OpenBLAS's default.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (name, N, C, F, H, W, k, stride, padding)
SHAPES_MODEL = [  # the "shapes" preset: 128x128 images, batch 8, widths 16..128, FPN/head 64
    ("stem 7x7/2", 8, 3, 16, 128, 128, 7, 2, 3),
    ("layer1 3x3", 8, 16, 16, 32, 32, 3, 1, 1),
    ("layer2 3x3/2", 8, 16, 32, 32, 32, 3, 2, 1),
    ("layer2 1x1/2 down", 8, 16, 32, 32, 32, 1, 2, 0),
    ("layer3 3x3", 8, 64, 64, 8, 8, 3, 1, 1),
    ("layer4 3x3", 8, 128, 128, 4, 4, 3, 1, 1),
    ("fpn lateral 1x1", 8, 32, 64, 16, 16, 1, 1, 0),
    ("fpn/head 3x3 P3", 8, 64, 64, 16, 16, 3, 1, 1),
    ("head 3x3 P5", 8, 64, 64, 4, 4, 3, 1, 1),
    ("head 3x3 P7", 8, 64, 64, 1, 1, 3, 1, 1),
    ("cls logits P3", 8, 64, 27, 16, 16, 3, 1, 1),
    ("target 3x3 128", 8, 128, 128, 32, 32, 3, 1, 1),
]
RESNET50_512 = [  # ResNet-50 on one 512x512 image
    ("r50 conv1 7x7/2", 1, 3, 64, 512, 512, 7, 2, 3),
    ("r50 l1 1x1 64>64", 1, 64, 64, 128, 128, 1, 1, 0),
    ("r50 l1 3x3 64", 1, 64, 64, 128, 128, 3, 1, 1),
    ("r50 l1 1x1 64>256", 1, 64, 256, 128, 128, 1, 1, 0),
    ("r50 l2 3x3/2 128", 1, 128, 128, 128, 128, 3, 2, 1),
    ("r50 l2 1x1/2 down", 1, 256, 512, 128, 128, 1, 2, 0),
    ("r50 l2 3x3 128", 1, 128, 128, 64, 64, 3, 1, 1),
    ("r50 l3 3x3 256", 1, 256, 256, 32, 32, 3, 1, 1),
    ("r50 l3 1x1 1024>256", 1, 1024, 256, 32, 32, 1, 1, 0),
    ("r50 l4 3x3 512", 1, 512, 512, 16, 16, 3, 1, 1),
    ("r50 l4 1x1 512>2048", 1, 512, 2048, 16, 16, 1, 1, 0),
]
QUICK = ["stem 7x7/2", "layer1 3x3", "fpn/head 3x3 P3", "head 3x3 P7", "target 3x3 128",
         "r50 conv1 7x7/2", "r50 l1 3x3 64", "r50 l3 1x1 1024>256"]


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def gflop(shape) -> float:
    _, N, C, F, H, W, k, s, p = shape
    return 2 * N * F * C * k * k * out_size(H, k, s, p) * out_size(W, k, s, p) / 1e9


def arrays(shape, np, dtype="float32"):
    _, N, C, F, H, W, k, s, p = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((F, C, k, k)) * 0.1).astype(dtype)
    dy = rng.standard_normal((N, F, out_size(H, k, s, p), out_size(W, k, s, p))).astype(dtype)
    return x, w, dy


# ----------------------------------------------------------------------------- ours + GEMM
def busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes were busy, CPU seconds of this process and its children)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # no idle
    except OSError:  # not Linux
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def wait_quiet(max_wait: float, window: float = 2.0, threshold: float = 0.1) -> float:
    """Wait (up to max_wait s) until other processes use < threshold CPUs over `window` s.

    On a shared machine a neighbour's job stretches our parallel regions (a thread that must
    wait for a core holds up the whole team) far more than it slows one GEMM. Returns the
    CPUs the others used in the last window.
    """
    deadline = time.perf_counter() + max_wait
    while True:
        b0 = busy_seconds()
        time.sleep(window)
        b1 = busy_seconds()
        others = ((b1[0] - b0[0]) - (b1[1] - b0[1])) / window
        if others < threshold or time.perf_counter() > deadline:
            return others


def clean_times(fns: dict, repeat, min_time, max_wait, tries=4) -> tuple[dict, float]:
    """Best time of each fn, the fns taking turns run by run (so that a slow spell of the
    machine hits them all alike). A round during which other processes used the CPUs is
    re-run, up to `tries` rounds. Returns the times and the CPUs the others used last round.
    """
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():  # warm-up: compile, allocate, fault the pages in
        fn()
    for _ in range(tries):
        if max_wait > 0:
            wait_quiet(max_wait)
        b0, t0 = busy_seconds(), time.perf_counter()
        runs = 0
        while runs < repeat or time.perf_counter() - t0 < min_time * len(fns):
            for key, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t)
            runs += 1
        b1, wall = busy_seconds(), time.perf_counter() - t0
        others = ((b1[0] - b0[0]) - (b1[1] - b0[1])) / wall
        if others < 0.05:
            break
    return best, others


def time_ours(shape, repeat, min_time, max_wait=0.0) -> tuple[dict, float]:
    """Best times (s) of the GEMM and of our three kernels for one shape."""
    import numpy as np

    from retina_np.kernels import cpu
    from retina_np.kernels.workspace import ConvWorkspace

    name, N, C, F, H, W, k, s, p = shape
    x, w, dy = arrays(shape, np)
    L = dy.shape[2] * dy.shape[3]
    a = np.random.default_rng(1).standard_normal((F, C * k * k)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((C * k * k, N * L)).astype(np.float32)
    # As a training layer runs them: the forward keeps what the backward reuses (the
    # unfolded or transformed input, Winograd's transformed filters) in a workspace, and the
    # weight gradient takes what the input gradient left there (Winograd's transformed
    # output gradient, made once for both).
    ws = ConvWorkspace()
    cpu.conv2d_forward(x, w, None, s, p, ws)
    cpu.conv2d_backward_input(dy, w, H, W, s, p, ws)
    made = ws.output_gradient

    def weight():
        ws.output_gradient = made
        return cpu.conv2d_backward_weight(dy, x, k, k, s, p, ws)

    return clean_times({
        "gemm": lambda: a @ b,
        "fwd": lambda: cpu.conv2d_forward(x, w, None, s, p, ConvWorkspace()),
        "in": lambda: cpu.conv2d_backward_input(dy, w, H, W, s, p, ws),
        "w": weight,
    }, repeat, min_time, max_wait)


def bench_ours(shapes, repeat, min_time, max_wait):
    rows = []
    for shape in shapes:
        t, others = time_ours(shape, repeat, min_time, max_wait)
        rows.append({"shape": shape, "t": t, "others": others})
        print(f"  measured {shape[0]} (others used {others:.2f} CPUs meanwhile)",
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- torch
def time_torch(shape, repeat, min_time, max_wait=0.0) -> float:
    """Best time (s) of PyTorch's ``conv2d`` forward and backward for one shape (torch is
    imported here: the benchmarks run it in a process of its own)."""
    import numpy as np
    import torch

    x, w, dy = (torch.from_numpy(a) for a in arrays(shape, np))
    x.requires_grad_(True)
    w.requires_grad_(True)

    def step():
        y = torch.nn.functional.conv2d(x, w, None, shape[7], shape[8])
        y.backward(dy)
        x.grad = None
        w.grad = None

    return clean_times({"step": step}, repeat, min_time, max_wait)[0]["step"]


TORCH_WORKER = """
import json, sys
import torch
sys.path.insert(0, {repo!r})
from benchmarks.bench_kernels import time_torch
out = {{shape[0]: time_torch(shape, {repeat}, {min_time}, {max_wait})
       for shape in json.loads(sys.argv[1])}}
print(json.dumps({{"times": out, "threads": torch.get_num_threads(),
                  "version": torch.__version__}}))
"""


def bench_torch(shapes, repeat, min_time, max_wait):
    """torch's forward + backward per shape, in a clean process; None without torch."""
    code = TORCH_WORKER.format(repo=str(REPO), repeat=repeat, min_time=min_time,
                               max_wait=max_wait)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",)}
    try:
        res = subprocess.run([sys.executable, "-c", code, json.dumps(shapes)], env=env,
                             capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        if "No module named 'torch'" not in res.stderr:
            print(res.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- compile
COMPILE_WORKER = """
import time
t0 = time.perf_counter()
import numpy as np
from retina_np import ops
t1 = time.perf_counter()
for dt in {dtypes}:
    x = np.ones((2, 3, 6, 6), dt); g = np.ones(3, dt)
    for w in (np.ones((4, 3, 3, 3), dt), np.ones((4, 3, 1, 1), dt)):
        y, c = ops.conv2d_forward(x, w, np.zeros(4, dt), 1, w.shape[2] // 2)
        ops.conv2d_backward(y, c)
    y, c = ops.batchnorm2d_forward(x, g, g.copy(), g.copy(), g.copy(), True)
    ops.batchnorm2d_backward(y, c)
    y, c = ops.relu_forward(x); ops.relu_backward(y, c)
    y, c = ops.maxpool2d_forward(x); ops.maxpool2d_backward(y, c)
    y, c = ops.upsample_nearest_forward(x, (12, 12)); ops.upsample_nearest_backward(y, c)
    ops.add_forward(x, x)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def bench_compile(dtypes: str):
    """(cold, warm) wall seconds of a new process importing the ops and calling every kernel."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        times = []
        for _ in range(2):  # the first run fills the cache, the second reads it
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", COMPILE_WORKER.format(dtypes=dtypes)],
                                 env=env, capture_output=True, text=True, check=True)
            total = time.perf_counter() - t0
            imp, calls = (float(v) for v in res.stdout.split())
            times.append((total, imp, calls))
    return times


# ----------------------------------------------------------------------------- report
def environment() -> list[str]:
    import numba
    import numpy as np

    from retina_np.kernels import cpu

    x = np.ones((2, 2, 4, 4), np.float32)
    cpu.batchnorm2d_stats(x)  # starts numba's thread pool, so that its layer is known
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    lines = [
        f"numpy {np.__version__} ({blas.get('name')} {blas.get('version')}), numba "
        f"{numba.__version__}: {numba.get_num_threads()} threads, layer "
        f"{numba.threading_layer()}, {os.cpu_count()} CPUs",
        "OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "(unset)")
        + ", OPENBLAS_THREAD_TIMEOUT=" + os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset)")
        + ", OPENBLAS_NUM_THREADS=" + os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
    ]
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            lines.append(f"threadpool: {pool['internal_api']} {pool.get('version')} "
                         f"{pool['num_threads']} threads ({Path(pool['filepath']).name})")
    except ImportError:
        lines.append("threadpoolctl not installed: BLAS threads = OpenBLAS default "
                     "(one per CPU)")
    return lines


def table(rows, torch_res) -> list[str]:
    """A markdown table, one row per shape and a total row (all shapes' times added)."""
    head = (f"| {'shape':<20} | {'N,C>F,HxW,k/s/p':<24} | {'GFLOP':>6} | {'GEMM':>6} | "
            f"{'fwd':>6} | {'in':>6} | {'w':>6} | {'ms':>7} | {'ratio':>5} |")
    if torch_res:
        head += f" {'torch':>6} | {'t.ratio':>7} |"
    sep = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    lines = [head, sep]
    total = {"g": 0.0, "gemm": 0.0, "fwd": 0.0, "in": 0.0, "w": 0.0, "torch": 0.0}

    def line(name, desc, g, t, tt):
        ours = t["fwd"] + t["in"] + t["w"]
        text = (f"| {name:<20} | {desc:<24} | {g:6.3f} | {g / t['gemm']:6.1f} | "
                f"{g / t['fwd']:6.1f} | {g / t['in']:6.1f} | {g / t['w']:6.1f} | "
                f"{1e3 * ours:7.1f} | {3 * t['gemm'] / ours:5.2f} |")
        if tt is not None:
            text += f" {3 * g / tt:6.1f} | {3 * t['gemm'] / tt:7.2f} |"
        return text

    for r in rows:
        name, N, C, F, H, W, k, s, p = r["shape"]
        g, t = gflop(r["shape"]), r["t"]
        tt = torch_res["times"][name] if torch_res else None
        lines.append(line(name, f"{N},{C}>{F},{H}x{W},{k}/{s}/{p}", g, t, tt))
        total["g"] += g
        for key in ("gemm", "fwd", "in", "w"):
            total[key] += t[key]
        total["torch"] += tt or 0.0
    lines.append(line("**all shapes**", "", total["g"], total,
                      total["torch"] if torch_res else None))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--no-torch", action="store_true", help="skip torch's conv2d")
    parser.add_argument("--no-compile", action="store_true", help="skip compile times")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each shape wait up to S seconds for other processes to "
                             "go idle (0: do not wait)")
    args = parser.parse_args(argv)

    shapes = SHAPES_MODEL + RESNET50_512
    repeat, min_time = (5, 0.2) if args.quick else (15, 1.0)
    if args.quick:
        shapes = [s for s in shapes if s[0] in QUICK]
    load0, busy0, wall0 = os.getloadavg()[0], busy_seconds(), time.perf_counter()
    out = ["command: python benchmarks/bench_kernels.py" + (" --quick" if args.quick else ""),
           *environment()]
    print("\n".join(out), flush=True)

    rows = bench_ours(shapes, repeat, min_time, args.wait_quiet)
    torch_res = None if args.no_torch else bench_torch(shapes, repeat, min_time, args.wait_quiet)
    lines = ["", "GFLOP/s, float32. GEMM: numpy matmul of the forward's M x K x N; fwd / in / w:"
             " our forward, input-gradient and weight-gradient kernels; ms: our three passes;"
             " ratio: GEMM time x 3 / our three passes" + ("; torch: conv2d forward+backward,"
                                                           " t.ratio likewise" if torch_res
                                                           else "") + ".", ""]
    for title, group in (("shapes preset (128x128, batch 8)", SHAPES_MODEL),
                         ("ResNet-50, one 512x512 image", RESNET50_512)):
        names = {g[0] for g in group}
        picked = [r for r in rows if r["shape"][0] in names]
        if picked:
            lines += [f"{title}:", "", *table(picked, torch_res), ""]
    if torch_res:
        lines.append(f"\ntorch {torch_res['version']}, {torch_res['threads']} threads")
    else:
        lines.append("\ntorch not measured (not installed or --no-torch)")

    if not args.no_compile:
        lines.append("")
        for label, dtypes in (("float32 only", "(np.float32,)"),
                              ("float32 and float64", "(np.float32, np.float64)")):
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet)
            (cold, imp_c, calls_c), (warm, imp_w, calls_w) = bench_compile(dtypes)
            lines.append(f"compile, every kernel, {label}: cold {cold:.1f} s (import {imp_c:.1f}"
                         f" s, first calls {calls_c:.1f} s); warm start {warm:.1f} s (import "
                         f"{imp_w:.1f} s, first calls {calls_w:.2f} s), new process each")
    busy1, wall = busy_seconds(), time.perf_counter() - wall0
    others = (busy1[0] - busy0[0]) - (busy1[1] - busy0[1])
    lines.append(f"\nother processes used {others / wall:.2f} of {os.cpu_count()} CPUs during the "
                 f"run (load average before / after: {load0:.2f} / {os.getloadavg()[0]:.2f})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
