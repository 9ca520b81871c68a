"""kernels/cpu/plan.py: which algorithm a CPU convolution takes, rule by rule of
``choose_conv``'s docstring, and each option that switches a rule off. ``choose_conv`` is a
pure function of the shapes, the thread budget and the options, so these cases run nothing;
that the kernels follow the plan is checked in test_winograd.py and test_cpu_vs_reference.py.
"""

import pytest

from retina_np import kernels
from retina_np.kernels import Options
from retina_np.kernels.cpu.plan import (
    IM2COL,
    IM2COL_SAME,
    POINTWISE,
    WINOGRAD,
    ConvPlan,
    choose_conv,
    is_pointwise,
    is_same,
    out_size,
)

DEFAULT = Options()
HEADS = ((16, 16), (8, 8), (1, 1))  # 8 images: 8 * (64 + 16 + 1) = 648 2x2 blocks


def same3x3(n, C, F, hws, threads, joint=False, opts=DEFAULT):
    """The plan of a 3x3, stride-1, padding-1 convolution."""
    return choose_conv(n, C, F, hws, 3, 3, 1, 1, threads, joint=joint, opts=opts)


def test_shape_helpers():
    assert out_size(7, 3, 2, 1) == 4 and out_size(5, 3, 1, 1) == 5 and out_size(1, 1, 2, 0) == 1
    assert is_same(3, 3, 1, 1) and is_same(5, 5, 1, 2) and is_same(1, 1, 1, 0)
    assert not is_same(3, 3, 2, 1) and not is_same(3, 3, 1, 0) and not is_same(3, 5, 1, 1)
    assert is_pointwise(1, 1, 1, 0)
    assert not is_pointwise(1, 1, 2, 0) and not is_pointwise(1, 1, 1, 1)
    assert not is_pointwise(3, 3, 1, 0)


def test_heads_joint_takes_winograd_where_it_pays_on_any_budget():
    """A Joint of levels (the heads) takes Winograd whenever it has at least
    winograd_min_tiles 2x2 blocks, whatever the thread budget; the block side is
    winograd_block, and the transformed input is kept."""
    for threads in (1, 2, 8):
        assert same3x3(8, 64, 64, HEADS, threads, joint=True) == ConvPlan(WINOGRAD, 4, True)
    # the small levels alone: 8 * (3 * 4 + 1) = 104 blocks, and 8 * (4 + 1 + 1) = 48
    assert same3x3(8, 64, 64, ((6, 8), (2, 2)), 1, joint=True).algorithm == IM2COL_SAME
    assert same3x3(8, 64, 64, ((4, 4), (2, 2), (1, 1)), 1, joint=True).algorithm == IM2COL_SAME


def test_the_tile_threshold_is_inclusive_and_counts_2x2_blocks_for_both_block_sides():
    """At least winograd_min_tiles blocks of 2x2 outputs, whichever the block side m: so that
    F(2x2, 3x3) and F(4x4, 3x3) take the same layers."""
    for m in (2, 4):
        for blocks, hws in ((24, ((8, 12),)), (24, ((7, 11),)), (15, ((5, 5), (6, 4)))):
            at = Options(winograd_block=m, winograd_min_tiles=blocks)
            above = Options(winograd_block=m, winograd_min_tiles=blocks + 1)
            assert same3x3(1, 4, 4, hws, 1, opts=at) == ConvPlan(WINOGRAD, m, True), (m, hws)
            assert same3x3(1, 4, 4, hws, 1, opts=above).algorithm == IM2COL_SAME, (m, hws)
    # 2 images: twice the blocks
    assert same3x3(2, 4, 4, ((8, 12),), 1,
                   opts=Options(winograd_min_tiles=48)).algorithm == WINOGRAD


def test_winograd_only_where_its_transformed_input_and_products_fit():
    """(m + 2)^2 x C x tiles of m x m (the transformed input, kept): at most keep_max_elements;
    (m + 2)^2 x F x tiles (the products, dropped at once): at most winograd_max_elements; else
    im2col."""
    hws = ((8, 8),)  # 16 tiles of 2x2, 4 of 4x4
    for m, tiles in ((2, 16), (4, 4)):
        C, F = 3, 5
        kept, made = (m + 2) ** 2 * C * tiles, (m + 2) ** 2 * F * tiles
        fits = Options(winograd_block=m, winograd_min_tiles=1, keep_max_elements=kept,
                       winograd_max_elements=made)
        over_kept = Options(winograd_block=m, winograd_min_tiles=1, keep_max_elements=kept - 1,
                            winograd_max_elements=made)
        over_made = Options(winograd_block=m, winograd_min_tiles=1, keep_max_elements=kept,
                            winograd_max_elements=made - 1)
        for joint in (False, True):
            assert same3x3(1, C, F, hws, 1, joint, fits) == ConvPlan(WINOGRAD, m, True)
            assert same3x3(1, C, F, hws, 1, joint, over_kept).algorithm == IM2COL_SAME
            assert same3x3(1, C, F, hws, 1, joint, over_made).algorithm == IM2COL_SAME
    # ResNet-50-FPN's classifier at 800x800 (256 -> 819 channels on P3, 100x100): its products
    # (36 x 819 x 625 = 18.4M) are over keep_max_elements but within winograd_max_elements
    assert same3x3(1, 256, 819, ((100, 100),), 2) == ConvPlan(WINOGRAD, 4, True)


def test_images_take_winograd_where_it_pays_on_any_budget():
    """The backbone's and the FPN's 3x3 "same" convolutions (images, not a Joint) take
    Winograd where it pays, on one thread or on several (the transforms split the channels
    between the threads); too few blocks keep im2col."""
    x = (8, 64, 64, ((32, 32),))  # 2048 2x2 blocks
    for threads in (1, 2, 16):
        assert same3x3(*x, threads) == ConvPlan(WINOGRAD, 4, True)
        # 64 blocks: im2col on several threads, F(2x2, 3x3) on one (64 x 64 values)
        small = same3x3(1, 64, 64, ((16, 16),), threads)
        assert small == (ConvPlan(WINOGRAD, 2, True) if threads == 1
                         else ConvPlan(IM2COL_SAME, 0, True, small.tasks))
    # the shapes preset's 8x8 layers (128 blocks): F(4x4, 3x3)'s float32 rounding, not taken;
    # F(2x2, 3x3) instead (test_f2_takes_the_deep_layers_on_small_maps)
    assert same3x3(8, 64, 64, ((8, 8),), 1) == ConvPlan(WINOGRAD, 2, True)


def test_winograd_only_where_the_blocks_are_many_for_the_filters():
    """Every call transforms its filters anew, (m + 2)^2 x F x C elements: at most
    winograd_max_filter_share of them per 2x2 block of outputs, else im2col (ResNet-50's last
    stage at one image; its third stage takes Winograd)."""
    assert same3x3(1, 256, 256, ((32, 32),), 2) == ConvPlan(WINOGRAD, 4, True)  # 9.2k a block
    no_f2 = Options(winograd2_min_elements=1 << 40)
    assert same3x3(1, 512, 512, ((25, 25),), 2, opts=no_f2).algorithm == IM2COL_SAME  # 56k
    assert same3x3(8, 512, 512, ((16, 16),), 2) == ConvPlan(WINOGRAD, 4, True)  # 512, 18k
    for m in (2, 4):
        C, F, hws = 4, 4, ((8, 8),)  # 16 blocks
        share = (m + 2) ** 2 * F * C // 16  # 36 or 16 a block
        at = Options(winograd_block=m, winograd_min_tiles=1, winograd_max_filter_share=share)
        below = Options(winograd_block=m, winograd_min_tiles=1,
                        winograd_max_filter_share=share - 1)
        assert same3x3(1, C, F, hws, 1, opts=at) == ConvPlan(WINOGRAD, m, True), m
        assert same3x3(1, C, F, hws, 1, opts=below).algorithm == IM2COL_SAME, m


def test_f2_takes_the_deep_layers_on_small_maps():
    """Where F(4x4, 3x3) is refused, F(2x2, 3x3) takes a layer of images whose (C, blocks)
    matrices have at least winograd2_min_elements values on several threads: ResNet-50's 512
    channels at one 512 or 800 px image, the FPN's 256 at 25x25; not 256 at 16x16, 512 at
    12x12, nor the shapes preset's small layers, which take it on one thread
    (winograd2_min_elements_one_thread), as they run in the training step."""
    for n, C, hw in ((1, 512, 16), (1, 512, 25), (1, 256, 25), (2, 256, 16), (1, 384, 16)):
        assert same3x3(n, C, C, ((hw, hw),), 2) == ConvPlan(WINOGRAD, 2, True), (n, C, hw)
    for n, C, hw in ((1, 256, 16), (1, 512, 12), (1, 512, 8), (8, 64, 8), (8, 128, 4)):
        assert same3x3(n, C, C, ((hw, hw),), 2).algorithm == IM2COL_SAME, (n, C, hw)
    for n, C, hw in ((8, 64, 8), (8, 128, 4), (1, 64, 16)):  # 8k, 4k and 4k on one thread
        assert same3x3(n, C, C, ((hw, hw),), 1) == ConvPlan(WINOGRAD, 2, True), (n, C, hw)
    for n, C, hw in ((1, 128, 8), (2, 64, 8)):  # 2k
        assert same3x3(n, C, C, ((hw, hw),), 1).algorithm == IM2COL_SAME, (n, C, hw)
    C, hws = 16, ((8, 8),)  # 16 blocks: too few for F(4x4, 3x3)
    for threads, name in ((2, "winograd2_min_elements"),
                          (1, "winograd2_min_elements_one_thread")):
        at, above = (Options(**{name: C * 16 + d}) for d in (0, 1))
        assert same3x3(1, C, C, hws, threads, opts=at) == ConvPlan(WINOGRAD, 2, True)
        assert same3x3(1, C, C, hws, threads, opts=above).algorithm == IM2COL_SAME
        # not for a Joint of levels (the heads take F(4x4, 3x3) or nothing)
        assert same3x3(1, C, C, hws, threads, joint=True, opts=at).algorithm == IM2COL_SAME
    # only as F(4x4, 3x3)'s stand-in: a chosen block side of 2 keeps its own tests
    assert same3x3(1, C, C, hws, 2, opts=Options(winograd_block=2, winograd2_min_elements=1)
                   ).algorithm == IM2COL_SAME
    # and only where its arrays fit, as F(4x4, 3x3)'s must
    small = Options(winograd2_min_elements=1, keep_max_elements=16 * 16 * C - 1)
    assert same3x3(1, C, C, hws, 2, opts=small).algorithm == IM2COL_SAME


def test_only_3x3_same_convolutions_take_winograd():
    opts = Options(winograd_min_tiles=1)
    for kh, stride, padding, algorithm in ((3, 2, 1, IM2COL), (3, 1, 0, IM2COL),
                                           (3, 1, 2, IM2COL), (5, 1, 2, IM2COL_SAME),
                                           (7, 1, 3, IM2COL_SAME), (1, 1, 0, POINTWISE)):
        for joint in (False, True):
            plan = choose_conv(2, 4, 4, ((16, 16),), kh, kh, stride, padding, 1, joint=joint,
                               opts=opts)
            assert plan.algorithm == algorithm, (kh, stride, padding, joint)


def test_options_switch_winograd_off():
    """winograd=False: neither the Joints nor the images; winograd_images=False: not the
    images, the Joints still."""
    opts = Options(winograd=False)
    assert same3x3(8, 64, 64, HEADS, 1, joint=True, opts=opts).algorithm == IM2COL_SAME
    assert same3x3(8, 64, 64, ((32, 32),), 1, opts=opts).algorithm == IM2COL_SAME
    opts = Options(winograd_images=False)
    assert same3x3(8, 64, 64, HEADS, 1, joint=True, opts=opts).algorithm == WINOGRAD
    assert same3x3(8, 64, 64, ((32, 32),), 1, opts=opts).algorithm == IM2COL_SAME
    assert same3x3(8, 64, 64, ((32, 32),), 1,
                   opts=Options(winograd_block=2)) == ConvPlan(WINOGRAD, 2, True)


def test_pointwise_convolutions_are_one_gemm_and_keep_nothing():
    """1x1, stride 1, no padding: x itself is the GEMM's matrix, there is nothing to keep."""
    assert choose_conv(2, 64, 128, ((16, 16),), 1, 1, 1, 0, 1) == ConvPlan(POINTWISE)
    assert choose_conv(2, 64, 128, ((16, 16),), 1, 1, 2, 0, 1) == ConvPlan(IM2COL, 0, True)
    assert choose_conv(2, 64, 128, ((16, 16),), 1, 1, 1, 1, 1).algorithm == IM2COL


@pytest.mark.parametrize("kh, stride, padding, algorithm", [(3, 2, 1, IM2COL),
                                                            (3, 1, 1, IM2COL_SAME),
                                                            (7, 2, 3, IM2COL)])
def test_im2col_keeps_the_unfolded_input_up_to_keep_max_elements(kh, stride, padding,
                                                                 algorithm):
    """C x kh x kw x n x Ho x Wo unfolded elements: kept for the weight gradient up to
    keep_max_elements, inclusive."""
    n, C, H, W = 2, 3, 9, 7
    Ho, Wo = out_size(H, kh, stride, padding), out_size(W, kh, stride, padding)
    unfolded = C * kh * kh * n * Ho * Wo
    for limit, keep in ((unfolded, True), (unfolded - 1, False)):
        opts = Options(winograd=False, keep_max_elements=limit)
        plan = choose_conv(n, C, 4, ((H, W),), kh, kh, stride, padding, 1, opts=opts)
        assert plan == ConvPlan(algorithm, 0, keep)


@pytest.mark.parametrize("kh, stride, padding, algorithm", [(3, 2, 1, IM2COL),
                                                            (3, 1, 1, IM2COL_SAME),
                                                            (7, 2, 3, IM2COL)])
def test_strided_im2col_keeps_its_columns_up_to_keep_columns_max_elements(kh, stride, padding,
                                                                          algorithm):
    """An im2col through the phases (strided or padded) keeps its unfolded input only up to
    keep_columns_max_elements too, inclusive (above it the forward keeps the phases); a "same"
    convolution's unfolding is not bound by it."""
    n, C, H, W = 2, 3, 9, 7
    Ho, Wo = out_size(H, kh, stride, padding), out_size(W, kh, stride, padding)
    unfolded = C * kh * kh * n * Ho * Wo
    for limit, keep in ((unfolded, True), (unfolded - 1, algorithm == IM2COL_SAME)):
        opts = Options(winograd=False, keep_columns_max_elements=limit)
        plan = choose_conv(n, C, 4, ((H, W),), kh, kh, stride, padding, 1, opts=opts)
        assert plan == ConvPlan(algorithm, 0, keep)


def test_the_stem_keeps_its_phases_not_its_columns():
    """The shapes preset's stem (7x7, stride 2, 3 -> 16 channels, 8 images of 128x128):
    4.8M unfolded elements, above keep_columns_max_elements; its 3x3 stride-2 convolutions
    keep theirs."""
    assert choose_conv(8, 3, 16, ((128, 128),), 7, 7, 2, 3, 1) == ConvPlan(IM2COL, 0, False)
    assert choose_conv(8, 16, 32, ((32, 32),), 3, 3, 2, 1, 1) == ConvPlan(IM2COL, 0, True)


def test_im2col_tiles_run_side_by_side_where_there_are_enough():
    """On several threads an im2col forward with at least one tile per thread runs its tiles
    in one task per thread; not on one thread, not with fewer tiles than threads, not wider
    than side_by_side_max_channels, not with side_by_side off, and never for a Joint."""
    stem = (8, 3, 16, ((128, 128),), 7, 7, 2, 3)  # 16 tiles of 32 rows of 64 outputs
    assert choose_conv(*stem, 2) == ConvPlan(IM2COL, 0, False, 2)
    assert choose_conv(*stem, 16).tasks == 16
    assert choose_conv(*stem, 1).tasks == 1
    assert choose_conv(*stem, 32).tasks == 1
    assert choose_conv(*stem, 32, opts=Options(cols_max_columns=1024)).tasks == 32
    assert choose_conv(*stem, 2, opts=Options(side_by_side=False)).tasks == 1
    assert choose_conv(*stem, 2, opts=Options(side_by_side_max_channels=15)).tasks == 1
    x = (8, 64, 64, ((16, 16),))  # 576 x 2048 unfolded: 2 tiles of 2^20 elements
    im2col = Options(winograd=False, cols_max_elements=1 << 20)
    assert same3x3(*x, 2, opts=im2col) == ConvPlan(IM2COL_SAME, 0, True, 2)
    assert same3x3(*x, 3, opts=im2col).tasks == 1
    joint = same3x3(8, 64, 64, ((6, 8),), 2, joint=True, opts=Options(cols_max_elements=1))
    assert joint == ConvPlan(IM2COL_SAME, 0, True, 1)


def test_without_opts_the_options_in_force_decide():
    assert same3x3(8, 64, 64, ((32, 32),), 1, opts=None).algorithm == WINOGRAD
    with kernels.options(winograd_images=False):
        assert same3x3(8, 64, 64, ((32, 32),), 1, opts=None).algorithm == IM2COL_SAME
    with kernels.options(winograd_block=2):
        assert same3x3(8, 64, 64, ((32, 32),), 1, opts=None) == ConvPlan(WINOGRAD, 2, True)


def test_the_block_side_is_2_or_4():
    with pytest.raises(ValueError, match="winograd_block must be 2 or 4"):
        Options(winograd_block=3)
