"""The heads' outputs between their per-level layout and one row per anchor (CPU).

The heads make (N, A*P, H, W) per level (or one Joint of them); the loss and the postprocess
read (N, R, P), rows ordered level, y, x, anchor. Same names as ``kernels/cuda/layout.py``.
"""

from __future__ import annotations

import numpy as np

from retina_np.kernels.levels import Joint


def levels_to_rows(levels, per_anchor):
    """Head outputs of the pyramid levels -> one row per anchor.

    levels: list of (N, A*P, H, W), or their Joint (A*P, T) -> rows (N, R, P), R = sum of
    H*W*A; rows run level, y, x, anchor, and channel a*P + p of pixel (y, x) becomes column p
    of row (y*W + x)*A + a of its level's block: a reshape to (N, A, P, H, W) and one
    transpose to (N, H, W, A, P).
    """
    blocks = _level_blocks(levels, per_anchor)  # (N, A, P, H, W) per level
    n = blocks[0].shape[0]
    counts = [h * w * a for _, a, _, h, w in (b.shape for b in blocks)]
    rows = np.empty((n, sum(counts), per_anchor), blocks[0].dtype)
    row0 = 0
    for block, count in zip(blocks, counts):
        _, a, _, h, w = block.shape
        # the level's block of rows seen as (N, H, W, A, P): splitting an axis, so a view, and
        # the transposed copy goes straight into the result (no concatenation afterwards)
        rows[:, row0:row0 + count].reshape(n, h, w, a, per_anchor)[...] = \
            block.transpose(0, 3, 4, 1, 2)
        row0 += count
    return rows


def _level_blocks(levels, per_anchor):
    """Each level of a list or a Joint as an (N, A, P, H, W) view."""
    if isinstance(levels, Joint):
        starts, n, ap = levels.starts, levels.n, levels.data.shape[0]
        return [levels.data[:, a:b].reshape(ap // per_anchor, per_anchor, n, h, w)
                .transpose(2, 0, 1, 3, 4) for (h, w), a, b in zip(levels.hws, starts, starts[1:])]
    return [x.reshape(x.shape[0], x.shape[1] // per_anchor, per_anchor, *x.shape[2:])
            for x in levels]


def levels_layout(levels):
    """What ``rows_to_levels`` needs to give rows back in the layout of levels (a list of
    arrays: their (H, W); a Joint: the Joint without its data)."""
    if isinstance(levels, Joint):
        return levels.like(None)
    return [(x.shape[2], x.shape[3]) for x in levels]


def rows_to_levels(rows, layout, per_anchor):
    """The inverse of ``levels_to_rows``: rows (N, R, P) -> the levels in ``layout`` (from
    ``levels_layout``): a list of (N, A*P, H, W), one per (H, W), or a Joint (A*P, T)."""
    n = rows.shape[0]
    hws = layout.hws if isinstance(layout, Joint) else layout
    a = rows.shape[1] // sum(h * w for h, w in hws)
    if isinstance(layout, Joint):
        out = layout.like(np.empty((a * per_anchor, rows.shape[1] * n // a), rows.dtype))
        targets = _level_blocks(out, per_anchor)
    else:
        targets = [np.empty((n, a, per_anchor, h, w), rows.dtype) for h, w in hws]
    row0 = 0
    for (h, w), target in zip(hws, targets):
        block = rows[:, row0:row0 + h * w * a].reshape(n, h, w, a, per_anchor)
        target[...] = block.transpose(0, 3, 4, 1, 2)
        row0 += h * w * a
    if isinstance(layout, Joint):
        return out
    return [t.reshape(n, a * per_anchor, h, w) for t, (h, w) in zip(targets, hws)]


