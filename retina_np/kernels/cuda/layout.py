"""CUDA layout of the heads' outputs: the channels of every pyramid level to one row per anchor,
and back (``levels_to_rows``, ``rows_to_levels``, ``levels_layout``).

One launch per level, one thread per element in a grid-stride loop, each writing its level's
block of rows: a pure permutation, so the results equal the CPU's bit for bit.
"""

from __future__ import annotations

from numba import cuda

from retina_np.kernels.cuda import launch as cl


@cuda.jit
def _level_to_rows_kernel(x, row0, rows):
    # x (N, A*P, H, W) of one level -> its block of rows[:, row0:row0 + H*W*A, :] (N, R, P)
    N, C, H, W = x.shape
    P = rows.shape[2]
    A = C // P
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        # i walks the block in its (n, y, x, a, p) order: neighbouring threads write
        # neighbouring elements
        p = i % P
        a = (i // P) % A
        w = (i // (P * A)) % W
        h = (i // (P * A * W)) % H
        n = i // (P * A * W * H)
        rows[n, row0 + (h * W + w) * A + a, p] = x[n, a * P + p, h, w]


def levels_to_rows(levels, per_anchor):
    """Head outputs of the pyramid levels -> one row per anchor.

    levels: list of (N, A*P, H, W) -> rows (N, R, P), R = sum of H*W*A; rows run level, y, x,
    anchor, and channel a*P + p of pixel (y, x) becomes column p of row (y*W + x)*A + a of its
    level's block. One launch per level, each writing its block of rows.
    """
    n = levels[0].shape[0]
    counts = [x.shape[2] * x.shape[3] * (x.shape[1] // per_anchor) for x in levels]
    rows = cl.empty((n, sum(counts), per_anchor), levels[0].dtype)
    row0 = 0
    for x, count in zip(levels, counts):
        cl.launch_1d(_level_to_rows_kernel, x.size, x, row0, rows)
        row0 += count
    return rows


@cuda.jit
def _rows_to_level_kernel(rows, row0, x):
    # the inverse: x (N, A*P, H, W) <- rows[:, row0:row0 + H*W*A, :]
    N, C, H, W = x.shape
    P = rows.shape[2]
    A = C // P
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        a = c // P
        x[n, c, h, w] = rows[n, row0 + (h * W + w) * A + a, c - a * P]


def rows_to_levels(rows, layout, per_anchor):
    """The inverse of ``levels_to_rows``: rows (N, R, P) -> list of (N, A*P, H, W), one per
    (H, W) in layout (A = R / sum of H*W)."""
    n = rows.shape[0]
    a = rows.shape[1] // sum(h * w for h, w in layout)
    levels, row0 = [], 0
    for h, w in layout:
        x = cl.empty((n, a * per_anchor, h, w), rows.dtype)
        cl.launch_1d(_rows_to_level_kernel, x.size, rows, row0, x)
        levels.append(x)
        row0 += h * w * a
    return levels


def levels_layout(levels):
    """The (H, W) of each level (a list of device arrays), for ``rows_to_levels``."""
    return [(x.shape[2], x.shape[3]) for x in levels]
