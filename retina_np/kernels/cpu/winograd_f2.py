"""Winograd's F(2x2, 3x3) on the CPU: the transforms as Numba loops (see ``winograd.py`` for
the algorithm), level by level, and the tile tables that F(4x4, 3x3) (``winograd_f4.py``)
shares.

Tiles: on a level of H x W pixels (padding 1) there are ceil(H/2) x ceil(W/2) tiles per image
(ceil(H/4) x ceil(W/4) for F(4x4, 3x3)); odd sizes (the 1x1 level) compute outputs past the
edge that are dropped. Tiles are numbered level, tile row, tile column, image (the images
innermost, see the transforms below).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

# The transforms' matrices (F(2x2, 3x3)): B^T for the input window, G for the filter, A^T for
# the output. The kernels below write them out as additions; these are for the tests and the
# chapters.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
A = np.ascontiguousarray(AT.T)  # (4, 2): its entries are 0 and +-1, exact in any dtype

@functools.lru_cache(maxsize=64)
def tiles(n, hws, out):
    """The tile table of n images with levels hws (a Joint's, or one level of (N, C, H, W)
    images) for blocks of out x out outputs (2: F(2x2, 3x3), 4: F(4x4, 3x3)): (levels, 6)
    int64, one row (H, W, the level's first column in a Joint, first tile, tile rows, tile
    columns) per level, and the number of tiles P. Made once per shape: it must not be
    written to."""
    rows, start, tile = [], 0, 0
    for h, w in hws:
        th, tw = -(-h // out), -(-w // out)
        rows.append((h, w, start, tile, th, tw))
        start += n * h * w
        tile += n * th * tw
    return np.array(rows, np.int64).reshape(-1, 6), tile


# The transforms work level by level on flat arrays whose entries are ordered tile row a, tile
# column b, image m (images innermost, the tiles' order in V and M too): the levels' images
# have the same geometry, so every step but the first and last is one contiguous loop over
# all tiles of the level, which LLVM vectorises. The windows overlap by two pixels, so the
# padded input is split into its even and odd columns Q[0] and Q[1] (rows pr, columns q,
# images m): a window's columns 2b..2b+3 are Q[0][b], Q[1][b], Q[0][b+1], Q[1][b+1], and its
# rows 2a..2a+3 are rows a and a+1 of the even and the odd padded rows.


@njit(cache=True, nogil=True)
def _sizes(table, n, out):
    """The largest per-level buffers for blocks of out x out: (padded rows x (tile columns
    + 1) x n, (tile rows + 1) x tile columns x n)."""
    e = r = 1
    for level in range(table.shape[0]):
        th, tw = table[level, 4], table[level, 5]
        e = max(e, (out * th + 2) * (tw + 1) * n)
        r = max(r, (th + 1) * tw * n)
    return e, r


# The helpers below are inlined into the transforms by Numba (inline="always"): called as
# functions, with array views as arguments, they made a head layer a third slower
# (docs/performance-history.md "Kernel notes").
@njit(cache=True, nogil=True, inline="always")
def _bt(a, b, shift, L, t0, t1, t2, t3):
    """B^T's step along one direction, for L windows at once: each window's four values
    (d0, d1, d2, d3) are (a[q], b[q], a[q + shift], b[q + shift]) (the even and odd lines of
    the input, the next window starting two lines on) -> (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
    in t0..t3 [q]."""
    for q in range(L):
        a0, b0, a1, b1 = a[q], b[q], a[q + shift], b[q + shift]
        t0[q] = a0 - a1
        t1[q] = b0 + a1
        t2[q] = a1 - b0
        t3[q] = b0 - b1


@njit(cache=True, nogil=True, inline="always")
def _bt_adjoint(t0, t1, t2, t3, shift, L, a, b):
    """The adjoint of ``_bt``: a, b [0, L + shift) <- the gradients t0..t3 [0, L). Entries q
    and q + shift of neighbouring windows are the same, so each is written by one loop and
    added to by the next."""
    for q in range(L):
        a[q] = t0[q]
        b[q] = t1[q] - t2[q] + t3[q]
    a[L:L + shift] = 0
    b[L:L + shift] = 0
    for q in range(L):
        a[q + shift] += t1[q] + t2[q] - t0[q]
        b[q + shift] -= t3[q]


@njit(cache=True, nogil=True)
def input_transform(x, cs, ms, n, table, V, lo, hi):
    """x (flat; channel stride cs, image strides ms (levels,), see ``strides``) -> V (16, C,
    P): B^T d B of every tile's 4x4 window (the pixels outside the image are zeros)."""
    e_size, r_size = _sizes(table, n, 2)
    for c in range(lo, hi):
        Q = np.empty((2, e_size), x.dtype)  # the padded input's even and odd columns (pr, q, m)
        R = np.empty((4, 2, r_size), x.dtype)  # B^T along the rows: (l, pr % 2, pr // 2, b, m)
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            q1, twn, L = tw + 1, tw * n, th * tw * n
            Q[:, :(2 * th + 2) * q1 * n] = 0
            _planes_to_phases(x, cs, ms, n, c, level, H, W, start, q1, 2, Q)
            for pr in range(2 * th + 2):  # B^T along each padded row, all (b, m) at once:
                row = (pr // 2) * twn  # window columns 0..3: Q[0][b], Q[1][b], Q[0][b+1], Q[1][b+1]
                _bt(Q[0, pr * q1 * n:], Q[1, pr * q1 * n:], n, twn, R[0, pr % 2, row:],
                    R[1, pr % 2, row:], R[2, pr % 2, row:], R[3, pr % 2, row:])
            for col in range(4):  # and down each column (rows: even, odd, even + 1, odd + 1)
                _bt(R[col, 0], R[col, 1], twn, L, V[col, c, tile:], V[4 + col, c, tile:],
                    V[8 + col, c, tile:], V[12 + col, c, tile:])


@njit(cache=True, nogil=True)
def input_transform_adjoint(dV, n, table, dx, cs, ms, lo, hi):
    """The adjoint of ``input_transform``: dV (16, C, P) -> dx (flat, strides cs, ms), each
    tile's B dV B^T added onto its window (overlapping windows add up; the padding's share is
    dropped)."""
    e_size, r_size = _sizes(table, n, 2)
    for c in range(lo, hi):
        dQ = np.empty((2, e_size), dx.dtype)
        dR = np.empty((4, 2, r_size), dx.dtype)
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            q1, twn, L = tw + 1, tw * n, th * tw * n
            for col in range(4):  # the columns' step backwards
                _bt_adjoint(dV[col, c, tile:], dV[4 + col, c, tile:], dV[8 + col, c, tile:],
                            dV[12 + col, c, tile:], twn, L, dR[col, 0], dR[col, 1])
            for pr in range(2 * th + 2):  # the rows' step backwards
                row = (pr // 2) * twn
                _bt_adjoint(dR[0, pr % 2, row:], dR[1, pr % 2, row:], dR[2, pr % 2, row:],
                            dR[3, pr % 2, row:], n, twn, dQ[0, pr * q1 * n:],
                            dQ[1, pr * q1 * n:])
            _phases_to_planes(dQ, n, c, level, H, W, start, q1, 2, dx, cs, ms)


@njit(cache=True, nogil=True, inline="always")
def _blocks_to_planes(Y, y, cs, ms, n, f, level, H, W, start, tw, out):
    """Channel f's outputs on one level from the out x out blocks into y (flat, strides cs,
    ms), image by image: pixel (r, s) is entry out*(r % out) + s % out of block ((r//out)*tw +
    s//out)*n + m of Y (out*out, tiles) (the outputs past the edge are dropped)."""
    for m in range(n):
        p = start + m * ms[level] + f * cs
        plane = y[p:p + H * W]
        for r in range(H):
            row = (r // out) * tw * n + m
            for j in range(out):
                block = Y[out * (r % out) + j]
                for s in range(j, W, out):
                    plane[r * W + s] = block[row + (s // out) * n]


@njit(cache=True, nogil=True, inline="always")
def _planes_to_blocks(dy, cs, ms, n, f, level, H, W, start, tw, out, L, D):
    """The adjoint of ``_blocks_to_planes``: channel f's gradients on one level into their
    places in D (out*out, tiles), the places past the edge zero."""
    if H % out or W % out:  # some tiles have outputs past the edge
        D[:, :L] = 0
    for m in range(n):
        p = start + m * ms[level] + f * cs
        plane = dy[p:p + H * W]
        for r in range(H):
            row = (r // out) * tw * n + m
            for j in range(out):
                block = D[out * (r % out) + j]
                for s in range(j, W, out):
                    block[row + (s // out) * n] = plane[r * W + s]


@njit(cache=True, nogil=True, inline="always")
def _planes_to_phases(x, cs, ms, n, c, level, H, W, start, q1, out, Q):
    """Channel c's planes on one level into the column phases Q (out, (pr, q, m)) of the
    padded input: pixel (r, s) is padded (r + 1, s + 1) = (r + 1, out*q + j) (the padding is
    left as it is)."""
    for m in range(n):
        p = start + m * ms[level] + c * cs
        plane = x[p:p + H * W]
        for r in range(H):
            row = ((r + 1) * q1) * n + m
            for j in range(out):
                phase = Q[j]
                for s in range((j + out - 1) % out, W, out):
                    phase[row + ((s + 1) // out) * n] = plane[r * W + s]


@njit(cache=True, nogil=True, inline="always")
def _phases_to_planes(Q, n, c, level, H, W, start, q1, out, dx, cs, ms):
    """The adjoint of ``_planes_to_phases``: the pixels from Q into channel c's planes (the
    padding's entries are dropped)."""
    for m in range(n):
        p = start + m * ms[level] + c * cs
        plane = dx[p:p + H * W]
        for r in range(H):
            row = ((r + 1) * q1) * n + m
            for j in range(out):
                phase = Q[j]
                for s in range((j + out - 1) % out, W, out):
                    plane[r * W + s] = phase[row + ((s + 1) // out) * n]


@njit(cache=True, nogil=True)
def output_transform(M, n, table, b, y, cs, ms, lo, hi):
    """M (16, F, P) -> y (flat, strides cs, ms): A^T M A of every tile, the 2x2 block of
    outputs it gives (those past an odd edge dropped), plus the bias b (F,)."""
    _, r_size = _sizes(table, n, 2)
    for f in range(lo, hi):
        Y = np.empty((4, r_size), y.dtype)  # each tile's outputs (u, v) at 2*u + v
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            L = th * tw * n
            m0, m1, m2, m3 = (M[0, f, tile:tile + L], M[1, f, tile:tile + L],
                              M[2, f, tile:tile + L], M[3, f, tile:tile + L])
            m4, m5, m6, m7 = (M[4, f, tile:tile + L], M[5, f, tile:tile + L],
                              M[6, f, tile:tile + L], M[7, f, tile:tile + L])
            m8, m9, m10, m11 = (M[8, f, tile:tile + L], M[9, f, tile:tile + L],
                                M[10, f, tile:tile + L], M[11, f, tile:tile + L])
            m12, m13, m14, m15 = (M[12, f, tile:tile + L], M[13, f, tile:tile + L],
                                  M[14, f, tile:tile + L], M[15, f, tile:tile + L])
            y0, y1, y2, y3 = Y[0], Y[1], Y[2], Y[3]
            bias = b[f]
            for q in range(L):
                # A^T down the columns: (m0 + m1 + m2, m1 - m2 - m3) ...
                s00 = m0[q] + m4[q] + m8[q]
                s01 = m1[q] + m5[q] + m9[q]
                s02 = m2[q] + m6[q] + m10[q]
                s03 = m3[q] + m7[q] + m11[q]
                s10 = m4[q] - m8[q] - m12[q]
                s11 = m5[q] - m9[q] - m13[q]
                s12 = m6[q] - m10[q] - m14[q]
                s13 = m7[q] - m11[q] - m15[q]
                # ... and along the rows
                y0[q] = s00 + s01 + s02 + bias
                y1[q] = s01 - s02 - s03 + bias
                y2[q] = s10 + s11 + s12 + bias
                y3[q] = s11 - s12 - s13 + bias
            _blocks_to_planes(Y, y, cs, ms, n, f, level, H, W, start, tw, 2)


@njit(cache=True, nogil=True)
def output_transform_adjoint(dy, cs, ms, n, table, dM, lo, hi):
    """The adjoint of ``output_transform`` (without the bias): dy (flat, strides cs, ms) ->
    dM (16, F, P), A dY A^T of every tile's 2x2 block of output gradients (zeros past an odd
    edge)."""
    _, r_size = _sizes(table, n, 2)
    for f in range(lo, hi):
        D = np.empty((4, r_size), dy.dtype)  # each tile's output gradients (u, v) at 2*u + v
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            L = th * tw * n
            _planes_to_blocks(dy, cs, ms, n, f, level, H, W, start, tw, 2, L, D)
            d00, d01, d10, d11 = D[0], D[1], D[2], D[3]
            for i in range(4):  # row i of A dY A^T: A's row i down the columns ...
                a0, a1 = A[i, 0], A[i, 1]
                g0, g1, g2, g3 = (dM[4 * i, f, tile:tile + L], dM[4 * i + 1, f, tile:tile + L],
                                  dM[4 * i + 2, f, tile:tile + L], dM[4 * i + 3, f, tile:tile + L])
                for q in range(L):
                    e0 = a0 * d00[q] + a1 * d10[q]
                    e1 = a0 * d01[q] + a1 * d11[q]
                    # ... and along the row: (e0, e0 + e1, e0 - e1, -e1)
                    g0[q] = e0
                    g1[q] = e0 + e1
                    g2[q] = e0 - e1
                    g3[q] = -e1


def strides(a, n, hws):
    """Where pixel (r, s) of channel c of image m on level l lies in a.ravel(): at
    start_l + m * ms[l] + c * cs + r * W + s (start_l: the tile table's). a: a Joint's data
    (C, T), levels hws; or (N, C, H, W), one level. -> (cs, ms int64 (levels,))."""
    if a.ndim == 2:
        return a.shape[1], np.array([h * w for h, w in hws], np.int64)
    N, C, H, W = a.shape
    return H * W, np.array([C * H * W], np.int64)


def _empty(a, channels, n, hws):
    """An uninitialised array in a's layout (a Joint's data, or (N, C, H, W) images) with
    ``channels`` channels."""
    shape = (channels, a.shape[1]) if a.ndim == 2 else (n, channels) + tuple(hws[0])
    return np.empty(shape, a.dtype)


def _channels(a):
    """The channel count of a (a Joint's data (C, T), or (N, C, H, W) images)."""
    return a.shape[0 if a.ndim == 2 else 1]

