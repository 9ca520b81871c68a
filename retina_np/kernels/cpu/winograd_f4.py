"""Winograd's F(4x4, 3x3) on the CPU: the transforms of ``winograd_f2.py`` with 4x4 blocks of
outputs from 6x6 windows (see ``winograd.py`` for the algorithm)."""

from __future__ import annotations

import numpy as np
from numba import njit

from retina_np.kernels.cpu.winograd_f2 import (
    _blocks_to_planes,
    _phases_to_planes,
    _planes_to_blocks,
    _planes_to_phases,
    _sizes,
)

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


# The F(4x4, 3x3) filter transforms and output transforms run their two 1-D steps as two
# passes over all columns (filters, or tiles), through a scratch array: each loop then reads
# a few arrays and writes a few, which LLVM vectorises. One loop doing both steps (36 arrays
# read, 16 written) ran 60 ns per tile and channel, slower than F(2x2, 3x3)'s whole transform.
# The filters' passes run in the order, and into the scratch layout, that keep each loop's
# outputs in separate blocks of memory: LLVM checks once, before the loops around a loop, that
# the loop's arrays do not overlap over all the rows those loops visit, and where the rows of
# two outputs interleave it takes the unvectorised path every time (the heads' 64 x 64 filters
# took 0.09 ms so, 0.055 now; their adjoint 0.09 and 0.035).


@njit(cache=True, nogil=True)
def _g4(a, b, c):
    """G4 @ (a, b, c), in float64: G4's sixths are not exact in float32."""
    a, b, c = np.float64(a), np.float64(b), np.float64(c)
    s, t = (a + c) * _SIXTH, a * _TWENTYFOURTH + c * _SIXTH
    return a * 0.25, -s - b * _SIXTH, b * _SIXTH - s, t + b * _TWELFTH, t - b * _TWELFTH, c


@njit(cache=True, nogil=True)
def _g4t(a, b, c, d, e, f):
    """G4^T @ (a, ..., f), in float64: the adjoint of ``_g4``."""
    a, b, c = np.float64(a), np.float64(b), np.float64(c)
    d, e, f = np.float64(d), np.float64(e), np.float64(f)
    return (a * 0.25 - (b + c) * _SIXTH + (d + e) * _TWENTYFOURTH,
            (c - b) * _SIXTH + (d - e) * _TWELFTH,
            (d + e - b - c) * _SIXTH + f)


@njit(cache=True, nogil=True)
def _filters4(g, U):
    """g (filters, 9) -> U (36, filters): G g G^T (6x6, row by row), as ``_filters``; all
    filters at once, tap by tap."""
    L = g.shape[0]
    gt = np.empty((9, L), g.dtype)  # each tap a contiguous row (written out: numpy's
    for t in range(L):              # transposed copies took seconds to compile)
        for k in range(9):
            gt[k, t] = g[t, k]
    H = np.empty((6, 3, L))  # g G^T: H[k, a] = row a of g times G's row k
    for a in range(3):  # G along each row of g
        g0, g1, g2 = gt[3 * a], gt[3 * a + 1], gt[3 * a + 2]
        h0, h1, h2, h3, h4, h5 = H[0, a], H[1, a], H[2, a], H[3, a], H[4, a], H[5, a]
        for t in range(L):
            h0[t], h1[t], h2[t], h3[t], h4[t], h5[t] = _g4(g0[t], g1[t], g2[t])
    for k in range(6):  # and down each column k of g G^T
        h0, h1, h2 = H[k, 0], H[k, 1], H[k, 2]
        u0, u1, u2, u3, u4, u5 = U[k], U[6 + k], U[12 + k], U[18 + k], U[24 + k], U[30 + k]
        for t in range(L):
            u0[t], u1[t], u2[t], u3[t], u4[t], u5[t] = _g4(h0[t], h1[t], h2[t])


@njit(cache=True, nogil=True)
def _filters4_adjoint(dU, dg):
    """dU (36, filters) -> dg (filters, 9) = G^T dU G."""
    L = dU.shape[1]
    E = np.empty((3, 6, L))  # dU G: E[b, i] = row i of dU times G's column b
    for i in range(6):  # G^T along each row of dU
        u0, u1, u2 = dU[6 * i], dU[6 * i + 1], dU[6 * i + 2]
        u3, u4, u5 = dU[6 * i + 3], dU[6 * i + 4], dU[6 * i + 5]
        e0, e1, e2 = E[0, i], E[1, i], E[2, i]
        for t in range(L):
            e0[t], e1[t], e2[t] = _g4t(u0[t], u1[t], u2[t], u3[t], u4[t], u5[t])
    dgt = np.empty((9, L), dg.dtype)
    for b in range(3):  # and down each column b of dU G
        e0, e1, e2, e3, e4, e5 = E[b, 0], E[b, 1], E[b, 2], E[b, 3], E[b, 4], E[b, 5]
        d0, d1, d2 = dgt[b], dgt[3 + b], dgt[6 + b]
        for t in range(L):
            d0[t], d1[t], d2[t] = _g4t(e0[t], e1[t], e2[t], e3[t], e4[t], e5[t])
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


