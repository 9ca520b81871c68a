"""Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3) for 3x3 "same" convolutions on the
CPU (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). The functions
take a Joint of levels or (N, C, H, W) images; ``plan.choose_conv`` says where they run (the
heads' Joints, and the backbone's and FPN's convolutions where their blocks of outputs are
many enough) and with which block side m (``options.winograd_block``, 4 by default; 2 for
the deep layers on small maps, where F(4x4, 3x3)'s 36 transformed values a filter cost more
than they save).

This file is the convolution: transforms, GEMMs, transforms back. The data transforms are
Numba loops in ``winograd_f2.py`` (F(2x2, 3x3), the smaller one to read first, with the
tile tables) and ``winograd_f4.py`` (F(4x4, 3x3): the same algorithm with 6x6 windows and 36
products, each step a loop over all tiles at once, on the tile planes of
``winograd_tiles.py``); the filter transform is one GEMM here (``filters``).

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

Why here: the heads' im2col GEMM (K = 9*64) runs well below the GEMM's peak on one core,
since OpenBLAS packs the 9x larger unfolded matrix and uses each packed value for only 64
rows; the (m + 2)^2 GEMMs with K = 64 run faster and do 2.25-4x fewer multiplications
(docs/performance-history.md, "How the convolution is done").

"""

from __future__ import annotations

import numpy as np

from retina_np.kernels.cpu import winograd_f2 as f2
from retina_np.kernels.cpu import winograd_f4 as f4
from retina_np.kernels.cpu.winograd_f2 import _channels, _empty, strides, tiles
from retina_np.kernels.threads import over_channels, over_terms

# m -> its data transforms: (input, its adjoint, output, its adjoint)
TRANSFORMS = {
    2: (f2.input_transform, f2.input_transform_adjoint, f2.output_transform,
        f2.output_transform_adjoint),
    4: (f4.input_transform4, f4.input_transform4_adjoint, f4.output_transform4,
        f4.output_transform4_adjoint),
}

# m -> G (x) G, the filter transform as one matrix: the 3x3 filter g read row by row as a
# vector of 9, G g G^T read row by row is (G (x) G) g (the Kronecker product: entry (3a + b)
# of g goes to entry ((m + 2) i + j) with the weight G[i, a] G[j, b]). All F C filters at
# once are then one GEMM with K = 9, which BLAS runs at the memory's speed: for ResNet-50's
# 512 x 512 filters 1.3 ms (16 terms) and 3.3 ms (36), where the transform written out in
# Numba loops took 14 and 4.5 ms (docs/performance-history.md, "Fifth round of
# 2026-12-07").
KRONECKER = {(m, np.dtype(t)): np.kron(G, G).astype(t)  # ((m + 2)^2, 9); G4's sixths
              for m, G in ((2, f2.G), (4, f4.G4)) for t in (np.float32, np.float64)}  # rounded once


def block_side(a):
    """The block side m of a transformed array (V, M, dM, U) by its first dimension:
    16 -> 2 (F(2x2, 3x3)), 36 -> 4 (F(4x4, 3x3))."""
    return {16: 2, 36: 4}[a.shape[0]]


def filters(w, m):
    """w (F, C, 3, 3) -> U ((m + 2)^2, F, C): G g G^T of every filter, entry (i, j) at
    (m + 2)*i + j; one GEMM, (G (x) G) times the filters as columns of 9."""
    F, C = w.shape[:2]
    U = np.empty(((m + 2) ** 2, F, C), w.dtype)
    np.matmul(KRONECKER[m, w.dtype], w.reshape(F * C, 9).T, out=U.reshape(-1, F * C))
    return U


def filters_adjoint(dU):
    """The adjoint of ``filters``: dU (16 or 36, F, C) -> dw (F, C, 3, 3) = G^T dU G, the
    transposed GEMM."""
    terms, F, C = dU.shape
    dw = np.empty((F, C, 3, 3), dU.dtype)
    np.matmul(np.ascontiguousarray(dU).reshape(terms, F * C).T,
              KRONECKER[block_side(dU), dU.dtype], out=dw.reshape(F * C, 9))
    return dw


def products(a, b, threads=1):
    """``np.matmul(a, b)`` of two stacks of (m + 2)^2 matrices (a term's GEMM each); on
    several threads, runs of terms side by side, each on one BLAS thread
    (``threads.over_terms``)."""
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.result_type(a, b))
    over_terms(lambda lo, hi: np.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi]), a.shape[0],
               threads)
    return out


def transformed_input(x, n, hws, m, threads=1):
    """x (C channels, a layout of ``conv3x3_forward``) -> V ((m + 2)^2, C, P): B^T d B per
    tile."""
    table, P = tiles(n, hws, m)
    C = _channels(x)
    V = np.empty(((m + 2) ** 2, C, P), x.dtype)
    flat, (cs, ms) = x.reshape(-1), strides(x, n, hws)
    over_channels(lambda lo, hi: TRANSFORMS[m][0](flat, cs, ms, n, table, V, lo, hi), C,
                  threads)
    return V


def conv3x3_forward(x, n, hws, w, b, m, keep=False, threads=1, U=None):
    """A 3x3, stride-1, padding-1 convolution by F(m x m, 3x3): x a Joint's data (C, T) (n
    images, levels hws), or (N, C, H, W) with n = N and hws = ((H, W),) -> (y in the same
    layout with F channels, V the transformed input if keep else None). w (F, C, 3, 3), b (F,)
    or None; U: ``filters(w, m)`` if already at hand. threads: how many threads share the
    transforms (the channels split between them) and the products (runs of terms)."""
    F = w.shape[0]
    V = transformed_input(x, n, hws, m, threads)
    U = filters(w, m) if U is None else U
    M = products(U, V, threads)  # (16, F, C) @ (16, C, P): 16 GEMMs (36 for m = 4)
    y = _empty(x, F, n, hws)
    table, bias = tiles(n, hws, m)[0], b if b is not None else np.zeros(F, x.dtype)
    flat, (cs, ms) = y.reshape(-1), strides(y, n, hws)
    over_channels(lambda lo, hi: TRANSFORMS[m][2](M, n, table, bias, flat, cs, ms, lo, hi), F,
                  threads)
    return y, (V if keep else None)


def output_gradients(dy, n, hws, m, threads=1):
    """dy (F channels, a layout of ``conv3x3_forward``) -> dM ((m + 2)^2, F, P): A dY A^T
    per tile."""
    table, P = tiles(n, hws, m)
    F = _channels(dy)
    dM = np.empty(((m + 2) ** 2, F, P), dy.dtype)
    flat, (cs, ms) = dy.reshape(-1), strides(dy, n, hws)
    over_channels(lambda lo, hi: TRANSFORMS[m][3](flat, cs, ms, n, table, dM, lo, hi), F,
                  threads)
    return dM


def conv3x3_backward_input(dy, w, n, hws, m, dM=None, threads=1, U=None):
    """dy (F channels) -> dx (C channels, the same layout); dM: ``output_gradients(dy)``, U:
    ``filters(w, m)``, if already at hand."""
    dM = output_gradients(dy, n, hws, m, threads) if dM is None else dM
    U = filters(w, m) if U is None else U
    dV = products(U.transpose(0, 2, 1), dM, threads)  # (16, C, F) @ (16, F, P)
    C = w.shape[1]
    dx = _empty(dy, C, n, hws)
    table, flat, (cs, ms) = tiles(n, hws, m)[0], dx.reshape(-1), strides(dx, n, hws)
    over_channels(lambda lo, hi: TRANSFORMS[m][1](dV, n, table, flat, cs, ms, lo, hi), C,
                  threads)
    return dx


def conv3x3_backward_weight(dy, x, n, hws, m, V=None, dM=None, threads=1):
    """dy (F channels), x (C channels) -> dw (F, C, 3, 3). V: the forward's transformed input,
    dM: ``output_gradients(dy)``, where already at hand."""
    dM = output_gradients(dy, n, hws, m, threads) if dM is None else dM
    V = transformed_input(x, n, hws, m, threads) if V is None else V
    return filters_adjoint(products(dM, V.transpose(0, 2, 1), threads))  # (16, F, P) @ (16, P, C)
