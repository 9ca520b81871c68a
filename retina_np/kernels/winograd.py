"""Winograd's minimal filtering F(2x2, 3x3) for the heads' 3x3 "same" convolutions on the CPU
(``cpu._winograd``; Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
The kernels take a Joint of levels or (N, C, H, W) images; the package uses them for the
heads' Joints, and for the backbone's and the FPN's convolutions of images that run on one
thread, where they pay (see ``cpu.WINOGRAD``).

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

Tiles: on a level of H x W pixels (padding 1) there are ceil(H/2) x ceil(W/2) tiles per image;
odd sizes (the 1x1 level) compute outputs past the edge that are dropped. Tiles are numbered
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
def tiles(n, hws):
    """The tile table of n images with levels hws (a Joint's, or one level of (N, C, H, W)
    images): (levels, 6) int64, one row (H, W, the level's first column in a Joint, first
    tile, tile rows, tile columns) per level, and the number of tiles P. Made once per
    shape: it must not be written to."""
    rows, start, tile = [], 0, 0
    for h, w in hws:
        th, tw = (h + 1) // OUT, (w + 1) // OUT
        rows.append((h, w, start, tile, th, tw))
        start += n * h * w
        tile += n * th * tw
    return np.array(rows, np.int64).reshape(-1, 6), tile


def filters(w):
    """w (F, C, 3, 3) -> U (16, F, C): G g G^T of every filter, entry (i, j) at 4*i + j."""
    F, C = w.shape[:2]
    U = np.empty((16, F, C), w.dtype)
    _filters(w.reshape(F * C, 9), U.reshape(16, F * C))
    return U


def filters_adjoint(dU):
    """The adjoint of ``filters``: dU (16, F, C) -> dw (F, C, 3, 3) = G^T dU G."""
    F, C = dU.shape[1:]
    dw = np.empty((F, C, 3, 3), dU.dtype)
    _filters_adjoint(np.ascontiguousarray(dU).reshape(16, F * C), dw.reshape(F * C, 9))
    return dw


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
# padded input is split into its even and odd columns E and O (rows pr, columns q, images m):
# a window's columns 2b..2b+3 are E[b], O[b], E[b+1], O[b+1], and its rows 2a..2a+3 are rows
# a and a+1 of the even and the odd padded rows.


@njit(cache=True, nogil=True)
def _sizes(table, n):
    """The largest per-level buffers: (padded rows x (tile columns + 1) x n, (tile rows + 1)
    x tile columns x n)."""
    e = r = 1
    for level in range(table.shape[0]):
        th, tw = table[level, 4], table[level, 5]
        e = max(e, (2 * th + 2) * (tw + 1) * n)
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
        E = np.empty(e_size, x.dtype)  # the padded input's even columns, (pr, q, m)
        O = np.empty(e_size, x.dtype)  # and its odd ones
        R = np.empty((4, 2, r_size), x.dtype)  # B^T along the rows: (l, pr % 2, pr // 2, b, m)
        for level in range(table.shape[0]):
            H, W, start, tile, th, tw = table[level]
            q1, twn, L = tw + 1, tw * n, th * tw * n
            E[:(2 * th + 2) * q1 * n] = 0
            O[:(2 * th + 2) * q1 * n] = 0
            for m in range(n):  # pixel (r, s) is padded (r + 1, s + 1)
                p = start + m * ms[level] + c * cs
                plane = x[p:p + H * W]
                for r in range(H):
                    row = ((r + 1) * q1) * n + m
                    for s in range(0, W, 2):
                        O[row + (s // 2) * n] = plane[r * W + s]
                    for s in range(1, W, 2):
                        E[row + ((s + 1) // 2) * n] = plane[r * W + s]
            for pr in range(2 * th + 2):  # B^T along each padded row, all (b, m) at once:
                row = (pr // 2) * twn  # window columns 0..3 are E[b], O[b], E[b+1], O[b+1]
                _bt(E[pr * q1 * n:], O[pr * q1 * n:], n, twn, R[0, pr % 2, row:],
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
        dE = np.empty(e_size, dx.dtype)
        dO = np.empty(e_size, dx.dtype)
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
                            dR[3, pr % 2, row:], n, twn, dE[pr * q1 * n:], dO[pr * q1 * n:])
            for m in range(n):
                p = start + m * ms[level] + c * cs
                plane = dx[p:p + H * W]
                for r in range(H):
                    row = ((r + 1) * q1) * n + m
                    for s in range(0, W, 2):
                        plane[r * W + s] = dO[row + (s // 2) * n]
                    for s in range(1, W, 2):
                        plane[r * W + s] = dE[row + ((s + 1) // 2) * n]


@njit(cache=True, nogil=True, inline="always")
def _blocks_to_plane(Y, H, W, tw, n, m, plane):
    """Image m's outputs from the 2x2 blocks into its plane (H*W,): pixel (r, s) is entry
    2*(r % 2) + s % 2 of block ((r//2)*tw + s//2)*n + m of Y (4, tiles) (the blocks past an
    odd edge are dropped)."""
    for r in range(H):
        row = (r // 2) * tw * n + m
        even, odd = Y[2 * (r % 2)], Y[2 * (r % 2) + 1]
        for s in range(0, W, 2):
            plane[r * W + s] = even[row + (s // 2) * n]
        for s in range(1, W, 2):
            plane[r * W + s] = odd[row + (s // 2) * n]


@njit(cache=True, nogil=True, inline="always")
def _plane_to_blocks(plane, H, W, tw, n, m, D):
    """The adjoint of ``_blocks_to_plane``: image m's plane into its places in D (4, tiles)
    (the places past an odd edge are left as they are)."""
    for r in range(H):
        row = (r // 2) * tw * n + m
        even, odd = D[2 * (r % 2)], D[2 * (r % 2) + 1]
        for s in range(0, W, 2):
            even[row + (s // 2) * n] = plane[r * W + s]
        for s in range(1, W, 2):
            odd[row + (s // 2) * n] = plane[r * W + s]


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
            for m in range(n):
                p = start + m * ms[level] + f * cs
                _blocks_to_plane(Y, H, W, tw, n, m, y[p:p + H * W])


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
            if H % 2 or W % 2:  # some tiles have outputs past the edge
                D[:, :L] = 0
            for m in range(n):
                p = start + m * ms[level] + f * cs
                _plane_to_blocks(dy[p:p + H * W], H, W, tw, n, m, D)
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


def transformed_input(x, n, hws):
    """x (C channels, a layout of ``conv3x3_forward``) -> V (16, C, P): B^T d B per tile."""
    table, P = tiles(n, hws)
    V = np.empty((16, _channels(x), P), x.dtype)
    input_transform(x.reshape(-1), *strides(x, n, hws), n, table, V)
    return V


def conv3x3_forward(x, n, hws, w, b, keep=None):
    """A 3x3, stride-1, padding-1 convolution: x a Joint's data (C, T) (n images, levels hws),
    or (N, C, H, W) with n = N and hws = ((H, W),) -> y in the same layout, F channels.
    w (F, C, 3, 3), b (F,) or None. keep: None, or an empty list that receives V, the
    transformed input, for ``conv3x3_backward``."""
    F = w.shape[0]
    V = transformed_input(x, n, hws)
    if keep is not None:
        keep.append(V)
    M = np.matmul(filters(w), V)  # (16, F, C) @ (16, C, P): 16 GEMMs
    y = _empty(x, F, n, hws)
    output_transform(M, n, tiles(n, hws)[0], b if b is not None else np.zeros(F, x.dtype),
                     y.reshape(-1), *strides(y, n, hws))
    return y


def conv3x3_backward(dy, x, n, hws, w, need_input_grad=True, need_weight_grad=True, V=None):
    """The backward of ``conv3x3_forward`` (without the bias): dy, x in its layout -> (dx or
    None, dw (F, C, 3, 3) or None). V: the forward's transformed input, if it kept it."""
    dM = output_gradients(dy, n, hws)
    dw = conv3x3_backward_weight(dy, x, n, hws, V, dM) if need_weight_grad else None
    dx = conv3x3_backward_input(dy, w, n, hws, dM) if need_input_grad else None
    return dx, dw


def output_gradients(dy, n, hws):
    """dy (F channels, a layout of ``conv3x3_forward``) -> dM (16, F, P): A dY A^T per tile."""
    table, P = tiles(n, hws)
    dM = np.empty((16, _channels(dy), P), dy.dtype)
    output_transform_adjoint(dy.reshape(-1), *strides(dy, n, hws), n, table, dM)
    return dM


def conv3x3_backward_input(dy, w, n, hws, dM=None):
    """dy (F channels) -> dx (C channels, the same layout); dM: ``output_gradients(dy)``."""
    dM = output_gradients(dy, n, hws) if dM is None else dM
    dV = np.matmul(filters(w).transpose(0, 2, 1), dM)  # (16, C, F) @ (16, F, P)
    dx = _empty(dy, w.shape[1], n, hws)
    input_transform_adjoint(dV, n, tiles(n, hws)[0], dx.reshape(-1), *strides(dx, n, hws))
    return dx


def conv3x3_backward_weight(dy, x, n, hws, V=None, dM=None):
    """dy (F channels), x (C channels) -> dw (F, C, 3, 3). V: the forward's transformed input,
    dM: ``output_gradients(dy)``, where already at hand."""
    dM = output_gradients(dy, n, hws) if dM is None else dM
    V = transformed_input(x, n, hws) if V is None else V
    return filters_adjoint(np.matmul(dM, V.transpose(0, 2, 1)))  # (16, F, P) @ (16, P, C)
