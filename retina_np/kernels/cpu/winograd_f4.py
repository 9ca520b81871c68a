"""Winograd's F(4x4, 3x3) on the CPU: the transforms of ``winograd_f2.py`` with 4x4 blocks of
outputs from 6x6 windows (see ``winograd.py`` for the algorithm), on tile planes
(``winograd_tiles.py``).

Each transform is two passes of a 1-D transform (BT4 or AT4 times a row or column, written
out below), channel by channel (the channels lo:hi, so that threads can share a
convolution's channels: ``threads.over_channels``), a loop per row or column of a tile over
the P tiles of all levels; LLVM vectorises these loops. (The filter transform, G4 on both
sides of each filter, is one GEMM in ``winograd.py``.) Between the passes a scratch array
holds the half-transformed tiles, laid out so that each loop's outputs lie in separate blocks
of memory: LLVM checks once, before the loops around a loop, that the loop's arrays do not
overlap over all the rows those loops visit, and where the rows of two outputs interleave it
takes the unvectorised path every time (the output transform's two passes took 0.15 ms for
the heads so, instead of 0.05).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from retina_np.kernels.cpu.winograd_tiles import (
    _block_places,
    _edges,
    _planes_to_tiles,
    _tiles_to_planes,
    _window_places,
    scratch8,
)

# Lavin & Gray's F(4x4, 3x3): 36 products per channel pair for 16 outputs, against
# 4 x 16 = 64 by F(2x2, 3x3) and 144 directly. The transforms have larger entries (B^T up to
# 5, A^T up to 8, G down to 1/24), so float32 results are a few times further from the exact
# ones than F(2x2, 3x3)'s (tests/kernels/test_winograd.py); on the heads' small levels more
# of each window is padding (a 1x1 level fills one of the sixteen outputs of its tile).
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)

# The 1-D transforms, of scalars (LLVM inlines them into the loops). BT4's and AT4's entries
# are float32 constants: exact, and float32 times float32 stays float32 where a Python int
# would make float64 of it (float64 data stays float64).
_TWO, _FOUR, _FIVE, _EIGHT = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


@njit(cache=True, nogil=True)
def _bt4(d0, d1, d2, d3, d4, d5):
    """BT4 @ (d0, ..., d5): a row or column of a window."""
    return (_FOUR * d0 - _FIVE * d2 + d4,
            d3 + d4 - _FOUR * (d1 + d2),
            d4 - d3 + _FOUR * (d1 - d2),
            d4 - d2 + _TWO * (d3 - d1),
            d4 - d2 - _TWO * (d3 - d1),
            _FOUR * d1 - _FIVE * d3 + d5)


@njit(cache=True, nogil=True)
def _b4(a0, a1, a2, a3, a4, a5):
    """BT4^T @ (a0, ..., a5): the adjoint of ``_bt4``."""
    return (_FOUR * a0,
            _FOUR * (a2 - a1 + a5) + _TWO * (a4 - a3),
            -_FIVE * a0 - _FOUR * (a1 + a2) - a3 - a4,
            a1 - a2 + _TWO * (a3 - a4) - _FIVE * a5,
            a0 + a1 + a2 + a3 + a4,
            a5)


@njit(cache=True, nogil=True)
def _at4(m0, m1, m2, m3, m4, m5):
    """AT4 @ (m0, ..., m5): a row or column of a tile's products."""
    return (m0 + m1 + m2 + m3 + m4,
            m1 - m2 + _TWO * (m3 - m4),
            m1 + m2 + _FOUR * (m3 + m4),
            m1 - m2 + _EIGHT * (m3 - m4) + m5)


@njit(cache=True, nogil=True)
def _a4(g0, g1, g2, g3):
    """AT4^T @ (g0, ..., g3): the adjoint of ``_at4``."""
    return (g0,
            g0 + g1 + g2 + g3,
            g0 - g1 + g2 - g3,
            g0 + _TWO * g1 + _FOUR * g2 + _EIGHT * g3,
            g0 - _TWO * g1 + _FOUR * g2 - _EIGHT * g3,
            g3)


@njit(cache=True, nogil=True)
def input_transform4(x, cs, ms, n, table, V, lo, hi):
    """x (flat; channel stride cs, image strides ms (levels,), see ``winograd_f2.strides``) -> V
    (36, C, P): BT4 d BT4^T of every tile's 6x6 window (the pixels outside the image zeros)."""
    P = V.shape[2]
    left, right = _edges(table, n, P)
    places, zero = _window_places(table, n, P, n), V.dtype.type(0)
    T = scratch8(table, V.dtype)
    X = np.zeros((4, n + 6 * P + n), V.dtype)  # window rows: X[j, n + i*P + p] (see
    # winograd_tiles.py); the padding's places stay zero, channel after channel
    R = np.empty((6, 6 * P), V.dtype)  # BT4 along the window rows: R[l, i*P + p]
    x0, x1, x2, x3 = X[0, n:], X[1, n:], X[2, n:], X[3, n:]
    x3_left, x0_right = X[3, :], X[0, 2 * n:]  # the neighbours' columns 4b - 1 and 4b + 4
    r0, r1, r2, r3, r4, r5 = R[0], R[1], R[2], R[3], R[4], R[5]
    for c in range(lo, hi):
        _planes_to_tiles(x, cs, ms, c, n, table, places, X, T)
        for f in range(6 * P):  # BT4 along every window row i of every tile p (f = i*P + p)
            d0 = x3_left[f] if left[f] else zero
            d5 = x0_right[f] if right[f] else zero
            r0[f], r1[f], r2[f], r3[f], r4[f], r5[f] = _bt4(d0, x0[f], x1[f], x2[f], x3[f], d5)
        for l in range(6):  # and down every column l
            w0, w1, w2, w3, w4, w5 = (R[l, :P], R[l, P:2 * P], R[l, 2 * P:3 * P],
                                      R[l, 3 * P:4 * P], R[l, 4 * P:5 * P], R[l, 5 * P:])
            v0, v1, v2, v3, v4, v5 = (V[l, c], V[6 + l, c], V[12 + l, c], V[18 + l, c],
                                      V[24 + l, c], V[30 + l, c])
            for p in range(P):
                v0[p], v1[p], v2[p], v3[p], v4[p], v5[p] = _bt4(w0[p], w1[p], w2[p], w3[p],
                                                                w4[p], w5[p])


@njit(cache=True, nogil=True)
def input_transform4_adjoint(dV, n, table, dx, cs, ms, lo, hi):
    """The adjoint of ``input_transform4``: dV (36, C, P) -> dx (flat, strides cs, ms), each
    tile's BT4^T dV BT4 added onto its window (overlapping windows add up; the padding's share
    is dropped)."""
    P = dV.shape[2]
    left, right = _edges(table, n, P)  # (the first P: the same for every window row)
    places, zero = _window_places(table, n, P, 0), dV.dtype.type(0)
    T = scratch8(table, dV.dtype)
    dR = np.empty((6, 6, n + P + n), dV.dtype)  # BT4^T down the columns: dR[i, l, n + p]
    dX = np.empty((4, 6 * P), dV.dtype)  # window rows: dX[j, i*P + p]
    for c in range(lo, hi):
        for l in range(6):  # BT4^T down every column l
            v0, v1, v2, v3, v4, v5 = (dV[l, c], dV[6 + l, c], dV[12 + l, c], dV[18 + l, c],
                                      dV[24 + l, c], dV[30 + l, c])
            w0, w1, w2, w3, w4, w5 = (dR[0, l, n:], dR[1, l, n:], dR[2, l, n:], dR[3, l, n:],
                                      dR[4, l, n:], dR[5, l, n:])
            for p in range(P):
                w0[p], w1[p], w2[p], w3[p], w4[p], w5[p] = _b4(v0[p], v1[p], v2[p], v3[p],
                                                               v4[p], v5[p])
        for i in range(6):  # and along every window row i: columns 4b - 1 and 4b + 4 belong
            g0, g1, g2, g3, g4, g5 = (dR[i, 0, n:], dR[i, 1, n:], dR[i, 2, n:],  # to the
                                      dR[i, 3, n:], dR[i, 4, n:], dR[i, 5, n:])  # neighbours
            g0_right, g5_left = dR[i, 0, 2 * n:], dR[i, 5, :]  # (their shares e5 and e0)
            y0, y1, y2, y3 = (dX[0, i * P:(i + 1) * P], dX[1, i * P:(i + 1) * P],
                              dX[2, i * P:(i + 1) * P], dX[3, i * P:(i + 1) * P])
            for p in range(P):
                e0, e1, e2, e3, e4, e5 = _b4(g0[p], g1[p], g2[p], g3[p], g4[p], g5[p])
                y0[p] = e1 + (g5_left[p] if left[p] else zero)
                y1[p] = e2
                y2[p] = e3
                y3[p] = e4 + (_FOUR * g0_right[p] if right[p] else zero)
        _tiles_to_planes(dX, places, n, table, T, c, dx, cs, ms)


@njit(cache=True, nogil=True)
def output_transform4(M, n, table, b, y, cs, ms, lo, hi):
    """M (36, F, P) -> y (flat, strides cs, ms): AT4 M AT4^T of every tile (its 4x4 block, the
    outputs past the edge dropped), plus the bias b (F,)."""
    P = M.shape[2]
    places, T = _block_places(table, n, P), scratch8(table, y.dtype)
    S = np.empty((4, 6, P), y.dtype)  # AT4 down the columns: S[u, j, p]
    Y = np.empty((4, 4 * P), y.dtype)  # and along the rows: the outputs, Y[v, u*P + p]
    for f in range(lo, hi):
        for j in range(6):  # AT4 down every column j
            m0, m1, m2, m3, m4, m5 = (M[j, f], M[6 + j, f], M[12 + j, f], M[18 + j, f],
                                      M[24 + j, f], M[30 + j, f])
            o0, o1, o2, o3 = S[0, j], S[1, j], S[2, j], S[3, j]
            for p in range(P):
                o0[p], o1[p], o2[p], o3[p] = _at4(m0[p], m1[p], m2[p], m3[p], m4[p], m5[p])
        bias = b[f]
        for u in range(4):  # and along every row u, with the bias
            s0, s1, s2, s3, s4, s5 = S[u, 0], S[u, 1], S[u, 2], S[u, 3], S[u, 4], S[u, 5]
            y0, y1, y2, y3 = (Y[0, u * P:(u + 1) * P], Y[1, u * P:(u + 1) * P],
                              Y[2, u * P:(u + 1) * P], Y[3, u * P:(u + 1) * P])
            for p in range(P):
                t0, t1, t2, t3 = _at4(s0[p], s1[p], s2[p], s3[p], s4[p], s5[p])
                y0[p], y1[p], y2[p], y3[p] = t0 + bias, t1 + bias, t2 + bias, t3 + bias
        _tiles_to_planes(Y, places, n, table, T, f, y, cs, ms)


@njit(cache=True, nogil=True)
def output_transform4_adjoint(dy, cs, ms, n, table, dM, lo, hi):
    """The adjoint of ``output_transform4`` (without the bias): dy (flat, strides cs, ms) ->
    dM (36, F, P), AT4^T dY AT4 of every tile's 4x4 block of output gradients (zeros past the
    edge)."""
    P = dM.shape[2]
    places, T = _block_places(table, n, P), scratch8(table, dM.dtype)
    D = np.zeros((4, 4 * P), dM.dtype)  # dY: D[v, u*P + p] (the places past the edge stay 0)
    E = np.empty((6, 4 * P), dM.dtype)  # dY AT4: E[j, u*P + p]
    d0, d1, d2, d3 = D[0], D[1], D[2], D[3]
    e0, e1, e2, e3, e4, e5 = E[0], E[1], E[2], E[3], E[4], E[5]
    for f in range(lo, hi):
        _planes_to_tiles(dy, cs, ms, f, n, table, places, D, T)
        for q in range(4 * P):  # AT4^T along every row u of every tile p (q = u*P + p)
            e0[q], e1[q], e2[q], e3[q], e4[q], e5[q] = _a4(d0[q], d1[q], d2[q], d3[q])
        for j in range(6):  # and down every column j
            h0, h1, h2, h3 = E[j, :P], E[j, P:2 * P], E[j, 2 * P:3 * P], E[j, 3 * P:]
            g0, g1, g2, g3, g4, g5 = (dM[j, f], dM[6 + j, f], dM[12 + j, f], dM[18 + j, f],
                                      dM[24 + j, f], dM[30 + j, f])
            for p in range(P):
                g0[p], g1[p], g2[p], g3[p], g4[p], g5[p] = _a4(h0[p], h1[p], h2[p], h3[p])
