"""Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3) for 3x3 "same" convolutions on the
CPU (``cpu._winograd``; Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016). The kernels take a Joint of levels or (N, C, H, W) images; the package uses them for
the heads' Joints, and for the backbone's and the FPN's convolutions of images that run on one
thread, where they pay (see ``cpu.WINOGRAD``), with 4x4 blocks (``cpu.WINOGRAD_OUT``).

F(2x2, 3x3) first, as it is the smaller one to read; F(4x4, 3x3) (below, the same steps with
6x6 windows and 36 products) is what the package runs.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 window of the input (stride
2 between windows, so neighbouring windows overlap by two pixels). Directly that is 36
multiplications per channel pair; Winograd's algorithm needs 16:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          d: the 4x4 window, g: the 3x3 filter

with the constant matrices below and * elementwise. The two 4x4 transforms are cheap (only
additions; G has halves), and summed over the input channels the elementwise products are 16
matrix products, one per position (i, j) of the 4x4 tile:

    M[k] = U[k] @ V[k]      U (16, F, C) the transformed filters, V (16, C, P) the
                            transformed windows, P tiles: (F, P) = (F, C) @ (C, P)

so a convolution is an input transform, 16 GEMMs with K = C instead of one with K = 9*C, and
an output transform. The backward is the adjoint of each step (Y is linear in U and V,
U in g, V in d): dM = A dY A^T per tile; dV[k] = U[k]^T @ dM[k] and dU[k] = dM[k] @ V[k]^T
(16 GEMMs each); dd = B dV B^T added onto each window (the windows overlap) and dg = G^T dU G.
The results equal the direct convolution's up to float rounding (the transforms add and
subtract, and G halves: float32 results differ from im2col + GEMM by a few ulps of the
largest terms; tests/kernels/test_winograd.py, and the float64 finite-difference checks of
the Joint convolution in tests/kernels/test_joint_levels.py).

Why here: the heads' GEMMs (K = 576, F = 64) ran at 64-72 GFLOP/s on one core against 96 for
a large square one, since OpenBLAS packs the 9x larger unfolded matrix and uses each packed
value for only 64 rows; with K = 64 the same core ran the 16 products at 90 GFLOP/s, with
2.25x fewer multiplications. A layer of the shapes preset's heads, forward and backward, on
one core: see docs/performance.md.

Tiles: on a level of H x W pixels (padding 1) there are ceil(H/2) x ceil(W/2) tiles per image
(ceil(H/4) x ceil(W/4) for F(4x4, 3x3)); odd sizes (the 1x1 level) compute outputs past the
edge that are dropped. Tiles are numbered
level, tile row, tile column, image (the images innermost, see the transforms below).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

# The transforms' matrices (F(2x2, 3x3)): B^T for the input window, G for the filter, A^T for
# the output. The kernels below write them out as additions; these are for the tests and the
# chapter (notebooks/01_convolution.ipynb).
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
A = np.ascontiguousarray(AT.T)  # (4, 2): its entries are 0 and +-1, exact in any dtype

OUT = 2  # the side of a tile's block of outputs (its input window: OUT + 2)


@functools.lru_cache(maxsize=64)
def tiles(n, hws, out=OUT):
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


def filters(w, out=OUT):
    """w (F, C, 3, 3) -> U (16, F, C): G g G^T of every filter, entry (i, j) at 4*i + j; with
    out=4 (F(4x4, 3x3)) U (36, F, C), entry (i, j) at 6*i + j."""
    F, C = w.shape[:2]
    terms = (out + 2) ** 2
    U = np.empty((terms, F, C), w.dtype)
    _KERNELS[out][4](w.reshape(F * C, 9), U.reshape(terms, F * C))
    return U


def filters_adjoint(dU):
    """The adjoint of ``filters``: dU (16 or 36, F, C) -> dw (F, C, 3, 3) = G^T dU G."""
    terms, F, C = dU.shape
    dw = np.empty((F, C, 3, 3), dU.dtype)
    _KERNELS[block_side(dU)][5](np.ascontiguousarray(dU).reshape(terms, F * C),
                                dw.reshape(F * C, 9))
    return dw


def block_side(a):
    """The block side of a transformed array (V, M, dM, U) by its first dimension: 16 -> 2
    (F(2x2, 3x3)), 36 -> 4 (F(4x4, 3x3))."""
    return {16: 2, 36: 4}[a.shape[0]]


@njit(cache=True, nogil=True)
def _times_g(u0, u1, u2, u3):
    """(u0, u1, u2, u3) @ G: (u0 + (u1 + u2)/2, (u1 - u2)/2, (u1 + u2)/2 + u3)."""
    return u0 + (u1 + u2) * 0.5, (u1 - u2) * 0.5, (u1 + u2) * 0.5 + u3


@njit(cache=True, nogil=True)
def _times_gt(h0, h1, h2):
    """(h0, h1, h2) @ G^T: (h0, (h0 + h1 + h2)/2, (h0 - h1 + h2)/2, h2)."""
    return h0, (h0 + h1 + h2) * 0.5, (h0 - h1 + h2) * 0.5, h2


@njit(cache=True, nogil=True)
def _filters(g, U):
    """g (filters, 9) -> U (16, filters): G g G^T, down the columns of g, then along the
    rows (U's column t holds the 4x4 result row by row)."""
    for t in range(g.shape[0]):
        a0, a1, a2, a3 = _times_gt(g[t, 0], g[t, 3], g[t, 6])  # G times g's columns
        b0, b1, b2, b3 = _times_gt(g[t, 1], g[t, 4], g[t, 7])
        c0, c1, c2, c3 = _times_gt(g[t, 2], g[t, 5], g[t, 8])
        U[0, t], U[1, t], U[2, t], U[3, t] = _times_gt(a0, b0, c0)  # and G^T along the rows
        U[4, t], U[5, t], U[6, t], U[7, t] = _times_gt(a1, b1, c1)
        U[8, t], U[9, t], U[10, t], U[11, t] = _times_gt(a2, b2, c2)
        U[12, t], U[13, t], U[14, t], U[15, t] = _times_gt(a3, b3, c3)


@njit(cache=True, nogil=True)
def _filters_adjoint(dU, dg):
    """dU (16, filters) -> dg (filters, 9) = G^T dU G."""
    for t in range(dU.shape[1]):
        p0, q0, r0 = _times_g(dU[0, t], dU[1, t], dU[2, t], dU[3, t])  # rows of dU G
        p1, q1, r1 = _times_g(dU[4, t], dU[5, t], dU[6, t], dU[7, t])
        p2, q2, r2 = _times_g(dU[8, t], dU[9, t], dU[10, t], dU[11, t])
        p3, q3, r3 = _times_g(dU[12, t], dU[13, t], dU[14, t], dU[15, t])
        dg[t, 0], dg[t, 3], dg[t, 6] = _times_g(p0, p1, p2, p3)  # and G^T down its columns
        dg[t, 1], dg[t, 4], dg[t, 7] = _times_g(q0, q1, q2, q3)
        dg[t, 2], dg[t, 5], dg[t, 8] = _times_g(r0, r1, r2, r3)


# The transforms work level by level on flat arrays whose entries are ordered tile row a, tile
# column b, image m (images innermost, the tiles' order in V and M too): the levels' images
# have the same geometry, so every step but the first and last is one contiguous loop over
# all tiles of the level, which LLVM vectorises. The windows overlap by two pixels, so the
# padded input is split into its even and odd columns Q[0] and Q[1] (rows pr, columns q,
# images m): a window's columns 2b..2b+3 are Q[0][b], Q[1][b], Q[0][b+1], Q[1][b+1], and its
# rows 2a..2a+3 are rows a and a+1 of the even and the odd padded rows.


@njit(cache=True, nogil=True)
def _sizes(table, n, out=2):
    """The largest per-level buffers for blocks of out x out: (padded rows x (tile columns
    + 1) x n, (tile rows + 1) x tile columns x n)."""
    e = r = 1
    for level in range(table.shape[0]):
        th, tw = table[level, 4], table[level, 5]
        e = max(e, (out * th + 2) * (tw + 1) * n)
        r = max(r, (th + 1) * tw * n)
    return e, r


# The helpers below are inlined into the transforms by Numba (inline="always"): called as
# functions, with array views as arguments, they made a head layer 25-35% slower (forward
# 2.3 -> 3.1 ms, backward 4.3 -> 5.6 ms on one core, ad-hoc timing).
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
def input_transform(x, cs, ms, n, table, V):
    """x (flat; channel stride cs, image strides ms (levels,), see ``strides``) -> V (16, C,
    P): B^T d B of every tile's 4x4 window (the pixels outside the image are zeros)."""
    C = V.shape[1]
    e_size, r_size = _sizes(table, n)
    for c in range(C):
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
def input_transform_adjoint(dV, n, table, dx, cs, ms):
    """The adjoint of ``input_transform``: dV (16, C, P) -> dx (flat, strides cs, ms), each
    tile's B dV B^T added onto its window (overlapping windows add up; the padding's share is
    dropped)."""
    C = dV.shape[1]
    e_size, r_size = _sizes(table, n)
    for c in range(C):
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
def output_transform(M, n, table, b, y, cs, ms):
    """M (16, F, P) -> y (flat, strides cs, ms): A^T M A of every tile, the 2x2 block of
    outputs it gives (those past an odd edge dropped), plus the bias b (F,)."""
    F = M.shape[1]
    _, r_size = _sizes(table, n)
    for f in range(F):
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
def output_transform_adjoint(dy, cs, ms, n, table, dM):
    """The adjoint of ``output_transform`` (without the bias): dy (flat, strides cs, ms) ->
    dM (16, F, P), A dY A^T of every tile's 2x2 block of output gradients (zeros past an odd
    edge)."""
    F = dM.shape[1]
    _, r_size = _sizes(table, n)
    for f in range(F):
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


# ----------------------------------------------------------------------------- F(4x4, 3x3)
# The same algorithm with 4x4 blocks of outputs from 6x6 windows (Lavin & Gray's F(4x4,
# 3x3)): 36 products per channel pair for 16 outputs, against 4 x 16 = 64 by F(2x2, 3x3) and
# 144 directly. The transforms have larger entries (B^T up to 5, A^T up to 8, G down to 1/24),
# so float32 results are a few times further from the exact ones than F(2x2, 3x3)'s
# (tests/kernels/test_winograd.py); on the heads' small levels more of each window is padding
# (a 1x1 level fills one of the sixteen outputs of its tile).
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


_SIXTH, _TWELFTH, _TWENTYFOURTH = 1 / 6, 1 / 12, 1 / 24  # products, not divisions, in G4's


@njit(cache=True, nogil=True, inline="always")
def _times_gt4(h0, h1, h2, L, o0, o1, o2, o3, o4, o5):
    """G4 @ (h0, h1, h2) for L columns at once: the six results into o0..o5 [q] (float64
    arithmetic: G4's entries are not exact in float32)."""
    for q in range(L):
        a, b, c = np.float64(h0[q]), np.float64(h1[q]), np.float64(h2[q])
        s, t = (a + c) * _SIXTH, a * _TWENTYFOURTH + c * _SIXTH
        o0[q] = a * 0.25
        o1[q] = -s - b * _SIXTH
        o2[q] = b * _SIXTH - s
        o3[q] = t + b * _TWELFTH
        o4[q] = t - b * _TWELFTH
        o5[q] = c


@njit(cache=True, nogil=True, inline="always")
def _times_g4(u0, u1, u2, u3, u4, u5, L, o0, o1, o2):
    """G4^T @ (u0, ..., u5) for L columns at once: the three results into o0..o2 [q]."""
    for q in range(L):
        a, b, c = np.float64(u0[q]), np.float64(u1[q]), np.float64(u2[q])
        d, e, f = np.float64(u3[q]), np.float64(u4[q]), np.float64(u5[q])
        o0[q] = a * 0.25 - (b + c) * _SIXTH + (d + e) * _TWENTYFOURTH
        o1[q] = (c - b) * _SIXTH + (d - e) * _TWELFTH
        o2[q] = (d + e - b - c) * _SIXTH + f


# The F(4x4, 3x3) filter transforms and output transforms run their two 1-D steps as two
# passes over all columns (filters, or tiles), through a scratch array: each loop then reads
# a few arrays and writes a few, which LLVM vectorises. One loop doing both steps (36 arrays
# read, 16 written) ran 60 ns per tile and channel, slower than F(2x2, 3x3)'s whole transform.


@njit(cache=True, nogil=True)
def _filters4(g, U):
    """g (filters, 9) -> U (36, filters): G g G^T (6x6, row by row), as ``_filters``."""
    L = g.shape[0]
    gt = np.empty((9, L), g.dtype)  # each tap a contiguous row (written out: numpy's
    for t in range(L):              # transposed copies took seconds to compile)
        for k in range(9):
            gt[k, t] = g[t, k]
    Gg = np.empty((6, 3, L))  # G g: (row i, column j)
    for j in range(3):  # G down each column of g
        _times_gt4(gt[j], gt[3 + j], gt[6 + j], L, Gg[0, j], Gg[1, j], Gg[2, j], Gg[3, j],
                   Gg[4, j], Gg[5, j])
    for i in range(6):  # and G^T along each row
        _times_gt4(Gg[i, 0], Gg[i, 1], Gg[i, 2], L, U[6 * i], U[6 * i + 1], U[6 * i + 2],
                   U[6 * i + 3], U[6 * i + 4], U[6 * i + 5])


@njit(cache=True, nogil=True)
def _filters4_adjoint(dU, dg):
    """dU (36, filters) -> dg (filters, 9) = G^T dU G."""
    L = dU.shape[1]
    dUG = np.empty((6, 3, L))  # dU G: (row i, column j)
    for i in range(6):
        _times_g4(dU[6 * i], dU[6 * i + 1], dU[6 * i + 2], dU[6 * i + 3], dU[6 * i + 4],
                  dU[6 * i + 5], L, dUG[i, 0], dUG[i, 1], dUG[i, 2])
    dgt = np.empty((9, L), dg.dtype)
    for j in range(3):  # and G^T down its columns
        _times_g4(dUG[0, j], dUG[1, j], dUG[2, j], dUG[3, j], dUG[4, j], dUG[5, j], L, dgt[j],
                  dgt[3 + j], dgt[6 + j])
    for t in range(L):
        for k in range(9):
            dg[t, k] = dgt[k, t]


# The transforms are laid out as F(2x2, 3x3)'s, with four phases for two: the windows start
# four pixels apart and overlap by two, so the padded input is split into its columns 4q + j
# (phase j = 0..3; arrays (pr, q, m)), a window's columns 4b..4b+5 being phases 0..3 at b and
# phases 0 and 1 at b + 1; and its rows likewise.


@njit(cache=True, nogil=True, inline="always")
def _bt4(p0, p1, p2, p3, shift, L, t0, t1, t2, t3, t4, t5):
    """B^T's step along one direction for L windows: each window's six values are (p0[q],
    p1[q], p2[q], p3[q], p0[q + shift], p1[q + shift]) -> t0..t5 [q]. The constants are of
    the arrays' dtype, so that float32 stays float32 (and vectorises eight lanes wider)."""
    to = t0.dtype.type
    two, four, five = to(2), to(4), to(5)
    for q in range(L):
        d0, d1, d2, d3, d4, d5 = p0[q], p1[q], p2[q], p3[q], p0[q + shift], p1[q + shift]
        t0[q] = four * d0 - five * d2 + d4
        t1[q] = d3 + d4 - four * (d1 + d2)
        t2[q] = d4 - d3 + four * (d1 - d2)
        t3[q] = d4 - d2 + two * (d3 - d1)
        t4[q] = d4 - d2 - two * (d3 - d1)
        t5[q] = four * d1 - five * d3 + d5


@njit(cache=True, nogil=True, inline="always")
def _bt4_adjoint(t0, t1, t2, t3, t4, t5, shift, L, p0, p1, p2, p3):
    """The adjoint of ``_bt4``: p0, p1 [0, L + shift) and p2, p3 [0, L) <- the gradients
    t0..t5 [0, L) (B times each window's six, the last two added onto the next window's)."""
    to = t0.dtype.type
    two, four, five = to(2), to(4), to(5)
    for q in range(L):
        a0, a1, a2, a3, a4, a5 = t0[q], t1[q], t2[q], t3[q], t4[q], t5[q]
        p0[q] = four * a0
        p1[q] = four * (a2 - a1 + a5) + two * (a4 - a3)
        p2[q] = -five * a0 - four * (a1 + a2) - a3 - a4
        p3[q] = a1 - a2 + two * (a3 - a4) - five * a5
    p0[L:L + shift] = 0
    p1[L:L + shift] = 0
    for q in range(L):
        p0[q + shift] += t0[q] + t1[q] + t2[q] + t3[q] + t4[q]
        p1[q + shift] += t5[q]


@njit(cache=True, nogil=True)
def input_transform4(x, cs, ms, n, table, V):
    """``input_transform`` for F(4x4, 3x3): x (flat; strides cs, ms) -> V (36, C, P), B^T d B
    of every tile's 6x6 window."""
    C = V.shape[1]
    e_size, r_size = _sizes(table, n, 4)
    for c in range(C):
        Q = np.empty((4, e_size), x.dtype)  # the padded input's columns by phase, (pr, q, m)
        R = np.empty((6, 4, r_size), x.dtype)  # B^T along the rows: (l, pr % 4, pr // 4, b, m)
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            q1, twn, L = tw + 1, tw * n, th * tw * n
            Q[:, :(4 * th + 2) * q1 * n] = 0
            _planes_to_phases(x, cs, ms, n, c, level, H, W, start, q1, 4, Q)
            for pr in range(4 * th + 2):  # B^T along each padded row, all (b, m) at once
                row, o, ph = (pr // 4) * twn, pr * q1 * n, pr % 4
                _bt4(Q[0, o:], Q[1, o:], Q[2, o:], Q[3, o:], n, twn, R[0, ph, row:],
                     R[1, ph, row:], R[2, ph, row:], R[3, ph, row:], R[4, ph, row:],
                     R[5, ph, row:])
            for col in range(6):  # and down each column
                _bt4(R[col, 0], R[col, 1], R[col, 2], R[col, 3], twn, L, V[col, c, tile:],
                     V[6 + col, c, tile:], V[12 + col, c, tile:], V[18 + col, c, tile:],
                     V[24 + col, c, tile:], V[30 + col, c, tile:])


@njit(cache=True, nogil=True)
def input_transform4_adjoint(dV, n, table, dx, cs, ms):
    """The adjoint of ``input_transform4``: dV (36, C, P) -> dx (flat, strides cs, ms)."""
    C = dV.shape[1]
    e_size, r_size = _sizes(table, n, 4)
    for c in range(C):
        dQ = np.empty((4, e_size), dx.dtype)
        dR = np.empty((6, 4, r_size), dx.dtype)
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            q1, twn, L = tw + 1, tw * n, th * tw * n
            for col in range(6):  # the columns' step backwards
                _bt4_adjoint(dV[col, c, tile:], dV[6 + col, c, tile:], dV[12 + col, c, tile:],
                             dV[18 + col, c, tile:], dV[24 + col, c, tile:],
                             dV[30 + col, c, tile:], twn, L, dR[col, 0], dR[col, 1],
                             dR[col, 2], dR[col, 3])
            for pr in range(4 * th + 2):  # the rows' step backwards
                row, o, ph = (pr // 4) * twn, pr * q1 * n, pr % 4
                _bt4_adjoint(dR[0, ph, row:], dR[1, ph, row:], dR[2, ph, row:],
                             dR[3, ph, row:], dR[4, ph, row:], dR[5, ph, row:], n, twn,
                             dQ[0, o:], dQ[1, o:], dQ[2, o:], dQ[3, o:])
            _phases_to_planes(dQ, n, c, level, H, W, start, q1, 4, dx, cs, ms)


@njit(cache=True, nogil=True, inline="always")
def _at4(m0, m1, m2, m3, m4, m5, L, bias, o0, o1, o2, o3):
    """AT4 @ (m0, ..., m5) for L tiles at once, plus bias: the four results into o0..o3 [q]."""
    to = o0.dtype.type
    two, four, eight = to(2), to(4), to(8)
    for q in range(L):
        a, b, c, d, e = m0[q], m1[q], m2[q], m3[q], m4[q]
        o0[q] = a + b + c + d + e + bias
        o1[q] = b - c + two * (d - e) + bias
        o2[q] = b + c + four * (d + e) + bias
        o3[q] = b - c + eight * (d - e) + m5[q] + bias


@njit(cache=True, nogil=True, inline="always")
def _a4(g0, g1, g2, g3, L, o0, o1, o2, o3, o4, o5):
    """AT4^T @ (g0, g1, g2, g3) for L tiles at once: the six results into o0..o5 [q]."""
    to = o0.dtype.type
    two, four, eight = to(2), to(4), to(8)
    for q in range(L):
        a, b, c, d = g0[q], g1[q], g2[q], g3[q]
        o0[q] = a
        o1[q] = a + b + c + d
        o2[q] = a - b + c - d
        o3[q] = a + two * b + four * c + eight * d
        o4[q] = a - two * b + four * c - eight * d
        o5[q] = d


@njit(cache=True, nogil=True)
def output_transform4(M, n, table, b, y, cs, ms):
    """``output_transform`` for F(4x4, 3x3): M (36, F, P) -> y (flat, strides cs, ms), A^T M A
    of every tile (its 4x4 block, the outputs past the edge dropped), plus the bias b (F,)."""
    F = M.shape[1]
    _, r_size = _sizes(table, n, 4)
    zero = y.dtype.type(0)
    for f in range(F):
        S = np.empty((24, r_size), y.dtype)  # A^T M: (row u, column j) at 6*u + j
        Y = np.empty((16, r_size), y.dtype)  # each tile's outputs (u, v) at 4*u + v
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            L = th * tw * n
            for j in range(6):  # A^T down each column j of the 6x6 tiles
                _at4(M[j, f, tile:], M[6 + j, f, tile:], M[12 + j, f, tile:],
                     M[18 + j, f, tile:], M[24 + j, f, tile:], M[30 + j, f, tile:], L, zero,
                     S[j], S[6 + j], S[12 + j], S[18 + j])
            for u in range(4):  # and along each row u, with the bias
                _at4(S[6 * u], S[6 * u + 1], S[6 * u + 2], S[6 * u + 3], S[6 * u + 4],
                     S[6 * u + 5], L, b[f], Y[4 * u], Y[4 * u + 1], Y[4 * u + 2], Y[4 * u + 3])
            _blocks_to_planes(Y, y, cs, ms, n, f, level, H, W, start, tw, 4)


@njit(cache=True, nogil=True)
def output_transform4_adjoint(dy, cs, ms, n, table, dM):
    """The adjoint of ``output_transform4`` (without the bias): dy (flat, strides cs, ms) ->
    dM (36, F, P), A dY A^T of every tile's 4x4 block of output gradients (zeros past the
    edge)."""
    F = dM.shape[1]
    _, r_size = _sizes(table, n, 4)
    for f in range(F):
        D = np.empty((16, r_size), dy.dtype)  # each tile's output gradients (u, v) at 4*u + v
        E = np.empty((24, r_size), dy.dtype)  # dY A^T: (row u, column j) at 6*u + j
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            L = th * tw * n
            _planes_to_blocks(dy, cs, ms, n, f, level, H, W, start, tw, 4, L, D)
            for u in range(4):  # A along each row u
                _a4(D[4 * u], D[4 * u + 1], D[4 * u + 2], D[4 * u + 3], L, E[6 * u],
                    E[6 * u + 1], E[6 * u + 2], E[6 * u + 3], E[6 * u + 4], E[6 * u + 5])
            for j in range(6):  # and down each column j
                _a4(E[j], E[6 + j], E[12 + j], E[18 + j], L, dM[j, f, tile:],
                    dM[6 + j, f, tile:], dM[12 + j, f, tile:], dM[18 + j, f, tile:],
                    dM[24 + j, f, tile:], dM[30 + j, f, tile:])


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


# out -> (input transform, its adjoint, output transform, its adjoint, filter transform, its
# adjoint)
_KERNELS = {
    2: (input_transform, input_transform_adjoint, output_transform, output_transform_adjoint,
        _filters, _filters_adjoint),
    4: (input_transform4, input_transform4_adjoint, output_transform4,
        output_transform4_adjoint, _filters4, _filters4_adjoint),
}


def transformed_input(x, n, hws, out=OUT):
    """x (C channels, a layout of ``conv3x3_forward``) -> V ((out + 2)^2, C, P): B^T d B per
    tile."""
    table, P = tiles(n, hws, out)
    V = np.empty(((out + 2) ** 2, _channels(x), P), x.dtype)
    _KERNELS[out][0](x.reshape(-1), *strides(x, n, hws), n, table, V)
    return V


def conv3x3_forward(x, n, hws, w, b, keep=None, out=OUT):
    """A 3x3, stride-1, padding-1 convolution: x a Joint's data (C, T) (n images, levels hws),
    or (N, C, H, W) with n = N and hws = ((H, W),) -> y in the same layout, F channels.
    w (F, C, 3, 3), b (F,) or None. keep: None, or an empty list that receives V, the
    transformed input, for ``conv3x3_backward``. out: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3)."""
    F = w.shape[0]
    V = transformed_input(x, n, hws, out)
    if keep is not None:
        keep.append(V)
    M = np.matmul(filters(w, out), V)  # (16, F, C) @ (16, C, P): 16 GEMMs (36 for out=4)
    y = _empty(x, F, n, hws)
    _KERNELS[out][2](M, n, tiles(n, hws, out)[0],
                     b if b is not None else np.zeros(F, x.dtype), y.reshape(-1),
                     *strides(y, n, hws))
    return y


def conv3x3_backward(dy, x, n, hws, w, need_input_grad=True, need_weight_grad=True, V=None,
                     out=OUT):
    """The backward of ``conv3x3_forward`` (without the bias): dy, x in its layout -> (dx or
    None, dw (F, C, 3, 3) or None). V: the forward's transformed input, if it kept it (it
    says which out)."""
    out = block_side(V) if V is not None else out
    dM = output_gradients(dy, n, hws, out)
    dw = conv3x3_backward_weight(dy, x, n, hws, V, dM) if need_weight_grad else None
    dx = conv3x3_backward_input(dy, w, n, hws, dM) if need_input_grad else None
    return dx, dw


def output_gradients(dy, n, hws, out=OUT):
    """dy (F channels, a layout of ``conv3x3_forward``) -> dM ((out + 2)^2, F, P): A dY A^T
    per tile."""
    table, P = tiles(n, hws, out)
    dM = np.empty(((out + 2) ** 2, _channels(dy), P), dy.dtype)
    _KERNELS[out][3](dy.reshape(-1), *strides(dy, n, hws), n, table, dM)
    return dM


def conv3x3_backward_input(dy, w, n, hws, dM=None, out=OUT):
    """dy (F channels) -> dx (C channels, the same layout); dM: ``output_gradients(dy)`` (it
    says which out)."""
    out = block_side(dM) if dM is not None else out
    dM = output_gradients(dy, n, hws, out) if dM is None else dM
    dV = np.matmul(filters(w, out).transpose(0, 2, 1), dM)  # (16, C, F) @ (16, F, P)
    dx = _empty(dy, w.shape[1], n, hws)
    _KERNELS[out][1](dV, n, tiles(n, hws, out)[0], dx.reshape(-1), *strides(dx, n, hws))
    return dx


def conv3x3_backward_weight(dy, x, n, hws, V=None, dM=None, out=OUT):
    """dy (F channels), x (C channels) -> dw (F, C, 3, 3). V: the forward's transformed input,
    dM: ``output_gradients(dy)``, where already at hand (they say which out)."""
    given = V if V is not None else dM
    out = block_side(given) if given is not None else out
    dM = output_gradients(dy, n, hws, out) if dM is None else dM
    V = transformed_input(x, n, hws, out) if V is None else V
    return filters_adjoint(np.matmul(dM, V.transpose(0, 2, 1)))  # (16, F, P) @ (16, P, C)
