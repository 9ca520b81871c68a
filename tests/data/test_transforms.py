import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    hflip,
    normalize,
    pad_batch,
)
from retina_np.data.shapes import mask_box


def test_normalize_values_and_layout(rng):
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalize(image)
    assert x.shape == (3, 5, 7) and x.dtype == np.float32 and x.flags.c_contiguous
    c, i, j = 2, 4, 1
    expected = (image[i, j, c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    assert x[c, i, j] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(denormalize(x), image)


def test_normalize_of_uint8_gives_the_formulas_bits(rng):
    """A uint8 image goes through a table of the 256 values per channel: the bits of the
    float formula, for every value, any statistics and views (a flipped image's)."""
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))):
        for x in (every_value, image, image[:, ::-1], every_value[::2, 3:]):
            formula = normalize(x.astype(np.float32), mean, std)  # the float path
            table = normalize(x, mean, std)
            assert table.dtype == np.float32 and table.flags.c_contiguous
            np.testing.assert_array_equal(table, formula)


def test_normalize_with_a_models_statistics(rng):
    """``RetinaNetConfig.image_mean`` and ``image_std``: the defaults are ImageNet's, bit for
    bit; other statistics give other images, and denormalize with them undoes them."""
    from retina_np.models import RetinaNetConfig

    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    config = RetinaNetConfig()
    np.testing.assert_array_equal(normalize(image, config.image_mean, config.image_std),
                                  normalize(image))
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    x = normalize(image, mean, std)
    np.testing.assert_allclose(x, (image.transpose(2, 0, 1) / 255.0 - np.reshape(mean, (3, 1, 1)))
                               / np.reshape(std, (3, 1, 1)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(x, normalize(image))
    np.testing.assert_array_equal(denormalize(x, mean, std), image)


@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    x1=st.integers(0, 19),
    y1=st.integers(0, 19),
    bw=st.integers(1, 20),
    bh=st.integers(1, 20),
)
def test_hflip_moves_box_with_its_pixels(h, w, x1, y1, bw, bh):
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    x2, y2 = min(x1 + bw, w), min(y1 + bh, h)
    image = np.zeros((h, w, 3), np.uint8)
    image[y1:y2, x1:x2] = 255
    box = np.array([[x1, y1, x2, y2]], np.float32)
    flipped, flipped_box = hflip(image, box)
    np.testing.assert_array_equal(flipped_box[0], mask_box(flipped[..., 0] > 0))
    np.testing.assert_array_equal(flipped_box[0], [w - x2, y1, w - x1, y2])
    back, back_box = hflip(flipped, flipped_box)  # flipping twice is the identity
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(back_box, box)


def test_hflip_does_not_touch_inputs_and_handles_no_boxes(rng):
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 2, 3]], np.float32)
    copy_image, copy_boxes = image.copy(), boxes.copy()
    flipped, _ = hflip(image, boxes)
    np.testing.assert_array_equal(image, copy_image)
    np.testing.assert_array_equal(boxes, copy_boxes)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    assert hflip(image, np.zeros((0, 4), np.float32))[1].shape == (0, 4)


@given(
    sizes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=1, max_size=4),
    divisible=st.sampled_from([1, 8, 32]),
)
def test_pad_batch(sizes, divisible):
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((3, h, w)).astype(np.float32) for h, w in sizes]
    batch = pad_batch(images, size_divisible=divisible)
    n, c, hp, wp = batch.shape
    assert (n, c) == (len(images), 3) and batch.dtype == np.float32
    assert hp % divisible == 0 and wp % divisible == 0
    assert hp - divisible < max(h for h, _ in sizes) <= hp
    assert wp - divisible < max(w for _, w in sizes) <= wp
    for k, im in enumerate(images):
        h, w = im.shape[1:]
        np.testing.assert_array_equal(batch[k, :, :h, :w], im)
        assert not batch[k, :, h:, :].any() and not batch[k, :, :, w:].any()


def test_pad_batch_rejects_mixed_channels():
    with pytest.raises(ValueError):
        pad_batch([np.zeros((3, 4, 4)), np.zeros((1, 4, 4))])
    with pytest.raises(ValueError):
        pad_batch([])
