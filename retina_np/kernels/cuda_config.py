"""Launch settings of the CUDA kernels (``kernels/cuda.py``), all in one place.

stumpy keeps its ``THREADS_PER_BLOCK`` in one config module; so do we. The host functions in
``cuda.py`` read these names at every call (never at import), so a test can shrink them with
``monkeypatch.setattr(cuda_config, "GEMM_TILE_M", 8)`` to make ragged tiles, several blocks and
multi-block reductions appear on tiny inputs. Kernels that keep tiles in shared memory are
built per setting and cached, because a shared array's shape must be a compile-time constant.

The defaults aim at a recent NVIDIA GPU (sm_80 / sm_90: 48 KiB of static shared memory per
block, 255 registers per thread, 4 warp schedulers per SM).
"""

# -- elementwise kernels (relu, add, batch-norm apply, pooling, upsampling, optimiser) --------
# 256 threads = 8 warps per block: enough warps for latency hiding, and small enough that
# several blocks share an SM.
THREADS_1D = 256
# Grid-stride loops: a launch never asks for more blocks than this; each thread then walks
# the array in steps of the whole grid. ~ 8 x 132 SMs of an H100 keeps every SM busy.
MAX_BLOCKS_1D = 1024

# -- per-channel reductions (bias and batch-norm gradients, batch statistics) ---------------
# Threads per block of a reduction; a power of two (the shared-memory tree halves it).
REDUCE_THREADS = 256
# Each (channel, chunk) block reduces at least this many elements per thread before it adds
# its partial sum; fewer, larger chunks waste less on the second pass.
REDUCE_MIN_PER_THREAD = 8
# Chunks per channel are chosen so that channels x chunks is about this many blocks.
REDUCE_TARGET_BLOCKS = 512

# -- the convolution GEMMs: C (M x N) = A (M x K) @ B (K x N) ---------------------------------
# One block computes a GEMM_TILE_M x GEMM_TILE_N tile of C, walking K in steps of
# GEMM_TILE_K with both operand tiles staged in shared memory; each thread keeps a
# GEMM_THREAD_M x GEMM_THREAD_N block of C in registers (register blocking), so every value
# read from shared memory feeds 4 multiply-adds.
#   threads per block = (TILE_M / THREAD_M) * (TILE_N / THREAD_N) = 16 * 16 = 256
#   shared memory     = TILE_K * (TILE_M + 1 + TILE_N) * 4 B = 8.2 KiB in float32
# Constraints (checked in ``gemm_config``): THREAD_M | TILE_M, THREAD_N | TILE_N, and the
# thread count is a multiple of TILE_K and of TILE_N (each thread then loads fixed
# positions of the tiles).
GEMM_TILE_M = 64
GEMM_TILE_N = 64
GEMM_TILE_K = 16
GEMM_THREAD_M = 4
GEMM_THREAD_N = 4
# Split-K for the weight gradient (K = N*Ho*Wo is long, M x N = F x C*kh*kw is small): each
# split reduces at least this many K values ...
SPLIT_K_MIN = 256
# ... and splits are added until the grid has about this many blocks.
SPLIT_K_TARGET_BLOCKS = 264

# -- detection ------------------------------------------------------------------------------
# Boxes per NMS tile: one bit per box in a uint64 word, so this is fixed at 64 on a GPU; the
# tests lower it to exercise several tiles with few boxes.
NMS_TILE = 64
# Threads per side of the 2-D block of the pairwise IoU kernel (16 x 16 = 256 threads).
IOU_TILE = 16


def gemm_config():
    """The GEMM tile settings as a tuple, after checking that they fit together."""
    bm, bn, bk = GEMM_TILE_M, GEMM_TILE_N, GEMM_TILE_K
    tm, tn = GEMM_THREAD_M, GEMM_THREAD_N
    if bm % tm or bn % tn:
        raise ValueError(f"GEMM tile {bm}x{bn} is not a multiple of the thread tile {tm}x{tn}")
    threads = (bm // tm) * (bn // tn)
    if threads > 1024 or threads % bk or threads % bn:
        raise ValueError(
            f"GEMM: {threads} threads per block must be <= 1024 and a multiple of "
            f"GEMM_TILE_K={bk} and GEMM_TILE_N={bn}"
        )
    return bm, bn, bk, tm, tn
