"""Every tunable of the kernels in one record, and the one way to change them for a while.

The kernels read ``current()`` when they are called; nothing else reads or writes a kernel
module's globals. Benchmarks and tests switch an algorithm off, or shrink a limit so that a
tiny input takes a path that only large ones take otherwise, with

    from retina_np import kernels
    with kernels.options(winograd=False):        # im2col + GEMM for the heads, for comparison
        ...

The defaults are what the package runs; why each value was chosen is said in one line here,
and what was measured for it is in docs/performance-history.md ("Kernel options").
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    # -- CPU convolutions (kernels/cpu/conv.py, plan.py) ---------------------------------------
    # Largest im2col matrix of one tile (elements, 8 MB in float32): large images are cut into
    # bands of output rows. 2^21 keeps ResNet-50's last 3x3 (512 channels at 16x16: 1.2M) in
    # one tile, whose weight gradient is then one GEMM: forward and both gradients 16.5 ->
    # 13.1 ms; its other layers and the shapes preset's step ran as fast from 2^20 to 2^22.
    cols_max_elements: int = 1 << 21
    # ... and of at most this many output positions (columns): a thin unfolding (the stem's
    # 147 rows) then stays in the L2 cache between its unfolding and its GEMM (the stem in the
    # training step: forward 5.4 -> 4.4 ms, weight gradient 6.1 -> 5.2 ms); from 512 rows on
    # (a 3x3 of 57 channels or more) the bound in elements comes first.
    cols_max_columns: int = 2048
    # Largest unfolded (or Winograd-transformed) input a forward keeps for the weight gradient
    # (elements, 32 MB in float32): every layer of the shapes preset fits, ResNet-50 does not.
    keep_max_elements: int = 1 << 23
    # Largest product array M ((m + 2)^2, F, tiles) of a Winograd convolution, made and
    # dropped within the call (elements, 128 MB in float32).
    winograd_max_elements: int = 1 << 25
    # ... and for a strided or padded im2col (the phases path) at most this many (16 MB in
    # float32); above it the forward keeps the input's phases and the weight gradient unfolds
    # them again, tile by tile: the stem's 19 MB of columns cost more to write out and read
    # back than unfolding again (forward 6.5 -> 4.7 ms, weight gradient 3.9 -> 4.4 ms, one
    # thread, cold caches).
    keep_columns_max_elements: int = 1 << 22
    # Weight gradients with at most this many elements run as the transposed GEMM, which
    # OpenBLAS runs faster when F is small (the copy back costs more for large ones).
    wgrad_transposed_max: int = 1 << 18
    # Winograd's F(m x m, 3x3) for the heads' 3x3 convolutions on a Joint.
    winograd: bool = True
    # ... and for the 3x3 "same" convolutions of images (the backbone's and the FPN's).
    winograd_images: bool = True
    # The side m of the blocks of outputs: 4 (36 products for 16 outputs) or 2 (64).
    winograd_block: int = 4
    # Winograd only where there are at least this many 2x2 blocks of outputs: its 16 or 36
    # GEMMs are too small below (128 channels at 4x4 for 8 images, 32 blocks, was 2.3x
    # slower). 64 at 8x8 (128 blocks) is 1.9x faster by it, but F(4x4, 3x3)'s float32
    # rounding there doubled the shapes preset's largest output error against float64 (4.4e-3
    # -> 8.0e-3); from 256, ResNet-50's third stage at one 512 px image takes it ...
    winograd_min_tiles: int = 256
    # ... and at most this many transformed filters' elements ((m + 2)^2 F C, made anew by
    # every call) per block: ResNet-50's 512-channel layer at 25x25 (56k a block) was slower
    # by Winograd in the forward, its 256-channel one at 32x32 (9k) 1.6x faster (forward and
    # both gradients 2.2x).
    winograd_max_filter_share: int = 1 << 15
    # Where F(4x4, 3x3) is refused (too few blocks, or too many filters for them), F(2x2, 3x3)
    # takes a layer whose 16 GEMMs each multiply at least this many input values (C x 2x2
    # blocks): forward and both gradients of 512 channels at 16x16 (32k) 12.97 -> 12.56 ms, at
    # 25x25 32.9 -> 21.8 (fresh alternating processes, bench_layer_versus.py; in one process
    # 15.4 -> 13.8 and 38.2 -> 26.4); below it slower (in one process: 256 at 16x16 (16k) 3.9
    # -> 4.1 ms, 512 at 12x12 (18k) 9.0 -> 11.4).
    winograd2_min_elements: int = 24576
    # ... and on a one-thread budget (small layers, or inside a task): the shapes preset's 64
    # channels at 8x8 for 8 images (8k) 1.26 -> 1.00 ms, its 128 at 4x4 (4k) 1.30 -> 1.16,
    # the step 58.8 -> 56.8 ms (bench_versus.py); F(4x4, 3x3) was faster still at 8x8, but
    # its float32 rounding there doubled the preset's largest output error (winograd_min_tiles).
    winograd2_min_elements_one_thread: int = 4096
    # -- CPU norms (kernels/cpu/norm.py) ---------------------------------------------------------
    # Group norms of fewer elements run their serial loop (waking the threads costs more).
    groupnorm_parallel_min_elements: int = 1 << 15
    # -- CPU threads (kernels/threads.py) ---------------------------------------------------
    # Independent tasks (the heads' subnets, the queued weight gradients) side by side.
    side_by_side: bool = True
    # Above this width the products keep every core busy on their own: tasks run one by one.
    side_by_side_max_channels: int = 128
    # Kernels whose first input has fewer elements run on one thread (outside a task);
    # 0: every kernel on every core.
    serial_max_elements: int = 1 << 18
    # ... unless a convolution does at least this many multiply-adds (ResNet-50's last stage).
    serial_max_macs: int = 1 << 27
    # -- CUDA launches (kernels/cuda/config.py explains each) -----------------------------------
    cuda_threads_1d: int = 256
    cuda_max_blocks_1d: int = 1024
    cuda_reduce_threads: int = 256
    cuda_reduce_min_per_thread: int = 8
    cuda_reduce_target_blocks: int = 512
    cuda_gemm_tile_m: int = 64
    cuda_gemm_tile_n: int = 64
    cuda_gemm_tile_k: int = 16
    cuda_gemm_thread_m: int = 4
    cuda_gemm_thread_n: int = 4
    cuda_split_k_min: int = 256
    cuda_split_k_target_blocks: int = 264
    cuda_nms_tile: int = 64
    cuda_iou_tile: int = 16

    def __post_init__(self):
        if self.winograd_block not in (2, 4):
            raise ValueError(f"winograd_block must be 2 or 4, got {self.winograd_block}")


_current = Options()
_lock = threading.Lock()


def current() -> Options:
    """The options in force (process-wide: the worker threads of a task see them too)."""
    return _current


@contextlib.contextmanager
def options(**changes):
    """Run the block with some options changed (names and types as ``Options``'s fields),
    then put the previous ones back, also after an error. Unknown names raise TypeError."""
    global _current
    with _lock:
        before = _current
        _current = dataclasses.replace(before, **changes)
    try:
        yield _current
    finally:
        with _lock:
            _current = before
