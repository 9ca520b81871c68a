"""2-D convolution of (N, C, H, W) images on the CPU, forward and backward.

Same names, signatures and results as ``kernels/reference.py``'s loops. Each call asks
``threads.budget`` how many threads it gets and ``plan.choose_conv`` which algorithm to run
(``pointwise``, ``im2col``, ``im2col_same`` or ``winograd``); the forward writes that plan,
with what it kept, into the caller's ``ConvWorkspace``, and the weight gradient follows it.

im2col + GEMM (``im2col.py``): the convolution is (F, C*kh*kw) @ (C*kh*kw, L) for every tile
of the output (on several threads the tiles may run side by side, ``plan.tasks``, each task
unfolding and multiplying on one thread); the input gradient is the transposed product
followed by col2im; the weight gradient is the sum over tiles of dy's columns times the
unfolded input, transposed: the forward's kept tiles, or tiles unfolded again (from the
forward's kept phases, for a strided or padded input).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from retina_np.kernels import threads
from retina_np.kernels.cpu import winograd
from retina_np.kernels.cpu.im2col import (
    channel_major,
    col2im_add,
    col2im_same_add,
    from_channel_major,
    im2col,
    im2col_same,
    output_tiles,
    phases,
    same_tables,
    tile_columns,
    tile_matrices,
)
from retina_np.kernels.cpu.plan import (
    IM2COL_SAME,
    POINTWISE,
    WINOGRAD,
    choose_conv,
    out_size,
)
from retina_np.kernels.tunables import current


def conv2d_forward(x, w, b, stride, padding, workspace=None):
    """x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> y (N, F, Ho, Wo).

    workspace: None, or an empty ``ConvWorkspace`` that receives the plan and what the weight
    gradient can reuse (the unfolded input, or Winograd's transformed input) when it fits.
    """
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    # (the multiply-adds of a stride-1 convolution: an upper bound for strided ones)
    with threads.budget(x.size, macs=x.size * F * kh * kw) as budget:
        plan = choose_conv(N, C, F, ((H, W),), kh, kw, stride, padding, budget)
        if workspace is not None:
            workspace.plan = plan
        if plan.algorithm == WINOGRAD:
            kept = workspace is not None
            U = winograd.filters(w, plan.block)
            y, V = winograd.conv3x3_forward(x, N, ((H, W),), w, b, plan.block, kept,
                                            threads=budget, U=U)
            if kept:
                workspace.transformed, workspace.transformed_filters = V, U
            return y
        return _forward_gemm(x, w, b, stride, padding, plan, workspace)


def _forward_gemm(x, w, b, stride, padding, plan, workspace):
    """The pointwise and im2col forwards; workspace: None, or the ``ConvWorkspace`` that
    receives the unfolded input tile by tile where the plan keeps it, else a strided or padded
    input's phases."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    w2 = w.reshape(F, C * kh * kw)
    y = np.empty((N, F, Ho, Wo), x.dtype)
    y3 = y.reshape(N, F, Ho * Wo)
    if plan.algorithm == POINTWISE:
        np.matmul(w2, x.reshape(N, C, H * W), out=y3)  # (F, C) @ (N, C, L) -> (N, F, L)
    else:
        unfold, ph = _unfolder(x, kh, kw, stride, padding, Wo, plan)
        keep = workspace is not None and plan.keep
        if workspace is not None and not keep:
            workspace.phases = ph  # None for a "same" convolution: x itself is unfolded

        def unfold_and_multiply(tiles):
            """These tiles of y, one after another; -> the unfolded tiles where kept."""
            kept = []
            for n0, n1, oh0, oh1, cols in tile_matrices(N, Ho, C * kh * kw, Wo, x.dtype, keep,
                                                        tiles):
                unfold(n0, n1, oh0, oh1, cols)
                if keep:
                    kept.append(cols)
                if n1 - n0 == 1:
                    np.matmul(w2, cols, out=y3[n0, :, oh0 * Wo:oh1 * Wo])
                else:  # (F, n*L) -> (n, F, L)
                    y3[n0:n1] = (w2 @ cols).reshape(F, n1 - n0, Ho * Wo).transpose(1, 0, 2)
            return kept

        tiles = output_tiles(N, Ho, C * kh * kw, Wo)
        runs = [tiles[len(tiles) * t // plan.tasks:len(tiles) * (t + 1) // plan.tasks]
                for t in range(plan.tasks)]  # the plan's tasks, each a run of tiles
        for kept in threads.side_by_side(*(functools.partial(unfold_and_multiply, run)
                                           for run in runs)):
            if keep:
                workspace.columns.extend(kept)  # in the order of the tiles
    if b is not None:
        y3 += b.reshape(1, F, 1)
    return y


def _unfolder(x, kh, kw, stride, padding, Wo, plan, ph=None):
    """(a function (n0, n1, oh0, oh1, cols) that unfolds that tile of x (N, C, H, W) into cols
    (C*kh*kw, (n1-n0)*(oh1-oh0)*Wo), the phases it reads or None for a "same" convolution);
    ph: the phases, if a forward kept them."""
    H, W = x.shape[2], x.shape[3]
    if plan.algorithm == IM2COL_SAME:
        def unfold(n0, n1, oh0, oh1, cols):
            geometry, keep = same_tables(((n1 - n0, H, W, oh0, oh1, 0, 0),), kh)
            im2col_same(channel_major(x[n0:n1]), kh, geometry, keep, cols)
        return unfold, None
    if ph is None:
        ph = phases(x, padding, stride)  # (N, s, s, C, Hs, Ws)

    def unfold(n0, n1, oh0, oh1, cols):
        im2col(ph[n0:n1], kh, kw, stride, oh0, oh1, Wo, cols)
    return unfold, ph


def conv2d_backward_input(dy, w, H, W, stride, padding, workspace=None):
    """dy (N, F, Ho, Wo), w (F, C, kh, kw) -> dx (N, C, H, W).

    workspace: the forward's, if it was given one. Winograd takes the transformed filters
    kept there, and leaves its transformed output gradient there, as (dy, dM), for the
    weight gradient of the same dy (made once for both).
    """
    N, F, Ho, Wo = dy.shape
    _, C, kh, kw = w.shape
    with threads.budget(dy.size, macs=dy.size * C * kh * kw) as budget:
        kept = workspace is not None and workspace.plan is not None
        plan = (workspace.plan if kept
                else choose_conv(N, C, F, ((H, W),), kh, kw, stride, padding, budget))
        if plan.algorithm == WINOGRAD:
            m, hws = plan.block, ((H, W),)
            dM = winograd.output_gradients(dy, N, hws, m, threads=budget)
            if kept:
                workspace.output_gradient = (dy, dM)
            return winograd.conv3x3_backward_input(
                dy, w, N, hws, m, dM, threads=budget,
                U=workspace.transformed_filters if kept else None)
        w2t = w.reshape(F, C * kh * kw).T  # (C*kh*kw, F)
        dy3 = dy.reshape(N, F, Ho * Wo)
        if plan.algorithm == POINTWISE:
            return np.matmul(w2t, dy3).reshape(N, C, H, W)
        if plan.algorithm == IM2COL_SAME:
            return _backward_input_same(dy3, w2t, N, C, H, W, kh)
        dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dy.dtype)
        for n0, n1, oh0, oh1, dcols in tile_matrices(N, Ho, C * kh * kw, Wo, dy.dtype):
            np.matmul(w2t, tile_columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), out=dcols)
            col2im_add(dcols, kh, kw, stride, oh0, oh1, Wo, dxp[n0:n1])
        # the gradient that fell on the padding belongs to no input: crop it away
        return np.ascontiguousarray(dxp[:, :, padding:padding + H, padding:padding + W])


def _backward_input_same(dy3, w2t, N, C, H, W, k):
    """``conv2d_backward_input`` of a "same" k x k convolution, folded without padding."""
    dx = np.zeros((N, C, H, W), dy3.dtype)
    for n0, n1, oh0, oh1, dcols in tile_matrices(N, H, C * k * k, W, dy3.dtype):
        np.matmul(w2t, tile_columns(dy3, n0, n1, oh0 * W, oh1 * W), out=dcols)
        geometry, keep = same_tables(((n1 - n0, H, W, oh0, oh1, 0, 0),), k)
        if n1 - n0 == 1:  # one image (maybe a band of its rows): fold straight into dx
            col2im_same_add(dcols, k, geometry, keep, dx[n0].reshape(C, H * W))
        else:  # whole images: fold channel-major, then back to (n, C, H, W)
            dxc = np.zeros((C, (n1 - n0) * H * W), dy3.dtype)
            col2im_same_add(dcols, k, geometry, keep, dxc)
            dx[n0:n1] = from_channel_major(dxc, n1 - n0, H, W)
    return dx


def conv2d_backward_weight(dy, x, kh, kw, stride, padding, workspace=None):
    """dy (N, F, Ho, Wo), x (N, C, H, W) -> dw (F, C, kh, kw).

    workspace: the forward's, if it was given one; what it kept is used, not made again.
    """
    N, F, Ho, Wo = dy.shape
    C, H, W = x.shape[1:]
    with threads.budget(dy.size, macs=dy.size * C * kh * kw) as budget:
        kept = workspace is not None and (workspace.transformed is not None
                                          or bool(workspace.columns)
                                          or workspace.phases is not None)
        plan = (workspace.plan if kept
                else choose_conv(N, C, F, ((H, W),), kh, kw, stride, padding, budget))
        if plan.algorithm == WINOGRAD:
            made = workspace.output_gradient if kept else None
            if kept:
                workspace.output_gradient = None  # done with dM
            return winograd.conv3x3_backward_weight(
                dy, x, N, ((H, W),), plan.block, V=workspace.transformed if kept else None,
                dM=made[1] if made is not None and made[0] is dy else None, threads=budget)
        dy3 = dy.reshape(N, F, Ho * Wo)
        if plan.algorithm == POINTWISE:  # x itself is the (C, L) matrix
            x3 = x.reshape(N, C, Ho * Wo)
            pairs = ((tile_columns(dy3, n0, n1, l0 * Wo, l1 * Wo),
                      tile_columns(x3, n0, n1, l0 * Wo, l1 * Wo))
                     for n0, n1, l0, l1 in output_tiles(N, Ho, C, Wo))
        elif kept and workspace.columns:  # the same tiles as the forward's, already unfolded
            pairs = ((tile_columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), cols)
                     for (n0, n1, oh0, oh1), cols in zip(output_tiles(N, Ho, C * kh * kw, Wo),
                                                         workspace.columns))
        else:
            pairs = _unfolded_tiles(dy3, x, kh, kw, stride, padding, Ho, Wo, plan,
                                    workspace.phases if kept else None)
        return weight_gradient(pairs, F, C * kh * kw, dy.dtype).reshape(F, C, kh, kw)


def _unfolded_tiles(dy3, x, kh, kw, stride, padding, Ho, Wo, plan, ph=None):
    """Yield (dy's columns (F, L), x unfolded (K, L)) tile by tile, each tile unfolded into
    the same buffer once the previous one has been used; ph: the forward's phases, or None."""
    unfold, _ = _unfolder(x, kh, kw, stride, padding, Wo, plan, ph)
    for n0, n1, oh0, oh1, cols in tile_matrices(x.shape[0], Ho, x.shape[1] * kh * kw, Wo,
                                                x.dtype):
        unfold(n0, n1, oh0, oh1, cols)
        yield tile_columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), cols


def weight_gradient(pairs, F, K, dtype):
    """The sum of dy_cols @ cols.T over (dy_cols (F, L), cols (K, L)) pairs -> dw (F, K).
    Small gradients as the transposed product, which OpenBLAS runs faster when F is small
    (``options.wgrad_transposed_max``; docs/performance-history.md, "Kernel options")."""
    transposed = F * K <= current().wgrad_transposed_max
    total = None  # the first tile's product is the sum so far (no zeros to add it to)
    for dy_cols, cols in pairs:
        product = cols @ dy_cols.T if transposed else dy_cols @ cols.T  # (K, F) or (F, K)
        if total is None:
            total = product
        else:
            total += product
    if total is None:  # no tiles: an empty batch
        return np.zeros((F, K), dtype)
    return np.ascontiguousarray(total.T) if transposed else total


@njit(cache=True, nogil=True)
def bias_backward(dy):
    """dy (N, F, Ho, Wo) -> db (F,), summed in float64."""
    N, F, Ho, Wo = dy.shape
    dy3 = dy.reshape(N, F, Ho * Wo)
    db = np.empty(F, dy.dtype)
    for f in range(F):
        total = 0.0
        for n in range(N):
            for v in dy3[n, f]:
                total += v
        db[f] = total
    return db
