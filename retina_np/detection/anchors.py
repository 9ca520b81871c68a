"""Anchors: the fixed reference boxes every head output is measured against.

At every location of every pyramid level RetinaNet places A = 9 anchors: 3 aspect ratios
(h / w = 0.5, 1, 2) times 3 scales per octave (s, s * 2^(1/3), s * 2^(2/3)), where s is the
level's base size (32 on P3 ... 512 on P7). They are built in two steps, as in torchvision's
``AnchorGenerator`` and detectron2's ``DefaultAnchorGenerator``:

1. :func:`cell_anchors`: the A anchors of one level centred on (0, 0), ratio-major and
   scale-minor, rounded to whole pixels;
2. :func:`grid_anchors`: those A anchors shifted to every location ``(x * stride,
   y * stride)`` of the feature map, ordered y, then x, then anchor.

:func:`generate_anchors` stacks the levels into one (R, 4) array in the order of the head
outputs: level, y, x, anchor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The paper's base anchor sizes on P3..P7 (strides 8..128): each level's anchors start at
# 4x its stride, so neighbouring levels overlap by one octave.
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)
# h / w of the anchors at every location; the paper found three ratios enough.
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Scales per octave: 3 sizes s * 2^(i/3) fill the factor-2 gap between two levels.
DEFAULT_SCALES_PER_OCTAVE = 3


def octave_scales(base_size, scales_per_octave: int = DEFAULT_SCALES_PER_OCTAVE) -> tuple:
    """The sizes ``s, int(s * 2^(1/n)), ..., int(s * 2^((n-1)/n))`` of one level.

    The first size is ``base_size`` itself; the others are truncated to integers, exactly as
    torchvision's ``retinanet_resnet50_fpn`` does (32 -> 32, 40, 50).
    """
    return (base_size,) + tuple(
        int(base_size * 2 ** (i / scales_per_octave)) for i in range(1, scales_per_octave)
    )


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=np.float32):
    """The anchors of one location, centred on (0, 0).

    Args:
        sizes (Sequence[float]): anchor sizes (square root of the area) of the level.
        aspect_ratios (Sequence[float]): height / width ratios.

    Returns:
        ndarray[A, 4]: A = len(aspect_ratios) * len(sizes) anchors, ratio-major and
        scale-minor, ``round([-w/2, -h/2, w/2, h/2])`` with ``h = size * sqrt(ratio)`` and
        ``w = size / sqrt(ratio)``; rounding is half-to-even.
    """
    # float32 whatever the requested dtype, operation for operation as torchvision, so that
    # the rounding (and so every anchor) agrees with it exactly; the rounded values are
    # whole numbers and cast exactly to any dtype.
    scales = np.asarray(sizes, dtype=np.float32)
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,) ratio-major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)  # (A, 4)
    return np.round(base).astype(dtype)


def grid_anchors(cell: np.ndarray, feature_hw, stride) -> np.ndarray:
    """Shift one level's cell anchors to every location of its feature map.

    Args:
        cell (ndarray[A, 4]): anchors centred on (0, 0), from :func:`cell_anchors`.
        feature_hw (tuple[int, int]): feature map height H and width W.
        stride (int | tuple[int, int]): pixels between locations, one number or (sy, sx).

    Returns:
        ndarray[H*W*A, 4]: anchor ``a`` of location ``(y, x)`` is row ``(y * W + x) * A + a``
        and is centred on ``(x * sx, y * sy)``.
    """
    height, width = feature_hw
    stride_y, stride_x = (stride, stride) if np.isscalar(stride) else stride
    shift_x = np.arange(width, dtype=np.int64) * stride_x  # (W,)
    shift_y = np.arange(height, dtype=np.int64) * stride_y  # (H,)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W) each
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + cell[None, :, :]).reshape(-1, 4).astype(cell.dtype)  # (H*W*A, 4)


def level_sizes(sizes, num_levels: int, scales_per_octave: int = DEFAULT_SCALES_PER_OCTAVE):
    """Per-level anchor size tuples from a mix of base sizes and explicit tuples.

    A number is a base size and expands to :func:`octave_scales`; a tuple is used as given.
    """
    if len(sizes) != num_levels:
        raise ValueError(f"{len(sizes)} anchor sizes given for {num_levels} feature maps")
    explicit = (tuple, list, np.ndarray)
    return [
        tuple(s) if isinstance(s, explicit) else octave_scales(s, scales_per_octave) for s in sizes
    ]


def num_anchors_per_location(
    sizes=DEFAULT_ANCHOR_SIZES,
    aspect_ratios=DEFAULT_ASPECT_RATIOS,
    scales_per_octave: int = DEFAULT_SCALES_PER_OCTAVE,
) -> int:
    """A, the number of anchors per location (the same on every level, as the heads share
    their weights across levels)."""
    per_level = level_sizes(sizes, len(sizes), scales_per_octave)
    ratios = _level_ratios(aspect_ratios, len(sizes))
    counts = {len(s) * len(r) for s, r in zip(per_level, ratios)}
    if len(counts) != 1:
        raise ValueError(f"levels have different numbers of anchors per location: {counts}")
    return counts.pop()


def _level_ratios(aspect_ratios, num_levels: int):
    """One tuple of ratios per level: a flat sequence is shared by all levels."""
    if len(aspect_ratios) and isinstance(aspect_ratios[0], (tuple, list, np.ndarray)):
        if len(aspect_ratios) != num_levels:
            raise ValueError(f"{len(aspect_ratios)} ratio tuples given for {num_levels} levels")
        return [tuple(r) for r in aspect_ratios]
    return [tuple(aspect_ratios)] * num_levels


def generate_anchors(
    image_hw,
    feature_hws,
    strides=None,
    sizes=DEFAULT_ANCHOR_SIZES,
    aspect_ratios=DEFAULT_ASPECT_RATIOS,
    scales_per_octave: int = DEFAULT_SCALES_PER_OCTAVE,
    dtype=np.float32,
) -> np.ndarray:
    """All anchors of an image, in the order of the head outputs.

    Args:
        image_hw (tuple[int, int]): height and width of the (padded) network input.
        feature_hws (Sequence[tuple[int, int]]): (H, W) of each pyramid level, P3 first.
        strides (Sequence[int | tuple[int, int]] | None): stride of each level. ``None``
            derives ``(image_h // H, image_w // W)`` per level, as torchvision does; for an
            input that is not a multiple of 128 this differs from the nominal 8..128 on the
            coarse levels (an 800x800 input gives P7 7x7 and stride 800 // 7 = 114).
        sizes (Sequence[float | Sequence[float]]): per level a base size (expanded to
            ``scales_per_octave`` octave scales) or an explicit tuple of sizes.
        aspect_ratios (Sequence[float] | Sequence[Sequence[float]]): h / w ratios, shared by
            all levels or one tuple per level.
        scales_per_octave (int): sizes derived from each base size.
        dtype: dtype of the result.

    Returns:
        ndarray[R, 4]: R = sum over levels of H * W * A, ordered level, y, x, anchor.
    """
    num_levels = len(feature_hws)
    per_level_sizes = level_sizes(sizes, num_levels, scales_per_octave)
    per_level_ratios = _level_ratios(aspect_ratios, num_levels)
    if strides is None:
        strides = [(image_hw[0] // h, image_hw[1] // w) for h, w in feature_hws]
    if len(strides) != num_levels:
        raise ValueError(f"{len(strides)} strides given for {num_levels} feature maps")
    levels = [
        grid_anchors(cell_anchors(s, r, dtype), hw, stride)
        for s, r, hw, stride in zip(per_level_sizes, per_level_ratios, feature_hws, strides)
    ]
    if not levels:
        return np.zeros((0, 4), dtype=dtype)
    return np.concatenate(levels, axis=0)  # (R, 4)
