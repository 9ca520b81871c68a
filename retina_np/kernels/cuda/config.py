"""Launch settings of the CUDA kernels: what each ``cuda_*`` field of ``kernels.Options`` means,
and the checks that they fit together.

stumpy keeps its ``THREADS_PER_BLOCK`` in one config module; here the values live in the one
record of every kernel tunable, ``kernels/tunables.py``'s ``Options`` (its ``cuda_*`` fields),
and this module explains them. The host functions read them through the functions below at
every call (never at import), so a test shrinks them for a while with

    from retina_np import kernels
    with kernels.options(cuda_gemm_tile_m=8, cuda_gemm_tile_n=8, ...):
        ...

to make ragged tiles, several blocks and multi-block reductions appear on tiny inputs. Kernels
that keep tiles in shared memory are built per setting and cached, because a shared array's
shape must be a compile-time constant.

The defaults aim at a recent NVIDIA GPU (sm_80 / sm_90: 48 KiB of static shared memory per
block, 255 registers per thread, 4 warp schedulers per SM).

-- elementwise kernels (relu, add, batch-norm apply, pooling, upsampling, optimiser) --------
``cuda_threads_1d`` (256): 256 threads = 8 warps per block: enough warps for latency hiding,
and small enough that several blocks share an SM.
``cuda_max_blocks_1d`` (1024): grid-stride loops: a launch never asks for more blocks than
this; each thread then walks the array in steps of the whole grid. ~ 8 x 132 SMs of an H100
keeps every SM busy.

-- per-channel reductions (bias and batch-norm gradients, batch statistics) ---------------
``cuda_reduce_threads`` (256): threads per block of a reduction; a power of two (the
shared-memory tree halves it).
``cuda_reduce_min_per_thread`` (8): each (channel, chunk) block reduces at least this many
elements per thread before it adds its partial sum; fewer, larger chunks waste less on the
second pass.
``cuda_reduce_target_blocks`` (512): chunks per channel are chosen so that channels x chunks
is about this many blocks.

-- the convolution GEMMs: C (M x N) = A (M x K) @ B (K x N) ---------------------------------
One block computes a ``cuda_gemm_tile_m`` x ``cuda_gemm_tile_n`` tile of C (64 x 64), walking K
in steps of ``cuda_gemm_tile_k`` (16) with both operand tiles staged in shared memory; each
thread keeps a ``cuda_gemm_thread_m`` x ``cuda_gemm_thread_n`` (4 x 4) block of C in registers
(register blocking), so every value read from shared memory feeds 4 multiply-adds.

    threads per block = (TILE_M / THREAD_M) * (TILE_N / THREAD_N) = 16 * 16 = 256
    shared memory     = TILE_K * (TILE_M + 1 + TILE_N) * 4 B = 8.2 KiB in float32

Constraints (checked in ``gemm_config``): THREAD_M | TILE_M, THREAD_N | TILE_N, and the thread
count is a multiple of TILE_K and of TILE_N (each thread then loads fixed positions of the
tiles).
``cuda_split_k_min`` (256): split-K for the weight gradient (K = N*Ho*Wo is long, M x N =
F x C*kh*kw is small): each split reduces at least this many K values ...
``cuda_split_k_target_blocks`` (264): ... and splits are added until the grid has about this
many blocks.

-- detection ------------------------------------------------------------------------------
``cuda_nms_tile`` (64): boxes per NMS tile: one bit per box in a uint64 word, so this is fixed
at 64 on a GPU; the tests lower it to exercise several tiles with few boxes.
``cuda_iou_tile`` (16): threads per side of the 2-D block of the pairwise IoU kernel (16 x 16 =
256 threads).
"""

from __future__ import annotations

from retina_np.kernels.tunables import current


def grid_1d() -> tuple[int, int]:
    """(threads per block, most blocks) of a grid-stride launch."""
    o = current()
    return o.cuda_threads_1d, o.cuda_max_blocks_1d


def reduce_config() -> tuple[int, int, int]:
    """(threads per block, least values per thread, target blocks) of the reductions, after
    checking that the thread count is a power of two."""
    o = current()
    threads = o.cuda_reduce_threads
    if threads & (threads - 1):
        raise ValueError(f"cuda_reduce_threads must be a power of two, got {threads}")
    return threads, o.cuda_reduce_min_per_thread, o.cuda_reduce_target_blocks


def gemm_config() -> tuple[int, int, int, int, int]:
    """The GEMM tile settings (tile m, n, k, thread m, n), after checking that they fit
    together."""
    o = current()
    bm, bn, bk = o.cuda_gemm_tile_m, o.cuda_gemm_tile_n, o.cuda_gemm_tile_k
    tm, tn = o.cuda_gemm_thread_m, o.cuda_gemm_thread_n
    if bm % tm or bn % tn:
        raise ValueError(f"GEMM tile {bm}x{bn} is not a multiple of the thread tile {tm}x{tn}")
    threads = (bm // tm) * (bn // tn)
    if threads > 1024 or threads % bk or threads % bn:
        raise ValueError(
            f"GEMM: {threads} threads per block must be <= 1024 and a multiple of "
            f"cuda_gemm_tile_k={bk} and cuda_gemm_tile_n={bn}"
        )
    return bm, bn, bk, tm, tn


def split_k_config() -> tuple[int, int]:
    """(least K values per split, target blocks) of split-K."""
    o = current()
    return o.cuda_split_k_min, o.cuda_split_k_target_blocks


def nms_tile() -> int:
    """Boxes per NMS tile, checked to fit the bits of a uint64."""
    tile = current().cuda_nms_tile
    if not 1 <= tile <= 64:
        raise ValueError(f"cuda_nms_tile must be in 1..64 (bits of a uint64), got {tile}")
    return tile


def iou_tile() -> int:
    """Threads per side of the pairwise IoU kernel's 2-D block."""
    return current().cuda_iou_tile
