"""Winograd's F(4x4, 3x3) on one thread: each transform, the GEMMs, and the whole convolution.

For the heads' Joint (n=8, C=F=64, levels 16x16 .. 1x1, the shapes preset's training step)
and the backbone's and FPN's 3x3 "same" convolutions that run by Winograd on a one-thread
budget, it times (float32, one Numba thread, one BLAS thread, best of --repeats calls):
the input transform and its adjoint, the output transform and its adjoint, the filter
transform and its adjoint, the 36 GEMMs of the forward, and conv3x3_forward,
conv3x3_backward_input and conv3x3_backward_weight (with the forward's V) of winograd.py.

    python benchmarks/bench_winograd.py                  # the table, in microseconds
    python benchmarks/bench_winograd.py --cold           # first-call compile times instead

Compare two versions of the kernels by running it with PYTHONPATH set to each checkout in
turn (the script imports whichever retina_np comes first on the path).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as bench_kernels.py

import numba  # noqa: E402
import numpy as np  # noqa: E402

# (name, n, C = F, levels): the heads' Joint, then (N, C, H, W) images on one level
SHAPES = [
    ("heads joint 64", 8, 64, ((16, 16), (8, 8), (4, 4), (2, 2), (1, 1))),
    ("layer1 16x32x32", 8, 16, ((32, 32),)),
    ("layer2 32x16x16", 8, 32, ((16, 16),)),
    ("layer3 64x8x8", 8, 64, ((8, 8),)),
]
M_BLOCK = 4  # F(4x4, 3x3)


def best(fn, repeats):
    """The fastest of ``repeats`` calls, in microseconds (a shared machine only adds time)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e6


def cases(n, C, hws, dtype=np.float32):
    """name -> a call with its arguments ready, for one shape."""
    from retina_np.kernels.cpu import winograd as wg
    from retina_np.kernels.cpu import winograd_f2 as f2

    rng = np.random.default_rng(0)
    F, m, terms = C, M_BLOCK, (M_BLOCK + 2) ** 2
    T = n * sum(h * w for h, w in hws)
    if len(hws) > 1:
        x, dy = (rng.standard_normal((C, T)).astype(dtype),
                 rng.standard_normal((F, T)).astype(dtype))
    else:
        x, dy = (rng.standard_normal((n, C) + hws[0]).astype(dtype),
                 rng.standard_normal((n, F) + hws[0]).astype(dtype))
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    table, P = f2.tiles(n, hws, m)
    cs, ms = f2.strides(x, n, hws)
    t_in, t_in_adj, t_out, t_out_adj = wg.TRANSFORMS[m]
    V = rng.standard_normal((terms, C, P)).astype(dtype)
    M = rng.standard_normal((terms, F, P)).astype(dtype)
    U = rng.standard_normal((terms, F, C)).astype(dtype)  # (no kernel runs before the timing)
    out, flat = np.empty_like(x), x.reshape(-1)
    dU = rng.standard_normal((terms, F, C)).astype(dtype)
    return {
        "input_transform": lambda: t_in(flat, cs, ms, n, table, V, 0, C),
        "input_adjoint": lambda: t_in_adj(V, n, table, out.reshape(-1), cs, ms, 0, C),
        "output_transform": lambda: t_out(M, n, table, b, out.reshape(-1), cs, ms, 0, F),
        "output_adjoint": lambda: t_out_adj(dy.reshape(-1), cs, ms, n, table, M, 0, F),
        "filters": lambda: wg.filters(w, m),
        "filters_adjoint": lambda: wg.filters_adjoint(dU),
        "36 GEMMs": lambda: np.matmul(U, V),
        "conv forward": lambda: wg.conv3x3_forward(x, n, hws, w, b, m, keep=True),
        "conv backward_input": lambda: wg.conv3x3_backward_input(dy, w, n, hws, m),
        "conv backward_weight": lambda: wg.conv3x3_backward_weight(dy, x, n, hws, m, V=V),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--cold", action="store_true",
                        help="time each kernel's first call (run with a fresh NUMBA_CACHE_DIR)")
    args = parser.parse_args()
    numba.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        if args.cold:
            name, n, C, hws = SHAPES[0]
            for dtype in (np.float32, np.float64):
                start = time.perf_counter()
                for key, call in cases(n, C, hws, dtype).items():
                    t = time.perf_counter()
                    call()
                    print(f"{np.dtype(dtype).name:8s} {key:22s} {time.perf_counter() - t:7.2f} s")
                print(f"{np.dtype(dtype).name:8s} {'all (first calls)':22s} "
                      f"{time.perf_counter() - start:7.2f} s")
            return
        table = {name: {key: best(call, args.repeats)
                        for key, call in cases(n, C, hws).items()}
                 for name, n, C, hws in SHAPES}
    names = [name for name, *_ in SHAPES]
    print(f"{'us, best of ' + str(args.repeats):22s}" + "".join(f"{s:>17s}" for s in names))
    for key in table[names[0]]:
        print(f"{key:22s}" + "".join(f"{table[s][key]:17.1f}" for s in names))


if __name__ == "__main__":
    main()
