"""Fast CPU kernels: ``@njit`` loops plus BLAS matrix products (see ``kernels/__init__.py``).

Same names, signatures and results as ``reference.py``. Convolution is im2col + GEMM (the
GEMM is numpy's ``@``, i.e. OpenBLAS): pad the input with zeros, unfold every (kh, kw) patch
into a column, and the convolution becomes a product with the (F, C*kh*kw) weight matrix.
The input gradient is the transposed product followed by col2im, which adds each column back
onto the patch it came from. A 1x1, stride-1, unpadded convolution needs no unfolding: the
input already is that matrix. The heads' 3x3 convolutions on a Joint of levels run as
Winograd's F(4x4, 3x3) instead (``winograd.py``, ``_winograd``), and so do the backbone's
where they run on one thread (``_winograd_images``).

Threads: the ``prange`` loops (numba's pool) and the GEMMs (OpenBLAS's pool) take turns and
each uses every core, so neither pool may keep spinning once its part is done. GNU OpenMP's
idle workers spin by default and steal the cores from the BLAS threads (a 3x slower GEMM
measured on 2 cores), so unless the user chose otherwise they are asked to sleep. OpenBLAS's
idle threads spin too (~0.1 s after every GEMM), which halves the speed of the im2col loop
that follows; ``OPENBLAS_THREAD_TIMEOUT=4`` stops that, but OpenBLAS reads it only when numpy
loads it, so it has to be in the environment before numpy is imported: ``retina_np/__init__.py``
sets it (docs/performance.md).
"""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba starts its OpenMP pool

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from retina_np.kernels import levels, winograd  # noqa: E402
from retina_np.kernels.levels import Joint  # noqa: E402

# side_by_side: the heads' subnets; serial_when_small: the backbone's small kernels
from retina_np.kernels.threads import serial_when_small, side_by_side  # noqa: E402, F401

# About the largest im2col matrix (elements; 4 MB in float32). The output is cut into tiles
# whose unfolded input stays this small: several whole images when they are small (one larger
# GEMM instead of many tiny ones), else bands of output rows (a batch of 512x512 images would
# unfold into hundreds of megabytes). Limits from 2^18 to 2^22 ran equally fast.
COLS_MAX_ELEMENTS = 1 << 20

# The largest unfolded input (elements, all tiles together; 32 MB in float32) that the forward
# keeps for the weight gradient when the caller asks (``columns=[]``): the weight gradient then
# multiplies with it instead of unfolding the same input a second time. Every convolution of
# the shapes preset is kept, the stem's 4.8M elements too (its weight gradient 5.4 -> 3.0 ms
# in the training step, for 19 MB more); large images are unfolded again, so that training a
# big model does not hold gigabytes.
KEEP_MAX_ELEMENTS = 1 << 23

# The heads' 3x3 convolutions on a Joint (kernels/levels.py) run by Winograd's algorithm
# (winograd.py; the numbers in this paragraph were measured with F(2x2, 3x3)) where that pays:
# at least WINOGRAD_MIN_TILES 2x2 blocks of outputs, so that each of its GEMMs is large
# enough, and a transformed input of at most KEEP_MAX_ELEMENTS.
# The shapes preset's heads have 688 tiles at batch 8: the training step 102 -> 87 ms (each
# subnet runs on one core, where the im2col GEMM with K = 9*64 ran at 64-72 GFLOP/s and the 16
# with K = 64 at 90). Small levels alone were slower by Winograd: 64 channels at 8x8 1.12 ->
# 1.60 ms and 128 at 4x4 1.24 -> 2.91 ms forward and backward. The backbone's and the FPN's
# 3x3 convolutions of (N, C, H, W) images take it where they run on one thread
# (``_winograd_images``: inside a task, or small enough for ``serial_when_small``), as all of
# them do in the shapes preset's training step but the stem: the 64-channel P3 output conv,
# forward and both gradients on one core, 8.0 -> 4.7-5.6 ms, layer1's 16 channels at 32x32
# 3.2-3.9 -> 2.1-2.9 ms; the step 100.1 -> 95.2 and 100.0 -> 98.5 ms in alternating steps
# (faster in 60% and 67% of the pairs; benchmarks/bench_alternating.py winograd-images). On
# every core (with its transforms on one thread) it was no faster than im2col + GEMM, whose
# GEMM and unfolding use every core (docs/performance.md). WINOGRAD = False: im2col + GEMM
# for the heads; WINOGRAD_IMAGES = False: for the images (comparisons).
WINOGRAD = True
WINOGRAD_MIN_TILES = 512
WINOGRAD_IMAGES = True
# The side of the blocks of outputs: 4, Winograd's F(4x4, 3x3) (36 products per channel pair
# for 16 outputs, against 64 by F(2x2, 3x3)), or 2 (comparisons). With 4 a head layer of the
# shapes preset on one core, forward 2.77 -> 1.95 ms and backward 5.37 -> 4.17 ms, the FPN's
# P3 output conv 1.82 -> 1.41 and 4.15 -> 2.46 ms (the best of 40 calls, ad-hoc timing).
WINOGRAD_OUT = 4


def _winograd(n, C, F, hws, k):
    """The block side (``WINOGRAD_OUT``) if a "same" k x k convolution of a Joint of n images
    with levels hws (C -> F channels) runs by Winograd's algorithm, else 0. The size test
    counts 2x2 blocks whatever the block side, so that both sides take the same layers."""
    if not WINOGRAD or k != 3:
        return 0
    blocks = winograd.tiles(n, tuple(hws), 2)[1]  # 2x2 blocks of outputs
    kept = (WINOGRAD_OUT + 2) ** 2 * max(C, F) * winograd.tiles(n, tuple(hws), WINOGRAD_OUT)[1]
    return WINOGRAD_OUT if blocks >= WINOGRAD_MIN_TILES and kept <= KEEP_MAX_ELEMENTS else 0


def _kept_block_side(columns):
    """Which way the forward went, from the matrices it kept: Winograd's block side for V, the
    transformed input (3-D), or 0 for im2col's 2-D matrices."""
    return winograd.block_side(columns[0]) if columns[0].ndim == 3 else 0


def _winograd_images(N, C, F, H, W, kh, kw, stride, padding):
    """The block side if a convolution of (N, C, H, W) images runs by Winograd's algorithm,
    else 0: a "same" 3x3 one that ``_winograd`` allows, called on one thread (inside a task,
    or small enough for ``serial_when_small``; its transforms run on one thread)."""
    if not (WINOGRAD_IMAGES and kh == kw == 3 and stride == 1 and padding == 1
            and numba.get_num_threads() == 1):
        return 0
    return _winograd(N, C, F, ((H, W),), 3)


def _out_size(n_in: int, k: int, stride: int, padding: int) -> int:
    return (n_in + 2 * padding - k) // stride + 1


def _tiles(N: int, Ho: int, row_elements: int):
    """(n0, n1, oh0, oh1) tiles of the output of even sizes, each unfolding to about
    COLS_MAX_ELEMENTS or less (more only when one output row is larger).

    row_elements is the im2col size of one output row of one image (C*kh*kw*Wo).
    """
    image_elements = row_elements * Ho
    if image_elements <= COLS_MAX_ELEMENTS:  # whole images, as evenly split as possible
        pieces = -(-N * image_elements // COLS_MAX_ELEMENTS)
        step = -(-N // pieces)
        return [(n0, min(n0 + step, N), 0, Ho) for n0 in range(0, N, step)]
    pieces = -(-image_elements // COLS_MAX_ELEMENTS)  # bands of rows of one image
    rows = -(-Ho // pieces)
    return [(n, n + 1, oh0, min(oh0 + rows, Ho)) for n in range(N) for oh0 in range(0, Ho, rows)]


def _tile_matrices(N: int, Ho: int, K: int, Wo: int, dtype, keep: bool = False):
    """Yield (n0, n1, oh0, oh1, cols): the tiles, each with a (K, n*(oh1-oh0)*Wo) matrix to
    fill, all views of one buffer (allocating, and page-faulting, one per tile costs time).

    keep: every tile gets its own part of the buffer, so all of them outlive the loop."""
    tiles = _tiles(N, Ho, K * Wo)
    sizes = [K * (n1 - n0) * (oh1 - oh0) * Wo for n0, n1, oh0, oh1 in tiles]
    buffer = np.empty(sum(sizes) if keep else max(sizes), dtype)
    offset = 0
    for (n0, n1, oh0, oh1), size in zip(tiles, sizes):
        yield n0, n1, oh0, oh1, buffer[offset:offset + size].reshape(K, -1)
        offset += size if keep else 0


def _columns(a, n0, n1, l0, l1):
    """Images n0:n1, positions l0:l1 of a (N, K, L) as a (K, n*(l1-l0)) matrix (a copy if n > 1)."""
    if n1 - n0 == 1:
        return a[n0, :, l0:l1]
    return a[n0:n1, :, l0:l1].transpose(1, 0, 2).reshape(a.shape[1], -1)


def _pad(x, padding):
    """x (N, C, H, W) with `padding` zeros on each side of H and W (x itself if padding is 0)."""
    if padding == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), x.dtype)
    xp[:, :, padding:padding + H, padding:padding + W] = x
    return xp


# ----------------------------------------------------------------------------- convolution
# A strided convolution reads every s-th pixel of a row: a gather that does not vectorise
# (the stride-2 7x7 stem of the shapes preset: 1.9-2.4 ms to unfold on 2 cores). So the
# padded input is first cut into its s*s phases, phase (a, b) holding the pixels (s*h + a,
# s*w + b); tap (i, j) then reads phase (i % s, j % s) at offset (i // s, j // s), one unit-step
# copy per output row (0.3 ms to cut, 0.7 ms to unfold). With stride 1 the one phase is the
# padded input itself, a view.
def _phases(xp, stride):
    """Padded images xp (n, C, Hp, Wp) -> their phases (n, s, s, C, ceil(Hp/s), ceil(Wp/s)),
    images first, so that a tile of images is a contiguous slice."""
    N, C, Hp, Wp = xp.shape
    if stride == 1:
        return xp.reshape(N, 1, 1, C, Hp, Wp)
    return _cut_phases(xp, stride)


@njit(parallel=True, cache=True, nogil=True)
def _cut_phases(xp, s):
    N, C, Hp, Wp = xp.shape
    out = np.zeros((N, s, s, C, -(-Hp // s), -(-Wp // s)), xp.dtype)
    for t in prange(N * C):
        n, c = t // C, t % C
        for h in range(Hp):
            src = xp[n, c, h]
            for b in range(s):
                dst = out[n, h % s, b, c, h // s]
                for w in range((Wp - b + s - 1) // s):
                    dst[w] = src[w * s + b]
    return out


@njit(cache=True, nogil=True)
def _unfold_row(ph, c, i, j, stride, oh0, oh1, Wo, row, col0):
    """Row (c, i, j) of the im2col matrix of padded images, given as their phases ph (n, s, s,
    C, Hs, Ws), output rows oh0:oh1, into row[col0:]: row[col0 + (m, oh, ow)] = the padded
    image's pixel (m, c, oh*s + i, ow*s + j) = ph[m, i % s, j % s, c, oh + i // s, ow + j // s].

    Each (image, output row) is a copy between two views indexed from 0, the source a
    unit-step slice, which numba knows to be contiguous, so the loop vectorises.
    Element-by-element indexing (with its negative-index checks) ran 2-4x slower, and slice
    assignment (``dst[:] = src``) 1.5x slower on the 16x16 maps of the heads.
    """
    rows = oh1 - oh0
    a, b, di, dj = i % stride, j % stride, i // stride, j // stride
    for m in range(ph.shape[0]):
        for oh in range(oh0, oh1):
            start = col0 + (m * rows + oh - oh0) * Wo
            dst = row[start:start + Wo]
            src = ph[m, a, b, c, oh + di, dj:dj + Wo]
            for t in range(Wo):
                dst[t] = src[t]


@njit(parallel=True, cache=True, nogil=True)
def _im2col(ph, kh, kw, stride, oh0, oh1, Wo, cols):
    """Unfold output rows oh0:oh1 of padded images (their phases ph, see ``_phases``) into
    cols (C*kh*kw, n*(oh1-oh0)*Wo): cols[(c, i, j), (m, oh, ow)] = pixel (m, c, oh*s + i,
    ow*s + j) of the padded images.
    """
    for r in prange(cols.shape[0]):
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        _unfold_row(ph, c, i, j, stride, oh0, oh1, Wo, cols[r], 0)


@njit(parallel=True, cache=True, nogil=True)
def _im2col_levels(phs, kh, kw, stride, out_hw, starts, cols):
    """Unfold several padded inputs (a tuple of their phases) side by side into cols
    (C*kh*kw, starts[-1]): input l, of output size out_hw[l] (levels, 2), fills columns
    starts[l]:starts[l+1], as ``_im2col`` would.

    One parallel loop over (row, input) pairs, the inputs inner, so that each thread gets its
    share of every input (the first pyramid level holds three quarters of the work).
    """
    levels, K = len(phs), cols.shape[0]
    for t in prange(K * levels):
        r, level = t // levels, t % levels
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        _unfold_row(phs[level], c, i, j, stride, 0, out_hw[level, 0], out_hw[level, 1],
                    cols[r], starts[level])


@njit(cache=True, nogil=True)
def _fold_plane(dcols, col0, m, c, kh, kw, stride, oh0, oh1, Wo, plane):
    """The adjoint of ``_unfold_row`` for one (image m, channel c): add every column entry of
    dcols that came from plane (Hp, Wp) back onto its pixel."""
    rows = oh1 - oh0
    for i in range(kh):
        for j in range(kw):
            row = dcols[(c * kh + i) * kw + j]
            for oh in range(oh0, oh1):
                start = col0 + (m * rows + oh - oh0) * Wo
                src = row[start:start + Wo]
                if stride == 1:
                    dst = plane[oh + i, j:j + Wo]
                    for t in range(Wo):  # indexing views from 0: a loop that vectorises
                        dst[t] += src[t]
                else:
                    dst = plane[oh * stride + i, j:j + (Wo - 1) * stride + 1:stride]
                    for t in range(Wo):
                        dst[t] += src[t]


@njit(parallel=True, cache=True, nogil=True)
def _col2im_add(dcols, kh, kw, stride, oh0, oh1, Wo, dxp):
    """The adjoint of _im2col: add dcols (C*kh*kw, n*(oh1-oh0)*Wo) into dxp (n, C, Hp, Wp)."""
    n, C = dxp.shape[0], dxp.shape[1]
    for mc in prange(n * C):  # one (image, channel) plane per task: no two tasks share a pixel
        m, c = mc // C, mc % C
        _fold_plane(dcols, 0, m, c, kh, kw, stride, oh0, oh1, Wo, dxp[m, c])


@njit(parallel=True, cache=True, nogil=True)
def _col2im_add_levels(dcols, kh, kw, stride, starts, dxps):
    """The adjoint of ``_im2col_levels``: add dcols into the padded gradients dxps (a tuple
    of (n, C, Hp_l, Wp_l), every one with the same n and C)."""
    levels, n, C = len(dxps), dxps[0].shape[0], dxps[0].shape[1]
    for t in prange(n * C * levels):  # one (image, channel, input) plane per task
        mc, level = t // levels, t % levels
        dxp = dxps[level]
        Ho = (dxp.shape[2] - kh) // stride + 1
        Wo = (dxp.shape[3] - kw) // stride + 1
        _fold_plane(dcols, starts[level], mc // C, mc % C, kh, kw, stride, 0, Ho, Wo,
                    dxp[mc // C, mc % C])


# --- "same" convolutions: stride 1, output as large as the input ------------------------------
# A stride-1 convolution with kh = kw = 2*padding + 1 (every 3x3 of ResNet's blocks, the FPN
# and the heads) needs neither a padded copy of x nor short copies. In one image's flattened
# plane, the pixel that output (oh, ow) reads through kernel tap (i, j) is at a fixed offset
# from the output's own index: di*W + dj, with (di, dj) = (i - p, j - p). So a row of the
# unfolded matrix is the plane shifted by that offset, one contiguous copy, except at the
# padding: where oh + di or ow + dj falls outside the image the shifted copy would hold a pixel
# of the row above or below (or of the next image, or nothing), and a table of those entries
# (``_same_tables``) makes them zero in the same pass. The input is first rearranged
# channel-major, (C, n*H*W), so that one copy covers all n images of a tile (on the 1x1..4x4
# top pyramid levels a copy per image is mostly overhead). In the shapes preset's training
# step the heads' joint unfolding took 6.3 ms instead of 10.6 for copies per image row, and
# their folding 5.4 ms instead of 8.1 (docs/performance.md), before the table.


def _is_same(kh, kw, stride, padding):
    """A stride-1 convolution whose output is as large as its input."""
    return stride == 1 and kh == kw == 2 * padding + 1


def _channel_major(x):
    """(n, C, H, W) -> (C, n*H*W): each channel's pixels of all n images in one row."""
    if x.shape[0] == 1:
        return x.reshape(x.shape[1], -1)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)


def _from_channel_major(xc, n, H, W):
    """The inverse of ``_channel_major``: (C, n*H*W) -> (n, C, H, W), a transposed view."""
    return xc.reshape(xc.shape[0], n, H, W).transpose(1, 0, 2, 3)


@njit(cache=True, nogil=True)
def _shifted_range(n, H, W, oh0, oh1, di, dj):
    """For a row of n images' output rows oh0:oh1 and the tap offset (di, dj): entry t of the
    row reads entry t + shift of the channel-major plane, for t in t0:t1 (the entries whose
    pixel exists at all). Returns (t0, t1, shift)."""
    shift = (oh0 + di) * W + dj
    return max(0, -shift), min(n * (oh1 - oh0) * W, n * H * W - shift), shift


@njit(cache=True, nogil=True)
def _unfold_row_same(plane, n, H, W, oh0, oh1, di, dj, keep, row):
    """One row (tap offset (di, dj)) of the unfolded matrix of a "same" convolution: row
    (n*(oh1-oh0)*W,) from one channel's channel-major plane (n*H*W,); keep (the row's length)
    is False at the entries whose pixel lies in the padding."""
    t0, t1, shift = _shifted_range(n, H, W, oh0, oh1, di, dj)
    for t in range(t0):  # the entries outside t0:t1 are padding
        row[t] = 0
    src, dst, k = plane[t0 + shift:t1 + shift], row[t0:t1], keep[t0:t1]
    for t in range(t1 - t0):  # one contiguous pass, the padding a select: it vectorises
        dst[t] = src[t] if k[t] else 0
    for t in range(t1, row.shape[0]):
        row[t] = 0


@njit(cache=True, nogil=True)
def _fold_row_same(row, n, H, W, oh0, oh1, di, dj, keep, plane):
    """The adjoint of ``_unfold_row_same``: add the entries of row that hold a pixel onto
    it."""
    t0, t1, shift = _shifted_range(n, H, W, oh0, oh1, di, dj)
    src, dst, k = row[t0:t1], plane[t0 + shift:t1 + shift], keep[t0:t1]
    for t in range(t1 - t0):
        dst[t] += src[t] if k[t] else 0


# A "same" unfolding works on pieces: runs of n whole images (or a band of output rows oh0:oh1
# of one image) of a channel-major input, each described by one row of a geometry table
# (int64): (n, H, W, oh0, oh1, in_start, out_start), the piece's columns in the input (C, *)
# starting at in_start and its columns in the unfolded matrix at out_start. A convolution's
# tile is one piece, the heads' pyramid one piece per level: one kernel serves both. With it
# comes a table keep (k*k, columns): which entries of each tap's row hold a pixel rather than
# padding. Setting the padding entries to zero after the copy instead (a scattered store for
# every image row of every tap) made the heads' unfolding 2.3x slower (0.47-0.78 -> 0.20-0.33
# ms on one core, /tmp-style timing of the kernel alone).
GEOMETRY_COLUMNS = 7


@functools.lru_cache(maxsize=256)
def _same_tables(pieces, k):
    """(geometry (pieces, 7) int64, keep (k*k, columns) bool) of a "same" k x k unfolding of
    the pieces, a tuple of (n, H, W, oh0, oh1, in_start, out_start) tuples. Made once per
    shape, so they must not be written to."""
    geometry = np.array(pieces, np.int64).reshape(-1, GEOMETRY_COLUMNS)
    columns = max(b + n * (oh1 - oh0) * W for n, H, W, oh0, oh1, a, b in pieces)
    keep = np.zeros((k * k, columns), np.bool_)
    p = k // 2
    for n, H, W, oh0, oh1, _, b in pieces:
        oh, ow = np.arange(oh0, oh1)[:, None], np.arange(W)[None, :]
        for i in range(k):
            for j in range(k):
                pixel = (oh + i - p >= 0) & (oh + i - p < H) & (ow + j - p >= 0) & (ow + j - p < W)
                keep[i * k + j, b:b + n * (oh1 - oh0) * W] = np.tile(pixel.ravel(), n)
    return geometry, keep


@njit(parallel=True, cache=True, nogil=True)
def _im2col_same(xc, k, geometry, keep, cols):
    """Unfold the pieces of a channel-major input xc (C, *) for a "same" k x k convolution into
    cols (C*k*k, *), rows ordered (c, i, j) as ``_im2col``'s."""
    pieces, p = geometry.shape[0], k // 2
    for t in prange(cols.shape[0] * pieces):  # (row, piece) pairs, the pieces inner
        r, piece = t // pieces, t % pieces
        c, ij = r // (k * k), r % (k * k)
        n, H, W, oh0, oh1, a, b = geometry[piece]
        L = n * (oh1 - oh0) * W
        _unfold_row_same(xc[c, a:a + n * H * W], n, H, W, oh0, oh1, ij // k - p, ij % k - p,
                         keep[ij, b:b + L], cols[r, b:b + L])


@njit(parallel=True, cache=True, nogil=True)
def _col2im_same_add(dcols, k, geometry, keep, dxc):
    """The adjoint of ``_im2col_same``: add dcols into the channel-major gradient dxc (C, *)."""
    pieces, p = geometry.shape[0], k // 2
    for t in prange(dxc.shape[0] * pieces):  # one (channel, piece) per task: no shared pixel
        c, piece = t // pieces, t % pieces
        n, H, W, oh0, oh1, a, b = geometry[piece]
        L = n * (oh1 - oh0) * W
        for ij in range(k * k):
            _fold_row_same(dcols[c * k * k + ij, b:b + L], n, H, W, oh0, oh1, ij // k - p,
                           ij % k - p, keep[ij, b:b + L], dxc[c, a:a + n * H * W])


def _is_pointwise(kh, kw, stride, padding):
    """A 1x1, stride-1, unpadded convolution: a plain GEMM with the (C, H*W) input matrix."""
    return kh == 1 and kw == 1 and stride == 1 and padding == 0


# (the multiply-adds of a stride-1 convolution: an upper bound for strided ones)
@serial_when_small(macs=lambda x, w, *_: x.size * w.shape[0] * w.shape[2] * w.shape[3])
def conv2d_forward(x, w, b, stride, padding, columns=None):
    """x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> y (N, F, Ho, Wo).

    columns: None, or an empty list that receives the unfolded input, tile by tile, when it
    is at most KEEP_MAX_ELEMENTS (for ``conv2d_backward_weight``; it stays empty otherwise).
    """
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    out = _winograd_images(N, C, F, H, W, kh, kw, stride, padding)
    if out:  # columns receives V
        return winograd.conv3x3_forward(x, N, ((H, W),), w, b, columns, out)
    Ho, Wo = _out_size(H, kh, stride, padding), _out_size(W, kw, stride, padding)
    w2 = w.reshape(F, C * kh * kw)
    y = np.empty((N, F, Ho, Wo), x.dtype)
    y3 = y.reshape(N, F, Ho * Wo)
    if _is_pointwise(kh, kw, stride, padding):
        np.matmul(w2, x.reshape(N, C, H * W), out=y3)  # (F, C) @ (N, C, L) -> (N, F, L)
    else:
        unfold = _unfolder(x, kh, kw, stride, padding, Wo)
        keep = columns is not None and C * kh * kw * N * Ho * Wo <= KEEP_MAX_ELEMENTS
        for n0, n1, oh0, oh1, cols in _tile_matrices(N, Ho, C * kh * kw, Wo, x.dtype, keep):
            unfold(n0, n1, oh0, oh1, cols)
            if keep:
                columns.append(cols)
            if n1 - n0 == 1:
                np.matmul(w2, cols, out=y3[n0, :, oh0 * Wo:oh1 * Wo])
            else:  # (F, n*L) -> (n, F, L)
                y3[n0:n1] = (w2 @ cols).reshape(F, n1 - n0, Ho * Wo).transpose(1, 0, 2)
    if b is not None:
        y3 += b.reshape(1, F, 1)
    return y


def _unfolder(x, kh, kw, stride, padding, Wo):
    """A function (n0, n1, oh0, oh1, cols) that unfolds that tile of x (N, C, H, W) into cols
    (C*kh*kw, (n1-n0)*(oh1-oh0)*Wo)."""
    H, W = x.shape[2], x.shape[3]
    if _is_same(kh, kw, stride, padding):
        def unfold(n0, n1, oh0, oh1, cols):
            geometry, keep = _same_tables(((n1 - n0, H, W, oh0, oh1, 0, 0),), kh)
            _im2col_same(_channel_major(x[n0:n1]), kh, geometry, keep, cols)
        return unfold
    ph = _phases(_pad(x, padding), stride)  # (N, s, s, C, Hs, Ws)

    def unfold(n0, n1, oh0, oh1, cols):
        _im2col(ph[n0:n1], kh, kw, stride, oh0, oh1, Wo, cols)
    return unfold


@serial_when_small(macs=lambda dy, w, *_: dy.size * w.shape[1] * w.shape[2] * w.shape[3])
def conv2d_backward_input(dy, w, H, W, stride, padding):
    """dy (N, F, Ho, Wo), w (F, C, kh, kw) -> dx (N, C, H, W)."""
    N, F, Ho, Wo = dy.shape
    _, C, kh, kw = w.shape
    out = _winograd_images(N, C, F, H, W, kh, kw, stride, padding)
    if out:
        return winograd.conv3x3_backward_input(dy, w, N, ((H, W),), out=out)
    w2t = w.reshape(F, C * kh * kw).T  # (C*kh*kw, F)
    dy3 = dy.reshape(N, F, Ho * Wo)
    if _is_pointwise(kh, kw, stride, padding):
        return np.matmul(w2t, dy3).reshape(N, C, H, W)
    if _is_same(kh, kw, stride, padding):
        return _backward_input_same(dy3, w2t, N, C, H, W, kh)
    dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dy.dtype)
    for n0, n1, oh0, oh1, dcols in _tile_matrices(N, Ho, C * kh * kw, Wo, dy.dtype):
        np.matmul(w2t, _columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), out=dcols)
        _col2im_add(dcols, kh, kw, stride, oh0, oh1, Wo, dxp[n0:n1])
    # the gradient that fell on the padding belongs to no input: crop it away
    return np.ascontiguousarray(dxp[:, :, padding:padding + H, padding:padding + W])


def _backward_input_same(dy3, w2t, N, C, H, W, k):
    """``conv2d_backward_input`` of a "same" k x k convolution, folded without padding."""
    dx = np.zeros((N, C, H, W), dy3.dtype)
    for n0, n1, oh0, oh1, dcols in _tile_matrices(N, H, C * k * k, W, dy3.dtype):
        np.matmul(w2t, _columns(dy3, n0, n1, oh0 * W, oh1 * W), out=dcols)
        geometry, keep = _same_tables(((n1 - n0, H, W, oh0, oh1, 0, 0),), k)
        if n1 - n0 == 1:  # one image (maybe a band of its rows): fold straight into dx
            _col2im_same_add(dcols, k, geometry, keep, dx[n0].reshape(C, H * W))
        else:  # whole images: fold channel-major, then back to (n, C, H, W)
            dxc = np.zeros((C, (n1 - n0) * H * W), dy3.dtype)
            _col2im_same_add(dcols, k, geometry, keep, dxc)
            dx[n0:n1] = _from_channel_major(dxc, n1 - n0, H, W)
    return dx


@serial_when_small(macs=lambda dy, x, kh, kw, *_: dy.size * x.shape[1] * kh * kw)
def conv2d_backward_weight(dy, x, kh, kw, stride, padding, columns=None):
    """dy (N, F, Ho, Wo), x (N, C, H, W) -> dw (F, C, kh, kw).

    columns: the forward's unfolded x (``conv2d_forward(..., columns=[])``), if it kept it.
    """
    N, F, Ho, Wo = dy.shape
    C, H, W = x.shape[1:]
    out = (_kept_block_side(columns) if columns
           else _winograd_images(N, C, F, H, W, kh, kw, stride, padding))
    if out:
        return winograd.conv3x3_backward_weight(dy, x, N, ((H, W),),
                                                columns[0] if columns else None, out=out)
    dy3 = dy.reshape(N, F, Ho * Wo)
    if _is_pointwise(kh, kw, stride, padding):  # x itself is the (C, L) matrix
        x3 = x.reshape(N, C, Ho * Wo)
        pairs = ((_columns(dy3, n0, n1, l0 * Wo, l1 * Wo), _columns(x3, n0, n1, l0 * Wo, l1 * Wo))
                 for n0, n1, l0, l1 in _tiles(N, Ho, C * Wo))
    elif columns:  # the same tiles as the forward's, already unfolded
        pairs = ((_columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), cols)
                 for (n0, n1, oh0, oh1), cols in zip(_tiles(N, Ho, C * kh * kw * Wo), columns))
    else:
        pairs = _unfolded_tiles(dy3, x, kh, kw, stride, padding, Ho, Wo)
    return _weight_gradient(pairs, F, C * kh * kw, dy.dtype).reshape(F, C, kh, kw)


def _unfolded_tiles(dy3, x, kh, kw, stride, padding, Ho, Wo):
    """Yield (dy's columns (F, L), x unfolded (K, L)) tile by tile, each tile unfolded into
    the same buffer once the previous one has been used."""
    unfold = _unfolder(x, kh, kw, stride, padding, Wo)
    for n0, n1, oh0, oh1, cols in _tile_matrices(x.shape[0], Ho, x.shape[1] * kh * kw, Wo,
                                                 x.dtype):
        unfold(n0, n1, oh0, oh1, cols)
        yield _columns(dy3, n0, n1, oh0 * Wo, oh1 * Wo), cols


# The weight gradient is a sum of dy_cols (F, L) @ cols.T (L, K) products. With few output
# channels OpenBLAS runs the transposed product, cols @ dy_cols.T, much faster (the 16-channel
# stem and layer1: 44-57 -> 95-104 GFLOP/s, the heads' 64 channels 134 -> 168, one ad-hoc
# timing of the bare GEMMs); the transposed sum then needs one copy back, which for large
# gradients (ResNet-50's last stage: 2.4M elements) costs more than the product gains.
WGRAD_TRANSPOSED_MAX = 1 << 18


def _weight_gradient(pairs, F, K, dtype):
    """The sum of dy_cols @ cols.T over (dy_cols (F, L), cols (K, L)) pairs -> dw (F, K)."""
    if F * K <= WGRAD_TRANSPOSED_MAX:
        dwt = np.zeros((K, F), dtype)
        for dy_cols, cols in pairs:
            dwt += cols @ dy_cols.T  # (K, L) @ (L, F)
        return np.ascontiguousarray(dwt.T)
    dw = np.zeros((F, K), dtype)
    for dy_cols, cols in pairs:
        dw += dy_cols @ cols.T  # (F, L) @ (L, K)
    return dw


# --- the same convolution on every pyramid level ------------------------------------------
# RetinaNet's heads apply each convolution, with the same weights, to all five levels. The
# small levels (4x4 to 1x1 on a 128x128 image) cost mostly fixed overheads per call, so the
# levels are unfolded side by side into one matrix, columns ordered level, image, position,
# and each pass is ONE GEMM. Inputs whose joint matrix would exceed KEEP_MAX_ELEMENTS (large
# images) run level by level through the functions above instead.


def _level_starts(hws, N, kh, kw, stride, padding):
    """Column offsets of the levels in the joint matrix: (levels + 1,) int64, and the (Ho, Wo)
    of every level."""
    out_hw = [(_out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding))
              for h, w in hws]
    starts = np.cumsum([0] + [N * ho * wo for ho, wo in out_hw]).astype(np.int64)
    return starts, out_hw


def _split_levels(y, starts, out_hw, N, b=None):
    """The joint (F, T) result -> a list of (N, F, Ho, Wo), with the bias (F,) added."""
    F = y.shape[0]
    ys = []
    for level, (ho, wo) in enumerate(out_hw):
        block = y[:, starts[level]:starts[level + 1]].reshape(F, N, ho * wo).transpose(1, 0, 2)
        out = np.empty((N, F, ho, wo), y.dtype)
        if b is None:
            out.reshape(N, F, ho * wo)[...] = block
        else:
            np.add(block, b.reshape(1, F, 1), out=out.reshape(N, F, ho * wo))
        ys.append(out)
    return ys


def _joint_levels(xs, w, stride, padding):
    """(starts, out_hw), or None where the joint matrix would be too large."""
    N, C = xs[0].shape[0], xs[0].shape[1]
    _, _, kh, kw = w.shape
    starts, out_hw = _level_starts([x.shape[2:] for x in xs], N, kh, kw, stride, padding)
    if C * kh * kw * starts[-1] > KEEP_MAX_ELEMENTS:
        return None
    return starts, out_hw


def _unfold_levels(xs, kh, kw, stride, padding, starts):
    """The joint unfolded matrix of the levels xs: (C*kh*kw, T), T = starts[-1] = sum N*L_l
    (convolutions that are not "same"; those unfold a Joint, ``conv2d_forward_joint``)."""
    cols = np.empty((xs[0].shape[1] * kh * kw, starts[-1]), xs[0].dtype)
    out_hw = np.array([(_out_size(x.shape[2], kh, stride, padding),
                        _out_size(x.shape[3], kw, stride, padding)) for x in xs], np.int64)
    _im2col_levels(tuple(_phases(_pad(x, padding), stride) for x in xs), kh, kw, stride,
                   out_hw, starts, cols)
    return cols


def conv2d_forward_levels(xs, w, b, stride, padding, columns=None):
    """One convolution of several inputs: xs, a list of (N, C, H_l, W_l) with the same N and
    C -> a list of y_l (N, F, Ho_l, Wo_l), equal to ``conv2d_forward`` on each.

    columns: None, or an empty list that receives the joint unfolded matrix (training), for
    ``conv2d_backward_levels``.
    """
    joint = _joint_levels(xs, w, stride, padding)
    if joint is None:
        return levels.conv2d_forward_by_level(sys.modules[__name__], xs, w, b, stride, padding)
    starts, out_hw = joint
    F, C, kh, kw = w.shape
    if _is_same(kh, kw, stride, padding):
        return split_levels(conv2d_forward_joint(join_levels(xs), w, b, columns))
    cols = _unfold_levels(xs, kh, kw, stride, padding, starts)
    if columns is not None:
        columns.append(cols)
    y = w.reshape(F, C * kh * kw) @ cols  # (F, T): every level in one product
    return _split_levels(y, starts, out_hw, xs[0].shape[0], b)


def conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad,
                           columns=None):
    """The backward of ``conv2d_forward_levels``: dys, a list of (N, F, Ho_l, Wo_l) -> (dxs, a
    list of (N, C, H_l, W_l) or None; dw (F, C, kh, kw) summed over the levels; db (F,) or
    None). columns: the forward's list (it holds the joint matrix if it kept one)."""
    F, C, kh, kw = w.shape
    joint = _joint_levels(xs, w, stride, padding)
    if joint is None:
        return levels.conv2d_backward_by_level(sys.modules[__name__], dys, xs, w, stride,
                                               padding, has_bias, need_input_grad)
    starts, out_hw = joint
    if _is_same(kh, kw, stride, padding):
        dxj, dw, db = conv2d_backward_joint(join_levels(dys), join_levels(xs), w, has_bias,
                                            need_input_grad, columns)
        return (split_levels(dxj) if need_input_grad else None), dw, db
    N, K = xs[0].shape[0], C * kh * kw
    d_joint = join_levels(dys).data  # dy of every level as one (F, T) matrix
    cols = columns[0] if columns else _unfold_levels(xs, kh, kw, stride, padding, starts)
    dw = _weight_gradient([(d_joint, cols)], F, K, d_joint.dtype).reshape(w.shape)
    db = _bias_gradient(d_joint) if has_bias else None
    if not need_input_grad:
        return None, dw, db
    dcols = w.reshape(F, K).T @ d_joint  # (C*kh*kw, T)
    p = padding
    dxps = tuple(np.zeros((N, C, x.shape[2] + 2 * p, x.shape[3] + 2 * p), dcols.dtype)
                 for x in xs)
    _col2im_add_levels(dcols, kh, kw, stride, starts, dxps)
    # the gradient that fell on the padding belongs to no input: crop it away
    dxs = [np.ascontiguousarray(dxp[:, :, p:dxp.shape[2] - p, p:dxp.shape[3] - p])
           for dxp in dxps]
    return dxs, dw, db


# --- the heads' layers on all levels at once: a Joint ----------------------------------------
# The heads' convolutions are "same" ones, so a layer's output has the same levels as its
# input, and the (F, T) product over all levels already is the next layer's channel-major
# input: kept as one ``levels.Joint`` matrix, the heads' activations need no splitting into
# levels and gathering back between layers, and each norm and ReLU is one call for all five
# levels (models/heads.py). ``join_levels`` makes one from the list of levels, and
# ``split_levels`` gives the list back.


def join_levels(xs, kernel_size=None):
    """The levels xs (a list of (N, C, H_l, W_l)) as one Joint (C, T). With a kernel_size:
    xs itself (the list) where the unfolded matrix of such a convolution of the Joint would
    exceed KEEP_MAX_ELEMENTS (large images: their layers run level by level)."""
    if isinstance(xs, Joint):
        return xs
    N, C = xs[0].shape[:2]
    hws = tuple((x.shape[2], x.shape[3]) for x in xs)
    T = N * sum(h * w for h, w in hws)
    if kernel_size is not None and C * kernel_size * kernel_size * T > KEEP_MAX_ELEMENTS:
        return xs
    xc = np.empty((C, T), xs[0].dtype)
    joint = Joint(xc, N, hws)
    for x, a, b in zip(xs, joint.starts, joint.starts[1:]):
        xc[:, a:b].reshape(C, N, -1)[...] = x.reshape(N, C, -1).transpose(1, 0, 2)
    return joint


def split_levels(xj):
    """The inverse of ``join_levels``: a Joint -> the list of (N, C, H_l, W_l) (a list is
    returned as it is)."""
    if not isinstance(xj, Joint):
        return xj
    starts = xj.starts
    return [np.ascontiguousarray(_from_channel_major(xj.data[:, a:b], xj.n, h, w))
            for (h, w), a, b in zip(xj.hws, starts, starts[1:])]


def _joint_geometry(xj, k):
    """The (geometry, keep) tables of a "same" k x k convolution of a Joint: one piece per
    level (``_same_tables``)."""
    starts = xj.starts
    return _same_tables(tuple((xj.n, h, w, 0, h, a, a) for (h, w), a in zip(xj.hws, starts)),
                        k)


@functools.lru_cache(maxsize=64)
def _joint_pieces(n, hws):
    """The group-norm pieces of a Joint of n images with levels hws: every layer of the heads
    uses the same table, so it is made once (and must not be written to; marking it
    read-only would make Numba compile every kernel that reads it a second time)."""
    starts = Joint(None, n, hws).starts
    return np.array([(0, a + m * h * w, h * w) for (h, w), a in zip(hws, starts)
                     for m in range(n)], np.int64).reshape(-1, 3)


def conv2d_forward_joint(xj, w, b, columns=None):
    """A "same" convolution (stride 1, padding (k-1)/2) of a Joint (C, T) -> Joint (F, T):
    one unfolding and one GEMM for every level; 3x3 ones by Winograd's F(4x4, 3x3)
    (``winograd.py``: 36 GEMMs with up to 4x fewer multiplications). columns: as
    ``conv2d_forward_levels``'s (for a 3x3 convolution it receives the transformed input)."""
    F, C, k, _ = w.shape
    out = _winograd(xj.n, C, F, xj.hws, k)
    if out:
        return xj.like(winograd.conv3x3_forward(xj.data, xj.n, xj.hws, w, b, columns, out))
    cols = np.empty((C * k * k, xj.data.shape[1]), xj.data.dtype)
    _im2col_same(xj.data, k, *_joint_geometry(xj, k), cols)
    if columns is not None:
        columns.append(cols)
    y = w.reshape(F, C * k * k) @ cols  # (F, T)
    if b is not None:
        y += b.reshape(F, 1)
    return xj.like(y)


def conv2d_backward_joint(dyj, xj, w, has_bias, need_input_grad, columns=None,
                          need_weight_grad=True):
    """The backward of ``conv2d_forward_joint``: (dx Joint (C, T) or None, dw (F, C, k, k) or
    None, db (F,) or None); need_weight_grad=False leaves dw and db for a later call."""
    F, C, k, _ = w.shape
    dy = dyj.data  # (F, T)
    db = _bias_gradient(dy) if has_bias and need_weight_grad else None
    out = _kept_block_side(columns) if columns else _winograd(xj.n, C, F, xj.hws, k)
    if out:
        return _backward_joint_winograd(dyj, xj, w, need_input_grad, need_weight_grad,
                                        columns, out) + (db,)
    dw = None
    if need_weight_grad:
        cols = columns[0] if columns else None
        if cols is None:
            cols = np.empty((C * k * k, xj.data.shape[1]), xj.data.dtype)
            _im2col_same(xj.data, k, *_joint_geometry(xj, k), cols)
        dw = _weight_gradient([(dy, cols)], F, C * k * k, dy.dtype).reshape(w.shape)
    if not need_input_grad:
        return None, dw, db
    dcols = w.reshape(F, C * k * k).T @ dy  # (C*k*k, T)
    dxc = np.zeros((C, dy.shape[1]), dy.dtype)
    _col2im_same_add(dcols, k, *_joint_geometry(xj, k), dxc)  # folded without padding
    return xj.like(dxc), dw, db


def _backward_joint_winograd(dyj, xj, w, need_input_grad, need_weight_grad, columns, out):
    """(dx Joint or None, dw or None) of a Winograd Joint convolution with out x out blocks.
    columns (the forward's [V], or None): an input-gradient call without the weight gradient
    leaves its transformed output gradient there too, as (dy, dM), for the later call that
    computes the weight gradient from the same dy (the heads' queued weight gradients: it is
    not made twice)."""
    dy, n, hws = dyj.data, xj.n, xj.hws
    later = columns[1] if columns and len(columns) > 1 and columns[1][0] is dy else None
    dM = later[1] if later is not None else winograd.output_gradients(dy, n, hws, out)
    dx = dw = None
    if need_input_grad:
        dx = xj.like(winograd.conv3x3_backward_input(dy, w, n, hws, dM))
        if not need_weight_grad and columns:
            columns[1:] = [(dy, dM)]
    if need_weight_grad:
        dw = winograd.conv3x3_backward_weight(dy, xj.data, n, hws,
                                              columns[0] if columns else None, dM)
        if columns:
            del columns[1:]  # done with dM
    return dx, dw


def _bias_gradient(dy):
    """dy (F, T) -> (F,) summed in float64 per output channel, as bias_backward."""
    return dy.sum(axis=1, dtype=np.float64).astype(dy.dtype)


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


# ----------------------------------------------------------------------------- batch norm
# Per-channel values are read with np.float64(...): numba's float() keeps a float32 a float32.
# Sums in float64 are one long chain of dependent additions (each waits ~4 cycles for the
# last); four partial sums, added at the end, run four chains side by side: batch norm's
# statistics of the stem's output 0.46 -> 0.20-0.22 ms, group norm's forward on P3 0.24 ->
# 0.14-0.18 ms (benchmarks/bench_step_parts.py). The order is fixed, so the bits do not
# depend on the number of threads.
@njit(cache=True, nogil=True)
def _sum(a, lo, hi):
    """a[lo:hi].sum() in float64, as four interleaved partial sums."""
    s0 = s1 = s2 = s3 = 0.0
    end4 = lo + (hi - lo) // 4 * 4
    for i in range(lo, end4, 4):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
    for i in range(end4, hi):
        s0 += a[i]
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True)
def _sum_sq_dev(a, lo, hi, mu):
    """((a[lo:hi] - mu) ** 2).sum() in float64, as four interleaved partial sums."""
    s0 = s1 = s2 = s3 = 0.0
    end4 = lo + (hi - lo) // 4 * 4
    for i in range(lo, end4, 4):
        d0, d1, d2, d3 = a[i] - mu, a[i + 1] - mu, a[i + 2] - mu, a[i + 3] - mu
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    for i in range(end4, hi):
        d = a[i] - mu
        s0 += d * d
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True)
def _sum_dot_xhat(dy, x, lo, hi, mu, istd):
    """(dy[lo:hi].sum(), (dy * (x - mu) * istd)[lo:hi].sum()) in float64, two partial sums
    each."""
    a0 = a1 = b0 = b1 = 0.0
    end2 = lo + (hi - lo) // 2 * 2
    for i in range(lo, end2, 2):
        a0 += dy[i]
        a1 += dy[i + 1]
        b0 += dy[i] * ((x[i] - mu) * istd)
        b1 += dy[i + 1] * ((x[i + 1] - mu) * istd)
    for i in range(end2, hi):
        a0 += dy[i]
        b0 += dy[i] * ((x[i] - mu) * istd)
    return a0 + a1, b0 + b1


@njit(cache=True, nogil=True)
def _affine(src, m, a, b, relu, dst):
    """dst = (src - m) * a + b, and max(that, 0) with relu: a norm's output and the ReLU after
    it in one pass (the ReLU's own kernel would read and write the whole array again)."""
    if relu:
        for i in range(src.shape[0]):
            v = (src[i] - m) * a + b
            dst[i] = v if v > 0 else 0
    else:
        for i in range(src.shape[0]):
            dst[i] = (src[i] - m) * a + b


@serial_when_small
@njit(parallel=True, cache=True, nogil=True)
def batchnorm2d_stats(x):
    """x (N, C, H, W) -> mean (C,), biased var (C,), accumulated in float64 (two passes)."""
    N, C, H, W = x.shape
    M = N * H * W
    mean = np.empty(C, x.dtype)
    var = np.empty(C, x.dtype)
    xf = x.reshape(N, C, H * W)
    for c in prange(C):
        s = 0.0
        for n in range(N):
            s += _sum(xf[n, c], 0, H * W)
        mu = s / M
        ss = 0.0
        for n in range(N):
            ss += _sum_sq_dev(xf[n, c], 0, H * W, mu)
        mean[c] = mu
        var[c] = ss / M
    return mean, var


@njit(cache=True, nogil=True)
def batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps):
    """Batch mean, biased var (C,) of count >= 2 values -> invstd (C,) = 1 / sqrt(var + eps).

    Updates the running statistics in place with torch's rule, the variance unbiased:
    running = (1 - momentum) * running + momentum * batch. All in float64, then rounded.
    """
    C = mean.shape[0]
    invstd = np.empty(C, mean.dtype)
    bessel = count / (count - 1)
    for c in range(C):
        v = float(var[c])
        invstd[c] = 1.0 / np.sqrt(v + eps)
        running_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * float(mean[c])
        running_var[c] = (1 - momentum) * float(running_var[c]) + momentum * (v * bessel)
    return invstd


@njit(cache=True, nogil=True)
def batchnorm2d_eval_stats(running_mean, running_var, eps):
    """Running statistics (C,) -> a copy of the mean (later training steps change it), invstd."""
    C = running_mean.shape[0]
    mean = np.empty(C, running_mean.dtype)
    invstd = np.empty(C, running_mean.dtype)
    for c in range(C):
        mean[c] = running_mean[c]
        invstd[c] = 1.0 / np.sqrt(float(running_var[c]) + eps)
    return mean, invstd


@serial_when_small
@njit(parallel=True, cache=True, nogil=True)
def batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False):
    """x (N, C, H, W), per-channel (C,) vectors -> y = (x - mean) * invstd * gamma + beta,
    and max(y, 0) with relu."""
    N, C, H, W = x.shape
    y = np.empty_like(x)
    xf, yf = x.reshape(N * C, H * W), y.reshape(N * C, H * W)
    to = x.dtype.type
    for nc in prange(N * C):
        c = nc % C
        # the coefficient in float64, rounded once; the elementwise part in x's dtype
        m, a, b = to(mean[c]), to(np.float64(invstd[c]) * np.float64(gamma[c])), to(beta[c])
        _affine(xf[nc], m, a, b, relu, yf[nc])
    return y


@serial_when_small
@njit(parallel=True, cache=True, nogil=True)
def batchnorm2d_backward(dy, x, mean, invstd, gamma):
    """Training-mode backward (batch statistics) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    N, C, H, W = x.shape
    M = N * H * W
    dx = np.empty_like(x)
    dgamma = np.empty(C, x.dtype)
    dbeta = np.empty(C, x.dtype)
    xf, dyf, dxf = x.reshape(N, C, H * W), dy.reshape(N, C, H * W), dx.reshape(N, C, H * W)
    to = x.dtype.type
    for c in prange(C):
        # float64 sums and products, as the statistics
        mu, istd = np.float64(mean[c]), np.float64(invstd[c])
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for n in range(N):
            s0, s1 = _sum_dot_xhat(dyf[n, c], xf[n, c], 0, H * W, mu, istd)
            sum_dy += s0
            sum_dy_xhat += s1
        # dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)): the mean and the variance
        # both depend on every x, which removes dy's mean and its component along xhat.
        scale, mean_dy, mean_dy_xhat = np.float64(gamma[c]) * istd, sum_dy / M, sum_dy_xhat / M
        # the coefficients rounded once to x's dtype, the elementwise part in it
        m, s, k, mdy = to(mu), to(scale), to(istd * mean_dy_xhat), to(mean_dy)
        for n in range(N):
            src, d, dst = xf[n, c], dyf[n, c], dxf[n, c]
            for i in range(H * W):
                dst[i] = (d[i] - mdy - (src[i] - m) * k) * s
        dgamma[c] = sum_dy_xhat
        dbeta[c] = sum_dy
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- group norm
# One kernel pair serves both layouts: x is seen as a 2-D array in which image n's channel c
# of a piece (one image, or one (level, image) of a Joint) is the run of HW values starting
# at row `row0 + c`, column `col0`, a row of a table ``pieces`` (P, 3) = (row0, col0, HW). An
# (N, C, H, W) input is x.reshape(N*C, H*W) with pieces (n*C, 0, H*W); a Joint (C, T) is
# itself, with pieces (0, first column of the level's image, H*W). Each task is one (piece,
# group), so no two tasks write the same element. As for batch norm, the sums are float64 and
# the per-channel coefficients are computed from them in float64 and rounded once to x's
# dtype; the per-element arithmetic runs in x's dtype, since a float32 vector holds twice as
# many lanes as a float64 one (group norm on P3, forward and backward: 0.46 -> 0.21 ms).
#
# Waking the sleeping worker threads for a parallel loop costs ~45 us (OMP_WAIT_POLICY=
# PASSIVE, see the top of this file), more than a whole group norm of a small pyramid level
# takes on one core. So the tasks are written once as a serial loop over a range of tasks, and
# inputs below PARALLEL_MIN_ELEMENTS run it directly, larger ones through a prange over them.
PARALLEL_MIN_ELEMENTS = 1 << 15


@functools.lru_cache(maxsize=64)
def _image_pieces(N, C, HW):
    """The pieces (N, 3) of an (N, C, H, W) input seen as (N*C, H*W): image n from row n*C
    (made once per shape, like ``_joint_pieces``; not to be written to)."""
    return np.array([(n * C, 0, HW) for n in range(N)], np.int64).reshape(-1, 3)


@njit(cache=True, nogil=True)
def _groupnorm_task(task, groups, pieces):
    """Task number `task`: (piece, group, the piece's first row and column, its H*W); the
    groups inner, so that consecutive tasks read the same columns."""
    piece, g = task // groups, task % groups
    return piece, g, pieces[piece, 0], pieces[piece, 1], pieces[piece, 2]


@njit(cache=True, nogil=True)
def _groupnorm_forward_tasks(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd, start,
                             stop):
    """Tasks start:stop of (piece, group) of x (2-D, see above): y into y (x's shape), with
    the ReLU after it when relu; statistics into mean, invstd (pieces, G)."""
    groups, to = gamma.shape[0] // Cg, x.dtype.type
    for task in range(start, stop):
        piece, g, r, a, HW = _groupnorm_task(task, groups, pieces)
        M = Cg * HW
        total = 0.0
        for j in range(Cg):
            total += _sum(x[r + g * Cg + j], a, a + HW)
        mu = total / M
        dev = 0.0
        for j in range(Cg):
            dev += _sum_sq_dev(x[r + g * Cg + j], a, a + HW, mu)
        istd = 1.0 / np.sqrt(dev / M + eps)
        mean[piece, g] = mu
        invstd[piece, g] = istd
        m = to(mu)
        for j in range(Cg):  # y = (x - mu) * k + beta, k from the float64 statistics
            c = g * Cg + j
            k, b = to(istd * np.float64(gamma[c])), to(beta[c])
            _affine(x[r + c, a:a + HW], m, k, b, relu, y[r + c, a:a + HW])


@njit(parallel=True, cache=True, nogil=True)
def _groupnorm_forward_parallel(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd):
    for task in prange(pieces.shape[0] * (gamma.shape[0] // Cg)):
        _groupnorm_forward_tasks(x, gamma, beta, Cg, pieces, eps, relu, y, mean, invstd, task,
                                 task + 1)


def _groupnorm_forward_pieces(x, gamma, beta, groups, eps, pieces, relu):
    """y (x's shape), mean and invstd (pieces, G) of x (2-D) laid out by pieces."""
    y = np.empty_like(x)
    mean = np.empty((pieces.shape[0], groups), x.dtype)
    invstd = np.empty((pieces.shape[0], groups), x.dtype)
    args = (x, gamma, beta, gamma.shape[0] // groups, pieces, float(eps), bool(relu), y, mean,
            invstd)
    if x.size < PARALLEL_MIN_ELEMENTS:
        _groupnorm_forward_tasks(*args, 0, pieces.shape[0] * groups)
    else:
        _groupnorm_forward_parallel(*args)
    return y, mean, invstd


def groupnorm_forward(x, gamma, beta, groups, eps, relu=False):
    """x (N, C, H, W), gamma, beta (C,) -> y (N, C, H, W), mean (N, G), invstd (N, G).

    Per (n, g): mean and biased variance over (c, h, w) of the group (two float64 passes);
    y = (x - mean) * invstd * gamma[c] + beta[c], invstd = 1 / sqrt(var + eps); max(y, 0)
    with relu.
    """
    N, C, H, W = x.shape
    y, mean, invstd = _groupnorm_forward_pieces(x.reshape(N * C, H * W), gamma, beta, groups,
                                                eps, _image_pieces(N, C, H * W), relu)
    return y.reshape(x.shape), mean, invstd


@njit(cache=True, nogil=True)
def _groupnorm_backward_tasks(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy, sum_dy_xhat,
                              start, stop):
    """Tasks start:stop of (piece, group), as the forward's: dx into dx (x's shape), the
    per-channel sums into sum_dy, sum_dy_xhat (pieces, C)."""
    groups, to = gamma.shape[0] // Cg, x.dtype.type
    for task in range(start, stop):
        piece, g, r, a, HW = _groupnorm_task(task, groups, pieces)
        M = Cg * HW
        mu, istd = np.float64(mean[piece, g]), np.float64(invstd[piece, g])
        sum_dxhat = 0.0
        sum_dxhat_xhat = 0.0
        for j in range(Cg):
            c = g * Cg + j
            s0, s1 = _sum_dot_xhat(dy[r + c], x[r + c], a, a + HW, mu, istd)
            sum_dy[piece, c] = s0
            sum_dy_xhat[piece, c] = s1
            sum_dxhat += np.float64(gamma[c]) * s0
            sum_dxhat_xhat += np.float64(gamma[c]) * s1
        # dx = invstd * (dy * gamma - mean_dxhat - (x - mu) * invstd * mean_dxhat_xhat), the
        # coefficients from the float64 sums rounded once to x's dtype
        m, s, k = to(mu), to(istd), to(istd * (sum_dxhat_xhat / M))
        mdx = to(sum_dxhat / M)
        for j in range(Cg):
            c = g * Cg + j
            gc = gamma[c]
            src, d, dst = x[r + c, a:a + HW], dy[r + c, a:a + HW], dx[r + c, a:a + HW]
            for i in range(HW):
                dst[i] = (d[i] * gc - mdx - (src[i] - m) * k) * s


@njit(parallel=True, cache=True, nogil=True)
def _groupnorm_backward_parallel(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy,
                                 sum_dy_xhat):
    for task in prange(pieces.shape[0] * (gamma.shape[0] // Cg)):
        _groupnorm_backward_tasks(dy, x, mean, invstd, gamma, Cg, pieces, dx, sum_dy,
                                  sum_dy_xhat, task, task + 1)


@njit(cache=True, nogil=True)
def _sum_over_images(sums, dtype_like):
    """(pieces, C) float64 -> (C,) in dtype_like's dtype, added over the pieces (images) in
    order: the same bits for any number of threads."""
    N, C = sums.shape
    out = np.empty(C, dtype_like.dtype)
    for c in range(C):
        s = 0.0
        for n in range(N):
            s += sums[n, c]
        out[c] = s
    return out


def _groupnorm_backward_pieces(dy, x, mean, invstd, gamma, groups, pieces):
    """dx (x's shape), dgamma (C,), dbeta (C,) of x, dy (2-D) laid out by pieces.

    Per group, with dxhat = dy * gamma[c]: dx = invstd * (dxhat - mean(dxhat) - xhat *
    mean(dxhat * xhat)), as batch norm's. Each task first sums dy and dy * xhat per channel of
    its piece (float64); those (pieces, C) sums give both the group means (weighted by gamma)
    and, added over the pieces afterwards, dbeta and dgamma.
    """
    C = gamma.shape[0]
    dx = np.empty_like(x)
    sum_dy = np.empty((pieces.shape[0], C))  # float64
    sum_dy_xhat = np.empty((pieces.shape[0], C))
    args = (dy, x, mean, invstd, gamma, C // groups, pieces, dx, sum_dy, sum_dy_xhat)
    if x.size < PARALLEL_MIN_ELEMENTS:
        _groupnorm_backward_tasks(*args, 0, pieces.shape[0] * groups)
    else:
        _groupnorm_backward_parallel(*args)
    return dx, _sum_over_images(sum_dy_xhat, x), _sum_over_images(sum_dy, x)


def groupnorm_backward(dy, x, mean, invstd, gamma, groups):
    """dy, x (N, C, H, W), mean, invstd (N, G), gamma (C,) -> dx, dgamma (C,), dbeta (C,)."""
    N, C, H, W = x.shape
    dx, dgamma, dbeta = _groupnorm_backward_pieces(
        dy.reshape(N * C, H * W), x.reshape(N * C, H * W), mean, invstd, gamma, groups,
        _image_pieces(N, C, H * W))
    return dx.reshape(x.shape), dgamma, dbeta


def groupnorm_forward_joint(xj, gamma, beta, groups, eps, relu=False):
    """``groupnorm_forward`` of every level of a Joint (C, T) at once -> (y Joint (C, T), mean
    and invstd (levels * N, G), one row per (level, image) in the Joint's order)."""
    y, mean, invstd = _groupnorm_forward_pieces(xj.data, gamma, beta, groups, eps,
                                                _joint_pieces(xj.n, xj.hws), relu)
    return xj.like(y), mean, invstd


def groupnorm_backward_joint(dyj, xj, mean, invstd, gamma, groups):
    """The backward of ``groupnorm_forward_joint``: (dx Joint (C, T), dgamma (C,), dbeta (C,))."""
    dx, dgamma, dbeta = _groupnorm_backward_pieces(dyj.data, xj.data, mean, invstd, gamma,
                                                   groups, _joint_pieces(xj.n, xj.hws))
    return xj.like(dx), dgamma, dbeta


# ----------------------------------------------------------------------------- elementwise
# One thread: these stream memory, a second core gave them nothing measurable, and a
# parallel=True function costs two to four times as long to compile.
@njit(cache=True, nogil=True)
def relu_forward(x):
    """x (any shape) -> max(x, 0)."""
    xf = x.reshape(-1)
    y = np.empty_like(xf)
    for i in range(xf.size):
        y[i] = xf[i] if xf[i] > 0 else 0
    return y.reshape(x.shape)


@njit(cache=True, nogil=True)
def relu_backward(dy, y):
    """dy, y (same shape) -> dx = dy where y > 0, else 0."""
    dyf, yf = dy.reshape(-1), y.reshape(-1)
    dx = np.empty_like(dyf)
    for i in range(dyf.size):
        dx[i] = dyf[i] if yf[i] > 0 else 0
    return dx.reshape(dy.shape)


@njit(cache=True, nogil=True)
def add_forward(a, b):
    """a, b (same shape) -> a + b."""
    af, bf = a.reshape(-1), b.reshape(-1)
    y = np.empty_like(af)
    for i in range(af.size):
        y[i] = af[i] + bf[i]
    return y.reshape(a.shape)


# ----------------------------------------------------------------------------- max pooling
@serial_when_small
@njit(parallel=True, cache=True, nogil=True)
def maxpool2d_forward(x, k, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64 as h*W + w (first max).

    Needs padding <= k // 2, so that every window holds at least one real input pixel.
    """
    N, C, H, W = x.shape
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    y = np.empty((N * C, Ho * Wo), x.dtype)
    argmax = np.empty((N * C, Ho * Wo), np.int64)
    xf = x.reshape(N * C, H * W)
    for nc in prange(N * C):
        plane, y_row, a_row = xf[nc], y[nc], argmax[nc]
        for oh in range(Ho):
            h_lo, h_hi = max(0, oh * stride - padding), min(H, oh * stride - padding + k)
            for ow in range(Wo):
                w_lo, w_hi = max(0, ow * stride - padding), min(W, ow * stride - padding + k)
                # the padding is -inf, never a maximum: only real pixels are compared
                best_at = h_lo * W + w_lo
                best = plane[best_at]
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        v = plane[h * W + w]
                        # selects, not a branch: which pixel is largest is unpredictable
                        take = v > best
                        best = v if take else best
                        best_at = h * W + w if take else best_at
                y_row[oh * Wo + ow] = best
                a_row[oh * Wo + ow] = best_at
    return y.reshape(N, C, Ho, Wo), argmax.reshape(N, C, Ho, Wo)


@njit(cache=True, nogil=True)
def maxpool2d_backward(dy, argmax, H, W):
    """dy, argmax (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's maximum."""
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N * C, H * W), dy.dtype)
    dyf, af = dy.reshape(N * C, Ho * Wo), argmax.reshape(N * C, Ho * Wo)
    for nc in range(N * C):
        for o in range(Ho * Wo):
            dx[nc, af[nc, o]] += dyf[nc, o]
    return dx.reshape(N, C, H, W)


# ----------------------------------------------------------------------------- upsampling
@njit(cache=True, nogil=True)
def upsample_nearest_forward(x, Ho, Wo):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), y[.., oh, ow] = x[.., oh*H//Ho, ow*W//Wo]."""
    N, C, H, W = x.shape
    src_h = np.arange(Ho) * H // Ho  # floor(oh * H / Ho) in exact integer arithmetic
    src_w = np.arange(Wo) * W // Wo
    y = np.empty((N, C, Ho, Wo), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                src, out = x[n, c, src_h[oh]], y[n, c, oh]
                for ow in range(Wo):
                    out[ow] = src[src_w[ow]]
    return y


@njit(cache=True, nogil=True)
def upsample_nearest_backward(dy, H, W):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each source pixel sums the outputs it was copied to."""
    N, C, Ho, Wo = dy.shape
    src_h = np.arange(Ho) * H // Ho
    src_w = np.arange(Wo) * W // Wo
    dx = np.zeros((N, C, H, W), dy.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                src, out = dy[n, c, oh], dx[n, c, src_h[oh]]
                for ow in range(Wo):
                    out[src_w[ow]] += src[ow]
    return dx


# --- in-place array utilities (optimizer and gradient accumulation) -------------------------
# Same names as in cuda.py; each works in place and returns its first argument.


def zeros_like(a):
    """A new zero array of a's shape and dtype."""
    return np.zeros_like(a)


def fill_(a, value):
    a[...] = value
    return a


def scale_(a, s):
    a *= a.dtype.type(s)
    return a


def add_inplace_(a, b):
    a += b
    return a


@njit(cache=True, nogil=True)
def _sgd_update(p, g, v, lr, momentum, weight_decay):
    for i in range(p.size):
        vi = v[i] * momentum + (g[i] + p[i] * weight_decay)
        v[i] = vi
        p[i] = p[i] - vi * lr


def sgd_update_(param, grad, buf, lr, momentum, weight_decay):
    """torch's SGD step in place: buf = momentum * buf + (grad + wd * param); param -= lr * buf."""
    t = param.dtype.type
    _sgd_update(param.reshape(-1), grad.reshape(-1), buf.reshape(-1), t(lr), t(momentum),
                t(weight_decay))
    return param


@njit(cache=True, nogil=True, error_model="numpy")  # see adamw_update_
def _adamw_update(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps,
                  weight_decay, bias1, bias2):
    for i in range(p.size):
        mi = beta1 * m[i] + one_minus_beta1 * g[i]  # running mean of the gradient
        vi = beta2 * v[i] + one_minus_beta2 * g[i] * g[i]  # running mean of its square
        m[i], v[i] = mi, vi
        p[i] = p[i] - lr * (weight_decay * p[i] + (mi / bias1) / (np.sqrt(vi / bias2) + eps))


def adamw_update_(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """torch.optim.AdamW's step ``step`` (1, 2, ...) in place: m, v = moving averages of grad
    and grad**2; param -= lr * (wd * param + m_hat / (sqrt(v_hat) + eps)) with the
    bias-corrected m_hat = m / (1 - beta1**step), v_hat = v / (1 - beta2**step).

    Every scalar, 1 - beta included, is rounded to the parameter's dtype first, so that a
    float32 model updates in float32 arithmetic (``1 - beta1`` inside the kernel is float64
    and pulled the loop into float64), and the kernel uses numpy's error model (a division by
    zero gives inf instead of raising; here no divisor can be zero), without which numba
    checks each division and the loop does not vectorise. Both together: the step over the
    shapes preset's 80 parameter tensors (841k values) 5.8 ms -> 0.78 ms
    (``benchmarks/bench_step_parts.py``), the same bits in float64.
    """
    t = param.dtype.type
    _adamw_update(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), t(lr),
                  t(beta1), t(beta2), t(1 - beta1), t(1 - beta2), t(eps), t(weight_decay),
                  t(1 - beta1**step), t(1 - beta2**step))
    return param


# =============================================================================================
# Twins of the CUDA kernels that keep a training step on the device (issue 7): the heads'
# layout, the per-image loss kernels and the gradient norm. Same names and signatures as in
# kernels/cuda.py; the heads, retina_loss and optim.grad_norm reach them through
# backend.kernels_for.
# =============================================================================================


def empty_like(a):
    """A new, uninitialised array of a's shape and dtype."""
    return np.empty_like(a)


@njit(cache=True, nogil=True)
def _sum_squares(a):
    """(a * a).sum() of a flat array in float64, as four interleaved partial sums."""
    s0 = s1 = s2 = s3 = 0.0
    end4 = a.size // 4 * 4
    for i in range(0, end4, 4):
        v0, v1 = np.float64(a[i]), np.float64(a[i + 1])  # float() would keep float32
        v2, v3 = np.float64(a[i + 2]), np.float64(a[i + 3])
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
    for i in range(end4, a.size):
        v = np.float64(a[i])
        s0 += v * v
    return (s0 + s1) + (s2 + s3)


def sum_squares(arrays):
    """The sum of a * a over every element of every array in ``arrays``, accumulated in float64
    -> a Python float (the squared global norm of the gradients)."""
    return float(sum(_sum_squares(a.reshape(-1)) for a in arrays))


# ----------------------------------------------------------------------------- head layout
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


# ----------------------------------------------------------------------------- detection losses
# The CPU loss kernels are written out in retina_np.detection.losses (where the maths is
# explained); these give them the names and signatures of their CUDA twins. They import it
# when called, because detection.losses imports retina_np.backend, which imports this module.


def focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale=1.0, out=None):
    """Focal loss of one image (R, K) from per-anchor classes (R,) -> (loss sum, gradient).

    The gradient, grad_scale * d loss / d logits, is written into ``out`` (R, K) when given.
    See ``detection.losses._focal_anchor_range``.
    """
    from retina_np.detection.losses import _alpha_for_kernel, _focal_loss_anchor_classes

    dlogits = np.empty_like(logits) if out is None else out
    total = _focal_loss_anchor_classes(logits, anchor_class, _alpha_for_kernel(alpha),
                                       float(gamma), grad_scale, dlogits)
    return total, dlogits


def box_loss_rows(pred, rows, target, beta, divisor, dpred):
    """Smooth-L1 (beta > 0) or L1 (beta == 0) loss of pred[rows] (F, 4) against target (F, 4);
    writes dpred[rows] = d loss / d pred[rows] / divisor and returns the loss sum.

    See ``detection.losses.smooth_l1_loss``.
    """
    from retina_np.detection.losses import smooth_l1_loss

    total, d_rows = smooth_l1_loss(pred[rows], target, beta)
    dpred[rows] = d_rows / divisor
    return total
