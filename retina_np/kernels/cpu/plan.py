"""Which algorithm computes a CPU convolution: one pure function of the shapes and the thread
budget, ``choose_conv``, and the plan it returns.

Four ways, each tested equal to ``kernels/reference.py``'s loops:

* ``pointwise``   a 1x1, stride-1, unpadded convolution is one GEMM with the (C, H*W) input;
* ``im2col``      unfold every kh x kw patch into a column, then one GEMM (``conv.py``,
                  ``im2col.py``; the NumPy version of the idea is ``kernels/numpy_conv.py``);
* ``im2col_same`` the same for stride-1 "same" convolutions (every 3x3 of ResNet's blocks,
                  the FPN and the heads), unfolded by shifted copies without a padded input;
* ``winograd``    Winograd's F(m x m, 3x3) (``winograd.py``): fewer multiplications, in
                  (m + 2)^2 smaller GEMMs.

Why each choice (the measurements are in docs/performance-history.md, "How the convolution is
done"):

* Winograd pays where its GEMMs are large enough: at least ``options.winograd_min_tiles``
  2x2 blocks of outputs (on the smallest pyramid levels it was up to 2.3x slower), and where
  the blocks are many for the filters: every call transforms the filters anew ((m + 2)^2 F C
  elements, 4x the weights for m = 4), at most ``options.winograd_max_filter_share`` of them
  per block, where its transformed input, which the forward keeps for the weight gradient,
  fits ``options.keep_max_elements``, and where its products M ((m + 2)^2, F, tiles), made
  and dropped at once, fit ``options.winograd_max_elements`` (the classifier's 819 channels
  at 800x800 in inference).
* Where F(4x4, 3x3) is refused, F(2x2, 3x3) takes the deep layers on small maps, whose
  16 GEMMs each multiply a (C, blocks) matrix of at least ``options.winograd2_min_elements``
  values (``winograd2_min_elements_one_thread`` on one thread): ResNet-50's 512 channels at
  16x16 or 25x25, the FPN's 256 at 25x25, the shapes preset's last two stages. It has
  16 transformed values per filter, not 36, and its GEMMs 4x the columns of F(4x4, 3x3)'s
  (ResNet-50's last 3x3 at 800 px, forward and both gradients, 32.9 -> 21.8 ms).
* The heads' convolutions on a Joint of levels take it whenever it pays (their subnets run on
  one core each, where the im2col GEMM with K = 9*64 is slow).
* The backbone's and the FPN's take it too, on any thread budget: on several threads the
  transforms split the channels between them (``threads.over_channels``) and the GEMMs use
  every core (when the transforms were one serial loop, im2col + GEMM was as fast there).

On a budget of several threads an im2col forward with at least as many tiles of output as
threads (``im2col.output_tiles``) runs them side by side in that many tasks (``tasks``), each
unfolding and multiplying its run of tiles on one thread (``threads.side_by_side``): one
hand-over for the convolution instead of a wake-up of the other threads for each tile's
unfolding and GEMM (alone on 2 cores: the stem's forward 3.0 -> 2.7 ms, a 64-channel 3x3 of 8
16x16 images 1.9 -> 1.2 ms; wide products keep every core busy on their own, as the heads'
``options.side_by_side_max_channels`` says).

What the forward keeps for the weight gradient (``keep``): the unfolded input up to
``options.keep_max_elements``; for ``im2col`` only up to ``options.keep_columns_max_elements``,
above which it keeps the input's stride phases and the weight gradient unfolds them again
(the stem: a 7x7 kernel at stride 2 unfolds its input into 12 times as much, which cost more
to write out and read back than to unfold again).

The thread budget is an argument: ``threads.budget`` decides it from the kernel's size (and
whether it runs inside a task) and sets it; nothing here reads a thread count.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from retina_np.kernels import tunables as _options
from retina_np.kernels.cpu.im2col import output_tiles
from retina_np.kernels.cpu.winograd_f2 import tiles

POINTWISE, IM2COL, IM2COL_SAME, WINOGRAD = "pointwise", "im2col", "im2col_same", "winograd"


class ConvPlan(NamedTuple):
    algorithm: str  # POINTWISE, IM2COL, IM2COL_SAME or WINOGRAD
    block: int = 0  # WINOGRAD: the side m of the blocks of outputs (2 or 4); else 0
    keep: bool = False  # whether the forward may keep its unfolded or transformed input
    tasks: int = 1  # IM2COL, IM2COL_SAME: the forward's tiles run side by side in this many tasks


def out_size(n_in: int, k: int, stride: int, padding: int) -> int:
    """The output size of a convolution along one axis."""
    return (n_in + 2 * padding - k) // stride + 1


def is_same(kh: int, kw: int, stride: int, padding: int) -> bool:
    """A stride-1 convolution whose output is as large as its input."""
    return stride == 1 and kh == kw == 2 * padding + 1


def is_pointwise(kh: int, kw: int, stride: int, padding: int) -> bool:
    """A 1x1, stride-1, unpadded convolution: a plain GEMM with the (C, H*W) input matrix."""
    return kh == 1 and kw == 1 and stride == 1 and padding == 0


def winograd_block(n: int, C: int, F: int, hws: tuple, opts, threads: int,
                   joint: bool = False) -> int:
    """The block side m if a 3x3 "same" convolution of n images with levels hws (C -> F
    channels) pays by Winograd's algorithm on ``threads`` threads, else 0. The size tests
    count 2x2 blocks whatever m is, so that both block sides take the same layers; where
    F(4x4, 3x3) does not pay, F(2x2, 3x3) may, for images (not a Joint of levels:
    ``options.winograd2_min_elements``)."""
    if not opts.winograd:
        return 0
    m = opts.winograd_block
    blocks = tiles(n, hws, 2)[1]

    def fits(m):
        terms_tiles = (m + 2) ** 2 * tiles(n, hws, m)[1]
        return (terms_tiles * C <= opts.keep_max_elements
                and terms_tiles * F <= opts.winograd_max_elements)

    filter_share = (m + 2) ** 2 * F * C / max(blocks, 1)  # transformed filters per block
    if blocks >= opts.winograd_min_tiles and filter_share <= opts.winograd_max_filter_share:
        return m if fits(m) else 0
    # Few blocks for the filters: F(2x2, 3x3)'s 16 terms, if each of its GEMMs multiplies a
    # (C, blocks) matrix at least this large (deep layers on small maps)
    least = (opts.winograd2_min_elements if threads > 1
             else opts.winograd2_min_elements_one_thread)
    if m == 4 and not joint and C * blocks >= least and fits(2):
        return 2
    return 0


def choose_conv(n: int, C: int, F: int, hws: tuple, kh: int, kw: int, stride: int,
                padding: int, threads: int, joint: bool = False, opts=None) -> ConvPlan:
    """The plan of a convolution of n images (C -> F channels, kernel kh x kw).

    Args:
        hws: ((H, W),) for (N, C, H, W) images, or every level's (H, W) of a Joint.
        threads: the thread budget the convolution runs on (``threads.budget``).
        joint: a Joint of levels (the heads; only "same" convolutions).
        opts: the kernel options (default ``kernels.options.current()``).
    """
    return _choose_conv(n, C, F, tuple(hws), kh, kw, stride, padding, threads, joint,
                        opts if opts is not None else _options.current())


@functools.lru_cache(maxsize=1024)  # a pure function of hashable arguments, called per layer
def _choose_conv(n, C, F, hws, kh, kw, stride, padding, threads, joint, opts) -> ConvPlan:
    same = is_same(kh, kw, stride, padding)
    if kh == kw == 3 and same and (joint or opts.winograd_images):
        m = winograd_block(n, C, F, tuple(hws), opts, threads, joint)
        if m:
            return ConvPlan(WINOGRAD, m, True)
    if is_pointwise(kh, kw, stride, padding):
        return ConvPlan(POINTWISE)
    unfolded = C * kh * kw * n * sum(out_size(h, kh, stride, padding)
                                     * out_size(w, kw, stride, padding) for h, w in hws)
    keep = unfolded <= opts.keep_max_elements
    tasks = 1
    if threads > 1 and not joint and opts.side_by_side and F <= opts.side_by_side_max_channels:
        Wo = out_size(hws[0][1], kw, stride, padding)
        rows = out_size(hws[0][0], kh, stride, padding)
        tasks = threads if len(output_tiles(n, rows, C * kh * kw, Wo, opts)) >= threads else 1
    if same:
        return ConvPlan(IM2COL_SAME, 0, keep, tasks)
    return ConvPlan(IM2COL, 0, keep and unfolded <= opts.keep_columns_max_elements, tasks)
