"""CUDA convolution: one tiled GEMM kernel, read through three index maps (implicit GEMM).

A convolution is a matrix product whose operands are never built in memory. With
L = Ho*Wo output positions per image and kk = kh*kw taps:

    forward        y  (F, N*L)      = w  (F, C*kk)  @ cols(x)  (C*kk, N*L)
    input grad     dx (C, N*H*W)    = wT (C, F*kk)  @ taps(dy) (F*kk, N*H*W)
    weight grad    dw (F, C*kk)     = dy (F, N*L)   @ cols(x)T (N*L, C*kk)

``cols(x)[(c,i,j), (n,oh,ow)] = x[n, c, oh*s-p+i, ow*s-p+j]`` is im2col, and
``taps(dy)[(f,i,j), (n,h,w)] = dy[n, f, (h+p-i)/s, (w+p-j)/s]`` (zero unless both divisions are
exact and in range) is the transposed convolution written as a gather: every input pixel
collects the outputs that read it, so there is no col2im scatter and no atomic. The GEMM
kernel only ever asks "which flat element is A[m, k]? B[k, n]? C[m, n]?"; each direction
answers with small device functions (``_fwd_*``, ``_bwi_*``, ``_bww_*`` below) and the same
kernel runs all three.

The kernel (the classic shared-memory GEMM with register blocking):

* block (bx, by, bz) computes the TILE_M x TILE_N tile of C at rows by*TILE_M, columns
  bx*TILE_N, over the bz-th chunk of K (split-K, see below);
* for each TILE_K-wide slice of K, the block's threads copy the A tile (TILE_M x TILE_K) and
  the B tile (TILE_K x TILE_N) into shared memory -- each thread always loads the same k
  column of A and the same n column of B, so it decodes those indices once -- then
  synchronise;
* each thread multiplies its THREAD_M x THREAD_N sub-block of the tile from registers:
  per k it reads THREAD_M values of A and THREAD_N of B from shared memory and does
  THREAD_M * THREAD_N multiply-adds (16 for 4x4), which is what makes it compute-bound;
* its rows are ty + i*(TILE_M/THREAD_M) and columns tx + j*(TILE_N/THREAD_N), so that
  neighbouring threads touch neighbouring shared-memory banks and output addresses.

Split-K: a GEMM with few output tiles but a long K (the weight gradient: F x C*kk is small,
K = N*Ho*Wo is large; the forward pass of the 5x5 P7 level) would leave most of the GPU
idle, so K is cut into chunks, one grid layer (blockIdx.z) each; every layer writes its own
partial C and a second kernel adds them in order (deterministic, in float64).

The per-k index work of the B operand (which (c, i, j) or (n, oh, ow) a row k is) comes from a
small int64 table built once per geometry on the host (``_patch_table`` ...), cached on the
device, so the inner loading loop has no integer division. Known waste: with stride s only
1/s^2 of taps(dy) is non-zero, and the input-gradient GEMM multiplies the zeros too (4x the
work on stride-2 layers; the cure is s^2 dense GEMMs, one per output phase).

Products accumulate in the input dtype (as cuDNN does for float32); float64 works the same.
The bias gradient, ``bias_backward``, is a per-channel sum of dy (``reduce.py``).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda, float64

from retina_np.kernels.cuda import config
from retina_np.kernels.cuda import launch as cl
from retina_np.kernels.cuda.elementwise import cast
from retina_np.kernels.cuda.reduce import SUM, channel_sums, stand_in

# Layout of the ``geo`` tuple of ints that every index function receives.
G_M, G_N, G_K, G_KCHUNK, G_OUT_SIZE, G_HAS_BIAS = 0, 1, 2, 3, 4, 5
G_C, G_H, G_W, G_F, G_HO, G_WO, G_KW, G_KK, G_STRIDE, G_PAD = 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
_GEO_LEN = 16


# ----------------------------------------------------------------------------- index maps
# Each direction supplies: a_prep(geo, k) -> 3 ints decoded once per k (per thread and tile),
# a_index(geo, m, ka) -> flat index of A[m, k]; b_prep(geo, n) -> 3 ints decoded once per
# column, b_index(table, geo, k, col) -> flat index of B[k, n], or -1 for a zero (padding);
# out_index(geo, m, n) -> flat index of C[m, n] in the output array.


# forward: A = w (F, C*kk) row-major; B = cols(x), table = patch offsets (C*kk, 3);
# n = (img, oh, ow) is decoded per thread into the window's corner.
@cuda.jit(device=True)
def _fwd_a_prep(geo, k):
    return k, 0, 0


@cuda.jit(device=True)
def _fwd_a_index(geo, m, ka):
    return m * geo[G_K] + ka[0]


@cuda.jit(device=True)
def _fwd_b_prep(geo, n):
    L = geo[G_HO] * geo[G_WO]
    img = n // L
    q = n - img * L
    oh = q // geo[G_WO]
    ow = q - oh * geo[G_WO]
    h0 = oh * geo[G_STRIDE] - geo[G_PAD]
    w0 = ow * geo[G_STRIDE] - geo[G_PAD]
    return img * geo[G_C] * geo[G_H] * geo[G_W] + h0 * geo[G_W] + w0, h0, w0


@cuda.jit(device=True)
def _fwd_b_index(table, geo, k, col):
    h = col[1] + table[k, 1]
    w = col[2] + table[k, 2]
    if h < 0 or h >= geo[G_H] or w < 0 or w >= geo[G_W]:
        return -1
    return col[0] + table[k, 0]


@cuda.jit(device=True)
def _fwd_out_index(geo, m, n):
    L = geo[G_HO] * geo[G_WO]
    img = n // L
    return (img * geo[G_M] + m) * L + (n - img * L)


# input grad: A = w read transposed, A[c, (f,i,j)] = w[f, c, i, j]; B = taps(dy), table =
# (f*Ho*Wo, i, j) per (f, i, j); n = (img, h, w) decoded per thread.
@cuda.jit(device=True)
def _bwi_a_prep(geo, k):
    f = k // geo[G_KK]
    return f, k - f * geo[G_KK], 0


@cuda.jit(device=True)
def _bwi_a_index(geo, m, ka):
    return (ka[0] * geo[G_M] + m) * geo[G_KK] + ka[1]


@cuda.jit(device=True)
def _bwi_b_prep(geo, n):
    HW = geo[G_H] * geo[G_W]
    img = n // HW
    q = n - img * HW
    h = q // geo[G_W]
    w = q - h * geo[G_W]
    return img * geo[G_F] * geo[G_HO] * geo[G_WO], h + geo[G_PAD], w + geo[G_PAD]


@cuda.jit(device=True)
def _bwi_b_index(table, geo, k, col):
    th = col[1] - table[k, 1]  # = oh * stride if output row oh read this pixel through tap i
    tw = col[2] - table[k, 2]
    if th < 0 or tw < 0:
        return -1
    s = geo[G_STRIDE]
    if s != 1:
        if th % s != 0 or tw % s != 0:
            return -1
        th //= s
        tw //= s
    if th >= geo[G_HO] or tw >= geo[G_WO]:
        return -1
    return col[0] + table[k, 0] + th * geo[G_WO] + tw


@cuda.jit(device=True)
def _bwi_out_index(geo, m, n):
    HW = geo[G_H] * geo[G_W]
    img = n // HW
    return (img * geo[G_M] + m) * HW + (n - img * HW)


# weight grad: A = dy, A[f, (img,oh,ow)]; B = cols(x) transposed, table = window corners
# (N*L, 3) per k = (img, oh, ow); n = (c, i, j) decoded per thread into the patch offset.
@cuda.jit(device=True)
def _bww_a_prep(geo, k):
    L = geo[G_HO] * geo[G_WO]
    img = k // L
    return img, k - img * L, 0


@cuda.jit(device=True)
def _bww_a_index(geo, m, ka):
    return (ka[0] * geo[G_M] + m) * geo[G_HO] * geo[G_WO] + ka[1]


@cuda.jit(device=True)
def _bww_b_prep(geo, n):
    c = n // geo[G_KK]
    r = n - c * geo[G_KK]
    i = r // geo[G_KW]
    j = r - i * geo[G_KW]
    return c * geo[G_H] * geo[G_W] + i * geo[G_W] + j, i, j


@cuda.jit(device=True)
def _bww_b_index(table, geo, k, col):
    h = table[k, 1] + col[1]
    w = table[k, 2] + col[2]
    if h < 0 or h >= geo[G_H] or w < 0 or w >= geo[G_W]:
        return -1
    return table[k, 0] + col[0]


@cuda.jit(device=True)
def _bww_out_index(geo, m, n):
    return m * geo[G_N] + n


_INDEX_MAPS = {
    "forward": (_fwd_a_prep, _fwd_a_index, _fwd_b_prep, _fwd_b_index, _fwd_out_index),
    "input": (_bwi_a_prep, _bwi_a_index, _bwi_b_prep, _bwi_b_index, _bwi_out_index),
    "weight": (_bww_a_prep, _bww_a_index, _bww_b_prep, _bww_b_index, _bww_out_index),
}


# ----------------------------------------------------------------------------- the GEMM
@functools.cache
def _gemm_kernel(direction: str, dtype: str, bm: int, bn: int, bk: int, tm: int, tn: int):
    """The tiled GEMM for one direction, dtype and tile setting (shared arrays need constants)."""
    a_prep, a_index, b_prep, b_index, out_index = _INDEX_MAPS[direction]
    nbtype = numba.from_dtype(np.dtype(dtype))
    ZERO = np.dtype(dtype).type(0)
    TY, TX = bm // tm, bn // tn  # threads per block along M and N
    T = TX * TY
    A_STEP, B_STEP = T // bk, T // bn  # rows of the A tile / of the B tile per loading pass
    A_COLS = bm + 1  # one column of padding: a warp's A-tile writes hit 32 different banks

    @cuda.jit
    def gemm(A, B, table, bias, out, geo):
        M, N, K = geo[G_M], geo[G_N], geo[G_K]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        m0 = cuda.blockIdx.y * bm
        n0 = cuda.blockIdx.x * bn
        z = cuda.blockIdx.z
        k_begin = z * geo[G_KCHUNK]
        k_end = min(K, k_begin + geo[G_KCHUNK])

        As = cuda.shared.array((bk, A_COLS), nbtype)
        Bs = cuda.shared.array((bk, bn), nbtype)
        acc = cuda.local.array((tm, tn), nbtype)  # registers once the loops are unrolled
        a_frag = cuda.local.array(tm, nbtype)
        b_frag = cuda.local.array(tn, nbtype)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = ZERO

        a_k = tid % bk  # the k column of the A tile this thread loads, always
        b_n = tid % bn  # the n column of the B tile this thread loads, always
        n_load = n0 + b_n
        col = b_prep(geo, min(n_load, N - 1))  # decoded once per block
        for k0 in range(k_begin, k_end, bk):
            k = k0 + a_k
            ka = a_prep(geo, min(k, K - 1))
            for mm in range(tid // bk, bm, A_STEP):
                v = ZERO
                if m0 + mm < M and k < k_end:
                    v = A[a_index(geo, m0 + mm, ka)]
                As[a_k, mm] = v
            for kk in range(tid // bn, bk, B_STEP):
                v = ZERO
                if n_load < N and k0 + kk < k_end:
                    idx = b_index(table, geo, k0 + kk, col)
                    if idx >= 0:
                        v = B[idx]
                Bs[kk, b_n] = v
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    a_frag[i] = As[kk, ty + i * TY]
                for j in range(tn):
                    b_frag[j] = Bs[kk, tx + j * TX]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()

        base = z * geo[G_OUT_SIZE]  # split-K: layer z of the partial sums
        for i in range(tm):
            m = m0 + ty + i * TY
            if m < M:
                add = ZERO
                if geo[G_HAS_BIAS] != 0 and z == 0:
                    add = bias[m]
                for j in range(tn):
                    n = n0 + tx + j * TX
                    if n < N:
                        out[base + out_index(geo, m, n)] = acc[i, j] + add

    return gemm


@cuda.jit
def _sum_splits_kernel(partial, splits, out):
    # out[i] = sum over z of partial[z*size + i], in order of z, in float64
    size = out.size
    for i in range(cuda.grid(1), size, cuda.gridsize(1)):
        total = float64(0.0)
        for z in range(splits):
            total += partial[z * size + i]
        out[i] = total


def _split_k(M: int, N: int, K: int, bm: int, bn: int, bk: int) -> tuple[int, int]:
    """(splits, chunk): cut K when the M x N tiles alone would leave the GPU idle."""
    split_min, target_blocks = config.split_k_config()
    tiles = cl.ceil_div(M, bm) * cl.ceil_div(N, bn)
    splits = max(1, min(cl.ceil_div(K, split_min), cl.ceil_div(target_blocks, tiles)))
    chunk = max(bk, cl.ceil_div(cl.ceil_div(K, splits), bk) * bk)  # whole K tiles per split
    return max(1, cl.ceil_div(K, chunk)), chunk


def _run_gemm(direction, A, B, table, bias, out, M, N, K, shape_geo):
    """C = A @ B through the direction's index maps into ``out`` (flat), split-K if it helps."""
    bm, bn, bk, tm, tn = config.gemm_config()
    dtype = np.dtype(out.dtype)
    splits, chunk = _split_k(M, N, K, bm, bn, bk)
    has_bias = bias is not None
    if bias is None:
        bias = out  # never read
    kernel = _gemm_kernel(direction, dtype.name, bm, bn, bk, tm, tn)
    grid = (cl.ceil_div(N, bn), cl.ceil_div(M, bm), splits)
    block = (bn // tn, bm // tm)
    target = out if splits == 1 else cl.empty(splits * out.size, dtype)
    geo = (M, N, K, chunk, out.size, int(has_bias)) + shape_geo
    assert len(geo) == _GEO_LEN
    cl.launch(kernel, grid, block, A, B, table, bias, target, geo)
    if splits > 1:
        cl.launch_1d(_sum_splits_kernel, out.size, target, splits, out)


# ----------------------------------------------------------------------------- index tables
@functools.lru_cache(maxsize=256)
def _patch_table(C, kh, kw, H, W):
    """(C*kh*kw, 3) int64 on the device: per tap (c, i, j) the offset c*H*W + i*W + j, i, j."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(kh), np.arange(kw), indexing="ij")
    return cl.to_device(np.stack([c * H * W + i * W + j, i, j], -1).reshape(-1, 3).astype(np.int64))


@functools.lru_cache(maxsize=256)
def _window_table(N, C, H, W, Ho, Wo, stride, padding):
    """(N*Ho*Wo, 3) int64: per output (n, oh, ow) its window corner h0, w0 and offset of it."""
    n, oh, ow = np.meshgrid(np.arange(N), np.arange(Ho), np.arange(Wo), indexing="ij")
    h0, w0 = oh * stride - padding, ow * stride - padding
    table = np.stack([n * C * H * W + h0 * W + w0, h0, w0], -1).reshape(-1, 3)
    return cl.to_device(table.astype(np.int64))


@functools.lru_cache(maxsize=256)
def _tap_table(F, kh, kw, L):
    """(F*kh*kw, 3) int64: per tap (f, i, j) the offset f*L of dy's channel f, i, j."""
    f, i, j = np.meshgrid(np.arange(F), np.arange(kh), np.arange(kw), indexing="ij")
    return cl.to_device(np.stack([f * L, i, j], -1).reshape(-1, 3).astype(np.int64))


def _out_size(n_in, k, stride, padding):
    return (n_in + 2 * padding - k) // stride + 1


def _shape_geo(C, H, W, F, Ho, Wo, kh, kw, stride, padding):
    return (C, H, W, F, Ho, Wo, kw, kh * kw, stride, padding)


# ----------------------------------------------------------------------------- the contract
def conv2d_forward(x, w, b, stride, padding, workspace=None):
    """x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> y (N, F, Ho, Wo).

    workspace: as in kernels/cpu/conv.py; this version keeps nothing in it (the GEMM kernels
    read x directly, nothing is unfolded).
    """
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = _out_size(H, kh, stride, padding), _out_size(W, kw, stride, padding)
    y = cl.empty((N, F, Ho, Wo), x.dtype)
    if y.size:
        _run_gemm("forward", cl.flat(w), cl.flat(x), _patch_table(C, kh, kw, H, W), b,
                  cl.flat(y), F, N * Ho * Wo, C * kh * kw,
                  _shape_geo(C, H, W, F, Ho, Wo, kh, kw, stride, padding))
    return y


def conv2d_backward_input(dy, w, H, W, stride, padding, workspace=None):
    """dy (N, F, Ho, Wo), w (F, C, kh, kw) -> dx (N, C, H, W).

    workspace: as in kernels/cpu/conv.py; not used here.
    """
    N, F, Ho, Wo = dy.shape
    _, C, kh, kw = w.shape
    dx = cl.empty((N, C, H, W), dy.dtype)
    if dx.size:
        _run_gemm("input", cl.flat(w), cl.flat(dy), _tap_table(F, kh, kw, Ho * Wo), None,
                  cl.flat(dx), C, N * H * W, F * kh * kw,
                  _shape_geo(C, H, W, F, Ho, Wo, kh, kw, stride, padding))
    return dx


def conv2d_backward_weight(dy, x, kh, kw, stride, padding, workspace=None):
    """dy (N, F, Ho, Wo), x (N, C, H, W) -> dw (F, C, kh, kw).

    workspace: as in kernels/cpu/conv.py; not used here (x is read directly).
    """
    N, F, Ho, Wo = dy.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    dw = cl.empty((F, C, kh, kw), dy.dtype)
    if dw.size:
        _run_gemm("weight", cl.flat(dy), cl.flat(x),
                  _window_table(N, C, H, W, Ho, Wo, stride, padding), None, cl.flat(dw),
                  F, C * kh * kw, N * Ho * Wo,
                  _shape_geo(C, H, W, F, Ho, Wo, kh, kw, stride, padding))
    return dw


def bias_backward(dy):
    """dy (N, F, Ho, Wo) -> db (F,), summed in float64 (``reduce.py``'s per-channel sums)."""
    s0, _ = channel_sums(dy, dy, stand_in(dy), stand_in(dy), SUM)
    return cast(s0, dy.dtype)
