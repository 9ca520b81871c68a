"""Anchors: octave scales, cell layout, grid order, levels, and torchvision's generator."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np.detection import (
    cell_anchors,
    generate_anchors,
    grid_anchors,
    num_anchors_per_location,
    octave_scales,
)


def test_octave_scales_truncate_like_torchvision():
    # DESIGN.md: "32, 40, 50 on P3, as torchvision truncates".
    assert octave_scales(32) == (32, 40, 50)
    for base in (32, 64, 128, 256, 512):
        assert octave_scales(base) == (base, int(base * 2 ** (1 / 3)), int(base * 2 ** (2 / 3)))
    assert octave_scales(10, scales_per_octave=2) == (10, 14)


@given(
    st.lists(st.integers(4, 600), min_size=1, max_size=4),
    st.lists(st.floats(0.2, 5.0), min_size=1, max_size=4),
)
def test_cell_anchors_ratio_major_centred_and_rounded(sizes, ratios):
    cell = cell_anchors(sizes, ratios)
    assert cell.shape == (len(sizes) * len(ratios), 4) and cell.dtype == np.float32
    np.testing.assert_array_equal(cell, np.round(cell))  # whole pixels
    np.testing.assert_array_equal(cell[:, :2], -cell[:, 2:])  # centred on (0, 0)
    for a in range(len(cell)):
        ratio, size = ratios[a // len(sizes)], sizes[a % len(sizes)]  # ratio-major
        w, h = cell[a, 2] - cell[a, 0], cell[a, 3] - cell[a, 1]
        # Each half-side is rounded once: within one pixel of the exact side.
        assert abs(w - size / math.sqrt(ratio)) <= 1.0 + 1e-3
        assert abs(h - size * math.sqrt(ratio)) <= 1.0 + 1e-3


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 32), st.integers(1, 32))
def test_grid_anchors_order_is_y_x_anchor(height, width, stride_y, stride_x):
    cell = cell_anchors((8, 16), (0.5, 1.0))
    num_per_loc = len(cell)
    grid = grid_anchors(cell, (height, width), (stride_y, stride_x))
    assert grid.shape == (height * width * num_per_loc, 4)
    for y in range(height):
        for x in range(width):
            for a in range(num_per_loc):
                row = (y * width + x) * num_per_loc + a
                shift = np.array([x * stride_x, y * stride_y] * 2, np.float32)
                np.testing.assert_array_equal(grid[row], cell[a] + shift)


def test_generate_anchors_stacks_levels_in_order():
    feature_hws = [(8, 8), (4, 4), (2, 2)]
    anchors = generate_anchors((64, 64), feature_hws, sizes=(16, 32, (40, 80)))
    counts = [h * w * 9 for h, w in feature_hws[:2]] + [2 * 2 * 6]
    assert anchors.shape == (sum(counts), 4)
    start = 0
    for (h, w), stride, sizes, count in zip(
        feature_hws, (8, 16, 32), (octave_scales(16), octave_scales(32), (40, 80)), counts
    ):
        expected = grid_anchors(cell_anchors(sizes, (0.5, 1.0, 2.0)), (h, w), stride)
        np.testing.assert_array_equal(anchors[start : start + count], expected)
        start += count
    # Explicit size tuples equal to the derived scales give the same anchors.
    explicit = generate_anchors((64, 64), feature_hws, sizes=(octave_scales(16), 32, (40, 80)))
    np.testing.assert_array_equal(anchors, explicit)
    assert generate_anchors((64, 64), feature_hws, sizes=(16, 32, 64), dtype=np.float64).dtype \
        == np.float64


def test_generate_anchors_derives_and_accepts_strides():
    # 100 // 13 = 7: the derived stride follows the feature size, as in torchvision.
    derived = generate_anchors((100, 100), [(13, 13)], sizes=(32,))
    explicit = generate_anchors((100, 100), [(13, 13)], strides=[8], sizes=(32,))
    np.testing.assert_array_equal(derived, generate_anchors((100, 100), [(13, 13)], [7], (32,)))
    assert not np.array_equal(derived, explicit)
    assert num_anchors_per_location() == 9
    with pytest.raises(ValueError):
        generate_anchors((64, 64), [(8, 8)], sizes=(16, 32))


@pytest.mark.torch
@pytest.mark.parametrize("image_hw", [(800, 800), (512, 672)])
def test_equals_torchvision_retinanet_anchor_generator(image_hw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.retinanet import _default_anchorgen

    # ResNet-50-FPN feature sizes: ceil-halving from stride 8 down to P7.
    feature_hws = []
    h, w = math.ceil(image_hw[0] / 8), math.ceil(image_hw[1] / 8)
    for _ in range(5):
        feature_hws.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    images = ImageList(torch.zeros(1, 3, *image_hw), [image_hw])
    features = [torch.zeros(1, 1, fh, fw) for fh, fw in feature_hws]
    expected = _default_anchorgen()(images, features)[0].numpy()
    anchors = generate_anchors(image_hw, feature_hws)
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, expected)
