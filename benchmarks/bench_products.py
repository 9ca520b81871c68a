"""How fast this machine's BLAS runs the training step's small products, in the layouts the
kernels could hand it.

    python benchmarks/bench_products.py
    python benchmarks/bench_products.py --repeat 500

The shapes preset's convolutions end in products too small for a BLAS library's usual
method (pack both operands into cache-sized panels, then run its inner kernel on them) to
pay for its packing, and how fast one runs depends on details of the layout that the
arithmetic does not see. OpenBLAS, for one, multiplies products of at most 100^3
multiply-adds by "small-matrix" kernels that skip the packing, on some CPUs and for some
transpositions only. This times, on one BLAS thread, the median of ``--repeat`` calls, in
microseconds and GFLOP/s (multiply-adds x 2):

* the stem's GEMM, one tile of its forward ((16 x 147) @ (147 x 2048): 16 filters of 3x7x7,
  32 output rows of 64), as one product and as a stack of products over bands of 64 to 512
  columns (what a forward that unfolded its tile band by band would hand numpy's
  ``matmul``), each written into the output as the forward writes it;
* the heads' Winograd products of one 64-channel convolution on the 5 pyramid levels of 8
  images (36 terms, 184 tiles): the forward's (36, 64, 64) @ (36, 64, 184), and the weight
  gradient's dM @ V^T as the kernels run it (V's transposed view, the second operand
  transposed) and with V^T made contiguous beforehand; each once with the same arrays again
  ("hot": in the caches) and once cycling through the eight pairs the heads' eight
  convolutions keep ("cold": ~27 MB, more than the L2 cache of a core).

Which layout wins is the library's and the CPU's business: run this before writing a
kernel around one (docs/performance-history.md, "Seventh round", has this machine's run).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import retina_np` does, before numpy
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEM = (16, 147, 2048)  # F, C*kh*kw, one tile's output columns
BANDS = (64, 128, 256, 512)
HEADS = (36, 64, 64, 184)  # Winograd terms, F, C, tiles of 8 images on P3..P7
HEADS_CONVS = 8  # the two subnets' four 3x3 convolutions each


def _median_us(fn, repeat: int) -> float:
    """The median time of ``fn()`` over ``repeat`` calls, after 5 unrecorded, in us."""
    from bench_inference import median_us  # this folder's timing loop

    return median_us(fn, repeat, warmup=5)


def stem_rows(repeat: int, rng):
    """(name, multiply-adds, us) of the stem's tile: one product, then bands of columns."""
    import numpy as np

    F, K, L = STEM
    w = rng.standard_normal((F, K)).astype(np.float32)
    cols = rng.standard_normal((K, L)).astype(np.float32)
    y = np.empty((F, 2 * L), np.float32)  # an image's output rows: a tile is half of them
    tile = y[:, L:]
    macs = F * K * L
    rows = [("stem tile (16x147)@(147x2048), one product", macs,
             _median_us(lambda: np.matmul(w, cols, out=tile), repeat))]
    for band in BANDS:
        bands = np.ascontiguousarray(cols.reshape(K, L // band, band).transpose(1, 0, 2))
        out = tile.reshape(F, L // band, band).transpose(1, 0, 2)  # a view of y
        rows.append((f"stem tile as {L // band} bands of {band} columns", macs,
                     _median_us(lambda b=bands, o=out: np.matmul(w, b, out=o), repeat)))
    return rows


def heads_rows(repeat: int, rng):
    """(name, multiply-adds, us) of the heads' Winograd products, hot and cold."""
    import numpy as np

    T, F, C, P = HEADS
    U = [rng.standard_normal((T, F, C)).astype(np.float32) for _ in range(HEADS_CONVS)]
    V = [rng.standard_normal((T, C, P)).astype(np.float32) for _ in range(HEADS_CONVS)]
    dM = [rng.standard_normal((T, F, P)).astype(np.float32) for _ in range(HEADS_CONVS)]
    Vt = [np.ascontiguousarray(v.transpose(0, 2, 1)) for v in V]
    macs = T * F * C * P
    ways = {
        "forward U @ V": lambda i: np.matmul(U[i], V[i]),
        "weight grad dM @ V^T, V's transposed view": lambda i: np.matmul(
            dM[i], V[i].transpose(0, 2, 1)),
        "weight grad dM @ V^T, V^T contiguous": lambda i: np.matmul(dM[i], Vt[i]),
    }
    rows = []
    for name, fn in ways.items():
        rows.append((f"heads {name}, hot", macs, _median_us(lambda f=fn: f(0), repeat)))
        calls = itertools.count()  # each call the next convolution's arrays
        rows.append((f"heads {name}, cold", macs,
                     _median_us(lambda f=fn, c=calls: f(next(c) % HEADS_CONVS), repeat)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    for lib in threadpool_info():
        if lib["user_api"] == "blas":
            print(f"BLAS: {lib['internal_api']} {lib['version']} ({lib.get('architecture')}),"
                  f" {Path(lib['filepath']).name}")
    print(f"one BLAS thread; median of {args.repeat} calls")
    rng = np.random.default_rng(0)
    with threadpool_limits(1, user_api="blas"):
        rows = stem_rows(args.repeat, rng) + heads_rows(args.repeat, rng)
    print(f"{'product':62s} {'us':>9s} {'GFLOP/s':>8s}")
    for name, macs, us in rows:
        print(f"{name:62s} {us:9.1f} {2e-3 * macs / us:8.1f}")


if __name__ == "__main__":
    main()
