"""im2col on the CPU: unfold every kh x kw patch of the input into a column, so that a
convolution becomes one GEMM with the (F, C*kh*kw) weight matrix (``conv.py``), and its
adjoint col2im, which adds each column back onto the patch it came from (the input gradient).

The idea in a few lines of NumPy is ``kernels/numpy_conv.py``; these are the same unfoldings
as Numba loops that copy whole rows (so that LLVM vectorises them) and work tile by tile, so
that a batch of large images never unfolds into one huge matrix. Two ways to unfold:

* any convolution: the padded input cut into its stride x stride phases, then one unit-step
  copy per (channel, tap, output row) (``phases``, ``im2col``, ``col2im_add``);
* "same" convolutions (stride 1, padding (k-1)/2): shifted copies of the channel-major input
  with a table that zeroes the padding, no padded copy (``im2col_same``, ``col2im_same_add``);
  one kernel pair serves a convolution's tiles and the heads' pyramid levels.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from retina_np.kernels.tunables import current


def output_tiles(N: int, Ho: int, K: int, Wo: int, opts=None):
    """(n0, n1, oh0, oh1) tiles of the output of even sizes, each unfolding to a (K, L) matrix
    of about ``options.cols_max_elements`` elements and ``options.cols_max_columns`` columns or
    less (up to an image or a row more, and more when one output row is larger): whole
    images, or bands of rows of one.

    K is the unfolded matrix's rows (C*kh*kw), Wo the output's width; opts: the kernel options
    (default ``options.current()``).
    """
    opts = opts if opts is not None else current()
    if N == 0:  # no images: no tiles (and the loops over them do nothing)
        return []
    limit = min(opts.cols_max_elements, K * opts.cols_max_columns)
    row_elements = K * Wo
    image_elements = row_elements * Ho
    if image_elements <= limit:  # whole images, as evenly split as possible
        pieces = -(-N * image_elements // limit)
        step = -(-N // pieces)
        return [(n0, min(n0 + step, N), 0, Ho) for n0 in range(0, N, step)]
    pieces = -(-image_elements // limit)  # bands of rows of one image
    rows = -(-Ho // pieces)
    return [(n, n + 1, oh0, min(oh0 + rows, Ho)) for n in range(N) for oh0 in range(0, Ho, rows)]


def tile_matrices(N: int, Ho: int, K: int, Wo: int, dtype, keep: bool = False, tiles=None):
    """Yield (n0, n1, oh0, oh1, cols): the tiles, each with a (K, n*(oh1-oh0)*Wo) matrix to
    fill, all views of one buffer (allocating, and page-faulting, one per tile costs time).

    keep: every tile gets its own part of the buffer, so all of them outlive the loop.
    tiles: some of ``output_tiles``' tiles (default: all of them)."""
    tiles = output_tiles(N, Ho, K, Wo) if tiles is None else tiles
    sizes = [K * (n1 - n0) * (oh1 - oh0) * Wo for n0, n1, oh0, oh1 in tiles]
    buffer = np.empty(sum(sizes) if keep else max(sizes, default=0), dtype)
    offset = 0
    for (n0, n1, oh0, oh1), size in zip(tiles, sizes):
        yield n0, n1, oh0, oh1, buffer[offset:offset + size].reshape(K, -1)
        offset += size if keep else 0


def tile_columns(a, n0, n1, l0, l1):
    """Images n0:n1, positions l0:l1 of a (N, K, L) as a (K, n*(l1-l0)) matrix (a copy if n > 1)."""
    if n1 - n0 == 1:
        return a[n0, :, l0:l1]
    return a[n0:n1, :, l0:l1].transpose(1, 0, 2).reshape(a.shape[1], -1)


# --- strided and padded convolutions: phases -------------------------------------------------
# A strided convolution reads every s-th pixel of a row: a gather that does not vectorise. So
# the padded input is first cut into its s*s phases, phase (a, b) holding the pixels (s*h + a,
# s*w + b); tap (i, j) then reads phase (i % s, j % s) at offset (i // s, j // s), one unit-step
# copy per output row (the stem's unfolding 2.3x faster, docs/performance-history.md "Kernel
# notes"). The padding is written in the same pass (padding, then cutting, in NumPy took twice
# as long). Max pooling cuts its planes the same way (cpu/elementwise.py), padded with -inf.
def phases(x, padding, stride):
    """Images x (n, C, H, W), padded with `padding` zeros on each side -> their phases (n, s,
    s, C, ceil(Hp/s), ceil(Wp/s)), Hp = H + 2*padding, images first, so that a tile of images
    is a contiguous slice. With stride 1 and no padding: x itself, a view."""
    N, C, H, W = x.shape
    if stride == 1 and padding == 0:
        return x.reshape(N, 1, 1, C, H, W)
    return _phases(x, padding, stride)


@njit(cache=True, nogil=True)
def _phases(x, p, s):
    N, C, H, W = x.shape
    out = np.empty((N, s, s, C, -(-(H + 2 * p) // s), -(-(W + 2 * p) // s)), x.dtype)
    for n in range(N):
        for c in range(C):
            plane_phases(x[n, c].reshape(H * W), H, W, s, p, 0.0, out[n, :, :, c])
    return out


@njit(cache=True, nogil=True)
def plane_phases(plane, H, W, s, p, fill, ph):
    """ph[a, b, hs, ws] = pixel (hs*s + a - p, ws*s + b - p) of plane (H*W,), `fill` where that
    lies outside it; ph (s, s, Hs, Ws)."""
    Hs, Ws = ph.shape[2], ph.shape[3]
    ph[:] = fill
    for a in range(s):
        hs0, hs1 = max(0, (p - a + s - 1) // s), min(Hs, (H - 1 + p - a) // s + 1)
        for b in range(s):
            ws0, ws1 = max(0, (p - b + s - 1) // s), min(Ws, (W - 1 + p - b) // s + 1)
            for hs in range(hs0, hs1):
                # views indexed from 0: a copy with no index arithmetic (2x faster)
                start = (hs * s + a - p) * W + ws0 * s + b - p
                src = plane[start:start + (ws1 - ws0) * s:s]
                dst = ph[a, b, hs, ws0:ws1]
                for t in range(dst.shape[0]):
                    dst[t] = src[t]


@njit(cache=True, nogil=True)
def _unfold_row(ph, c, i, j, stride, oh0, oh1, Wo, row, col0):
    """Row (c, i, j) of the im2col matrix of padded images, given as their phases ph (n, s, s,
    C, Hs, Ws), output rows oh0:oh1, into row[col0:]: row[col0 + (m, oh, ow)] = the padded
    image's pixel (m, c, oh*s + i, ow*s + j) = ph[m, i % s, j % s, c, oh + i // s, ow + j // s].

    Each (image, output row) is a copy between two views indexed from 0, the source a
    unit-step slice, which numba knows to be contiguous, so the loop vectorises (indexing
    element by element, or slice assignment, was slower: docs/performance-history.md "Kernel
    notes").
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
def im2col(ph, kh, kw, stride, oh0, oh1, Wo, cols):
    """Unfold output rows oh0:oh1 of padded images (their phases ph, see ``phases``) into
    cols (C*kh*kw, n*(oh1-oh0)*Wo): cols[(c, i, j), (m, oh, ow)] = pixel (m, c, oh*s + i,
    ow*s + j) of the padded images.
    """
    for r in prange(cols.shape[0]):
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        _unfold_row(ph, c, i, j, stride, oh0, oh1, Wo, cols[r], 0)



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
def col2im_add(dcols, kh, kw, stride, oh0, oh1, Wo, dxp):
    """The adjoint of im2col: add dcols (C*kh*kw, n*(oh1-oh0)*Wo) into dxp (n, C, Hp, Wp)."""
    n, C = dxp.shape[0], dxp.shape[1]
    for mc in prange(n * C):  # one (image, channel) plane per task: no two tasks share a pixel
        m, c = mc // C, mc % C
        _fold_plane(dcols, 0, m, c, kh, kw, stride, oh0, oh1, Wo, dxp[m, c])


# padding: where oh + di or ow + dj falls outside the image the shifted copy would hold a pixel
# of the row above or below (or of the next image, or nothing), and a table of those entries
# (``same_tables``) makes them zero in the same pass. The input is first rearranged
# channel-major, (C, n*H*W), so that one copy covers all n images of a tile (on the 1x1..4x4
# top pyramid levels a copy per image is mostly overhead; docs/performance-history.md "Kernel
# notes").


def channel_major(x):
    """(n, C, H, W) -> (C, n*H*W): each channel's pixels of all n images in one row."""
    if x.shape[0] == 1:
        return x.reshape(x.shape[1], -1)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)


def from_channel_major(xc, n, H, W):
    """The inverse of ``channel_major``: (C, n*H*W) -> (n, C, H, W), a transposed view."""
    return xc.reshape(xc.shape[0], n, H, W).transpose(1, 0, 2, 3)


@njit(cache=True, nogil=True)
def _shifted_range(n, H, W, oh0, oh1, di, dj):
    """For a row of n images' output rows oh0:oh1 and the tap offset (di, dj): entry t of the
    row reads entry t + shift of the channel-major plane, for t in t0:t1 (the entries whose
    pixel exists at all; none, t0 = t1, where the tap reads only padding: then t0 is clipped
    to the row, which the zeroing up to t0 must not leave). Returns (t0, t1, shift)."""
    shift = (oh0 + di) * W + dj
    length = n * (oh1 - oh0) * W
    t0 = min(max(0, -shift), length)
    return t0, max(t0, min(length, n * H * W - shift)), shift


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
# padding: a select in the copy's one pass, where zeroing them after the copy would be a
# scattered store for every image row of every tap (2.3x slower, docs/performance-history.md).
GEOMETRY_COLUMNS = 7


@functools.lru_cache(maxsize=256)
def same_tables(pieces, k):
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
def im2col_same(xc, k, geometry, keep, cols):
    """Unfold the pieces of a channel-major input xc (C, *) for a "same" k x k convolution into
    cols (C*k*k, *), rows ordered (c, i, j) as ``im2col``'s."""
    pieces, p = geometry.shape[0], k // 2
    for t in prange(cols.shape[0] * pieces):  # (row, piece) pairs, the pieces inner
        r, piece = t // pieces, t % pieces
        c, ij = r // (k * k), r % (k * k)
        n, H, W, oh0, oh1, a, b = geometry[piece]
        L = n * (oh1 - oh0) * W
        _unfold_row_same(xc[c, a:a + n * H * W], n, H, W, oh0, oh1, ij // k - p, ij % k - p,
                         keep[ij, b:b + L], cols[r, b:b + L])


@njit(parallel=True, cache=True, nogil=True)
def col2im_same_add(dcols, k, geometry, keep, dxc):
    """The adjoint of ``im2col_same``: add dcols into the channel-major gradient dxc (C, *)."""
    pieces, p = geometry.shape[0], k // 2
    for t in prange(dxc.shape[0] * pieces):  # one (channel, piece) per task: no shared pixel
        c, piece = t // pieces, t % pieces
        n, H, W, oh0, oh1, a, b = geometry[piece]
        L = n * (oh1 - oh0) * W
        for ij in range(k * k):
            _fold_row_same(dcols[c * k * k + ij, b:b + L], n, H, W, oh0, oh1, ij // k - p,
                           ij % k - p, keep[ij, b:b + L], dxc[c, a:a + n * H * W])

